"""The input videos of the data tools (make_shards, split_shots) with their fields: one reader, one set of rules.

`--input` is a folder or a manifest:
- a folder of videos, searched recursively, in sorted order; hidden files and folders (macOS `._clip.mp4`
  resource forks, our own temp files) are not videos. Beside a video, `<name>.json` may set FIELDS (other keys
  ignored); where it sets no caption, the whole of `<name>.txt` is the one caption; where it names no `audio`,
  `<name>.wav` (or `.flac`) is the video's sound, if there is one.
- a `.jsonl` manifest (one JSON object a line; blank lines are not rows) or a `.csv` one (a header row; empty
  cells are absent; `captions` and `shots` cells are JSON lists). A row has `path` (relative paths are relative
  to the manifest's folder) and any other fields, kept as given.

Times are seconds. `audio` names a sound file (.wav / .flac) to store with the video as its sound, relative to the
video's folder (a folder's .json) or to the manifest's. Captions, windows and sound files are passed on unchecked:
each tool checks what it needs. A row that
cannot be a video at all (unparsable, no path, not a video extension, no such file) is listed with its problem,
never fatal; input that is no folder or manifest, or holds no videos, raises.
"""

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from wan_train.data.audio import AUDIO_EXTENSIONS
from wan_train.data.metadata import VIDEO_EXTENSIONS

FIELDS = ("caption", "captions", "start", "end", "shots", "audio")  # what a video's caption .json may set
PROBLEMS = ("bad_row", "unsupported_format", "missing_file")  # why an input is unusable, checked in this order
_JSON_COLUMNS = ("captions", "shots")  # csv cells that hold JSON lists


@dataclass(frozen=True)
class Input:
    """One input video, numbered in input order (sorted folder paths, or manifest rows)."""
    index: int
    source: str  # the path as the manifest gave it, or relative to the folder; `manifest:line` for a bad row
    path: Path | None  # absolute (symlinks kept as given); None where the row gives no path
    origin: str  # where the fields come from, for messages: `clips.jsonl:4`, or `a/b.json or a/b.txt`
    fields: dict = field(default_factory=dict)  # FIELDS of the caption files, or a manifest row less "path"
    problem: str = ""  # why it is unusable, naming the manifest line or caption file; "" when usable
    reason: str = ""  # the problem's kind: one of PROBLEMS
    audio: Path | None = None  # absolute: the sound file `audio` names (or found beside a folder's video)


class _BadRow(Exception):
    """A caption file that cannot be read: the video is listed with this problem."""


def list_inputs(path: Path, *, caption_column: bool = False) -> list[Input]:
    """Every input video of `path`, in order. `caption_column`: a csv header must also name 'caption' or
    'captions' (for a tool that could only skip every row without one)."""
    suffix = path.suffix.lower()
    if path.is_dir():
        inputs = _folder_inputs(path)
    elif not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    elif suffix == ".csv":
        inputs = _csv_inputs(path, caption_column=caption_column)
    elif suffix == ".jsonl":
        inputs = _jsonl_inputs(path)
    else:
        raise ValueError(f"--input {path}: expected a folder of videos, a .csv or a .jsonl manifest")
    if not inputs:
        raise ValueError(f"--input {path}: no videos found (extensions {', '.join(VIDEO_EXTENSIONS)})")
    return inputs


def extension(path: str | Path) -> str:
    """Lower case, no dot: what VIDEO_EXTENSIONS lists."""
    return Path(path).suffix.lower()[1:]


# ------------------------------------------------------------------------------------------------ a folder

def _folder_inputs(folder: Path) -> list[Input]:
    found = (p for p in folder.rglob("*") if extension(p) in VIDEO_EXTENSIONS and p.is_file())
    names = sorted(n for n in (p.relative_to(folder).as_posix() for p in found) if not _hidden(n))
    return [_folder_input(folder, name, index) for index, name in enumerate(names)]


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _folder_input(folder: Path, name: str, index: int) -> Input:
    video = _absolute(folder / name)
    origin = " or ".join(Path(name).with_suffix(s).as_posix() for s in (".json", ".txt"))
    try:
        fields = _caption_files(video, source=name)
    except _BadRow as error:
        return Input(index=index, source=name, path=video, origin=origin, problem=str(error), reason="bad_row")
    beside = next((video.with_suffix(f".{ext}") for ext in AUDIO_EXTENSIONS if video.with_suffix(f".{ext}").is_file()),
                  None)
    if "audio" not in fields and beside is not None:
        fields["audio"] = beside.name
    return Input(index=index, source=name, path=video, origin=origin, fields=fields,
                 audio=_sound_path(video.parent, fields))


def _caption_files(video: Path, *, source: str) -> dict:
    as_json, as_text = video.with_suffix(".json"), video.with_suffix(".txt")
    fields = {}
    if as_json.is_file():
        parsed = _json_object(_read_text(as_json, source=source))
        if isinstance(parsed, str):
            raise _BadRow(f"{source}: caption file {as_json.name} {parsed}")
        fields = {k: parsed[k] for k in FIELDS if k in parsed}
    if "caption" not in fields and "captions" not in fields and as_text.is_file():
        fields["caption"] = _read_text(as_text, source=source).strip()
    return fields


def _read_text(path: Path, *, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise _BadRow(f"{source}: cannot read caption file {path.name} ({error})") from None


# ---------------------------------------------------------------------------------------------- a manifest

def _csv_inputs(manifest: Path, *, caption_column: bool) -> list[Input]:
    with manifest.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(handle)
        _check_header(manifest, reader.fieldnames or [], caption_column=caption_column)
        # line_num after reading a record: its (last) line, as a quoted cell may span lines
        return [_manifest_input(manifest, index, _csv_fields(record), where=f"{manifest.name}:{reader.line_num}")
                for index, record in enumerate(reader)]


def _check_header(manifest: Path, columns: list[str], *, caption_column: bool) -> None:
    if "path" not in columns or (caption_column and not {"caption", "captions"} & set(columns)):
        need = "'path' and 'caption' or 'captions'" if caption_column else "'path'"
        raise ValueError(f"{manifest}: the header needs {need}, found {columns}")


def _csv_fields(record: dict) -> dict | str:
    """A csv record as jsonl-like fields (empty cells absent, JSON list cells decoded), or why not."""
    fields = {k: v.strip() for k, v in record.items() if isinstance(k, str) and isinstance(v, str) and v.strip()}
    for name in _JSON_COLUMNS:
        if name in fields:
            try:
                fields[name] = json.loads(fields[name])
            except ValueError as error:
                return f"column {name!r} is not a JSON list ({error})"
    return fields


def _jsonl_inputs(manifest: Path) -> list[Input]:
    inputs = []
    with manifest.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                inputs.append(_manifest_input(manifest, len(inputs), _json_object(line),
                                              where=f"{manifest.name}:{number}"))
    return inputs


def _json_object(text: str) -> dict | str:
    try:
        value = json.loads(text)
    except ValueError as error:
        return f"not valid JSON ({error})"
    return value if isinstance(value, dict) else f"holds a JSON {type(value).__name__}, expected an object"


def _manifest_input(manifest: Path, index: int, parsed: dict | str, *, where: str) -> Input:
    """`parsed` is the row's fields or why it could not be parsed."""
    given = parsed.get("path") if isinstance(parsed, dict) else None
    if not isinstance(given, str) or not given.strip():
        problem = parsed if isinstance(parsed, str) else "no 'path'"
        return Input(index=index, source=where, path=None, origin=where, problem=f"{where}: {problem}",
                     reason="bad_row")
    source, video = given.strip(), _absolute(manifest.parent / Path(given.strip()).expanduser())
    fields = {k: v for k, v in parsed.items() if k != "path"}
    reason, problem = _video_problem(source, video)
    return Input(index=index, source=source, path=video, origin=where, fields=fields, problem=problem,
                 reason=reason, audio=_sound_path(manifest.parent, fields))


def _sound_path(folder: Path, fields: dict) -> Path | None:
    """The sound file the fields name, relative to `folder` (a name that is no string is the tool's to report)."""
    given = fields.get("audio")
    return _absolute(folder / Path(given.strip()).expanduser()) if isinstance(given, str) and given.strip() else None


def _video_problem(source: str, video: Path) -> tuple[str, str]:
    """(reason, message) for a manifest path that is no video file, else ("", "")."""
    if extension(source) not in VIDEO_EXTENSIONS:
        return "unsupported_format", f"{source}: extension {extension(source)!r} is not one of {VIDEO_EXTENSIONS}"
    if not video.is_file():
        return "missing_file", f"{source}: no such file ({video})"
    return "", ""


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))  # not resolve(): a symlinked data folder keeps the name the user gave
