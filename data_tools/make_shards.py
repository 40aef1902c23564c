"""Pack captioned videos into WebDataset shards: `python -m data_tools.make_shards --input PATH --output DIR`.

Input is a folder of videos with same-name `.txt` / `.json` captions, or a `.csv` / `.jsonl` manifest (columns
`path`, `caption` or `captions`, optional `start`, `end`, `shots`; in csv, `captions` and `shots` are JSON lists;
relative paths are relative to the manifest). Times are seconds. Each sample is `<key>.<ext>`,
the original video bytes, and `<key>.json`, a `ClipMeta` (the schema the loader reads). Rows go to shards by
position (shard i holds rows [i*N, (i+1)*N) of the sorted input), so a re-run rebuilds exactly the shards that
are missing and keeps the rest. Bad rows are skipped with a reason (DIR/skipped.jsonl), never fatal.

Files in DIR: `shard-000000.tar` ... (a shard whose rows were all skipped has no tar: WebDataset raises on an
empty one), `.shard-000000.json` (that shard's stats and skips, written right after it; a shard counts as done
only when its stats match the current input and settings), `skipped.jsonl` and `summary.json` (over all shards).
"""

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import multiprocessing
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from data_tools.common import atomic_path, console, progress, summary, write_atomic
from wan_train.data.errors import SampleError
from wan_train.data.metadata import VIDEO_EXTENSIONS, ClipMeta, parse_meta
from wan_train.data.probe import VideoInfo, probe_video

SKIP_REASONS = ("bad_row", "unsupported_format", "missing_file", "unreadable", "no_caption", "bad_window",
                "undecodable", "too_short", "bad_metadata")
SPEC_FIELDS = ("caption", "captions", "start", "end", "shots")  # what a manifest row / caption .json may set
FORMAT = 1  # bump when the bytes written for the same input change, so old shards are rebuilt on resume
TAR_MTIME = 0  # fixed member mtime (and uid/gid 0, no user names) so a shard is byte-reproducible
SHOW_SKIPPED = 20


@dataclass(frozen=True)
class Row:
    """One input video, numbered in sorted input order. `spec` holds a manifest row's caption/window fields;
    None for folder input, whose caption file is read when the shard is built. `error` marks a manifest row
    that could not be parsed (then `source` is `manifest:line`)."""
    index: int
    source: str  # as the manifest gave it, or relative to the input folder: ClipMeta.source
    video: str  # where to read the file
    spec: dict | None
    error: str = ""


@dataclass(frozen=True)
class ShardTask:
    index: int
    rows: tuple[Row, ...]
    output: str
    min_duration: float
    fingerprint: str  # of everything that decides this shard's bytes; a kept shard must match it


class Skip(Exception):
    def __init__(self, reason: str, message: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {SKIP_REASONS}")
        super().__init__(message)
        self.reason = reason


class _NothingWritten(Exception):
    """Every row of a shard was skipped: the temp tar is dropped instead of renamed."""


# --------------------------------------------------------------------------------------------- listing rows

def list_rows(path: Path) -> list[Row]:
    if path.is_dir():
        return _folder_rows(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    if path.suffix.lower() == ".csv":
        return _csv_rows(path)
    if path.suffix.lower() == ".jsonl":
        return _jsonl_rows(path)
    raise ValueError(f"--input {path}: expected a folder of videos, a .csv or a .jsonl manifest")


def _folder_rows(folder: Path) -> list[Row]:
    # hidden files and folders (macOS `._clip.mp4` resource forks, our own temp files) are not videos
    found = (p for p in folder.rglob("*") if p.suffix.lower()[1:] in VIDEO_EXTENSIONS and p.is_file())
    names = sorted(n for n in (p.relative_to(folder).as_posix() for p in found) if not _hidden(n))
    return [Row(index=i, source=name, video=str(folder / name), spec=None) for i, name in enumerate(names)]


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _csv_rows(manifest: Path) -> list[Row]:
    with manifest.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "path" not in columns or not {"caption", "captions"} & set(columns):
            raise ValueError(f"{manifest}: the header needs 'path' and 'caption' or 'captions', found {columns}")
        return [_manifest_row(manifest, index, _csv_fields(record), where=f"{manifest.name}:{index + 2}")
                for index, record in enumerate(reader)]


def _csv_fields(record: dict) -> dict | str:
    """A csv record as jsonl-like fields (empty cells absent, `captions`/`shots` JSON lists decoded), or why not."""
    fields = {k: v.strip() for k, v in record.items() if isinstance(k, str) and isinstance(v, str) and v.strip()}
    for name in ("captions", "shots"):
        if name in fields:
            try:
                fields[name] = json.loads(fields[name])
            except ValueError as error:
                return f"column {name!r} is not a JSON list ({error})"
    return fields


def _jsonl_rows(manifest: Path) -> list[Row]:
    rows = []
    with manifest.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                rows.append(_manifest_row(manifest, len(rows), _json_object(line), where=f"{manifest.name}:{number}"))
    return rows


def _json_object(line: str) -> dict | str:
    try:
        value = json.loads(line)
    except ValueError as error:
        return f"not valid JSON ({error})"
    return value if isinstance(value, dict) else f"holds a JSON {type(value).__name__}, expected an object"


def _manifest_row(manifest: Path, index: int, fields: dict | str, *, where: str) -> Row:
    """`fields` is the parsed row or why it could not be parsed. Relative paths are relative to the manifest."""
    if isinstance(fields, dict) and isinstance(fields.get("path"), str) and fields["path"].strip():
        given = fields["path"].strip()
        spec = {k: fields[k] for k in SPEC_FIELDS if k in fields}
        return Row(index=index, source=given, video=str(manifest.parent / Path(given).expanduser()), spec=spec)
    problem = fields if isinstance(fields, str) else "no 'path'"
    return Row(index=index, source=where, video="", spec=None, error=f"{where}: {problem}")


# --------------------------------------------------------------------------------- one row -> one sample

def prepare_sample(row: Row, *, min_duration: float) -> tuple[bytes, ClipMeta]:
    """The video bytes and metadata of a row, or Skip with the reason it cannot be a sample."""
    if row.error:
        raise Skip("bad_row", row.error)
    _extension(row)
    video = _read_video(row)
    spec = row.spec if row.spec is not None else _caption_file(row)
    captions = _captions(spec, source=row.source)
    start, end, shots = _window_fields(spec, source=row.source)
    try:  # by path: given bytes, decord logs the file's content as its name when it cannot open it
        info = probe_video(row.video, name=row.source)
    except SampleError as error:
        raise Skip("undecodable", str(error)) from None
    start, end, shots = _fit_window(start, end, shots, info=info, source=row.source)
    length = (info.duration if end is None else end) - start
    if length < min_duration:
        raise Skip("too_short", f"{row.source}: {length:.3f} s of video, less than --min-duration {min_duration} s")
    meta = ClipMeta(captions=captions, fps=info.fps, num_frames=info.num_frames, width=info.width,
                    height=info.height, duration=info.duration, source=row.source, start=start, end=end, shots=shots)
    try:
        parse_meta(meta.to_json(), key=row.source)  # what we write must be what the loader accepts
    except SampleError as error:
        raise Skip("bad_metadata", str(error)) from None
    return video, meta


def _extension(row: Row) -> str:
    ext = Path(row.source).suffix.lower()[1:]
    if ext not in VIDEO_EXTENSIONS:
        raise Skip("unsupported_format", f"{row.source}: extension {ext!r} is not one of {VIDEO_EXTENSIONS}")
    return ext


def _read_video(row: Row) -> bytes:
    try:
        return Path(row.video).read_bytes()
    except FileNotFoundError:
        raise Skip("missing_file", f"{row.source}: no such file ({row.video})") from None
    except OSError as error:
        raise Skip("unreadable", f"{row.source}: cannot read the file ({error})") from None


def _caption_file(row: Row) -> dict:
    """A folder video's caption fields: `<name>.json` ({"caption" | "captions", optional "start"/"end"/"shots"},
    other keys ignored), with the whole of `<name>.txt` as the one caption where the .json has none."""
    as_json, as_text = Path(row.video).with_suffix(".json"), Path(row.video).with_suffix(".txt")
    spec = {}
    if as_json.is_file():
        fields = _json_object(_read_caption(as_json, source=row.source))
        if isinstance(fields, str):
            raise Skip("bad_row", f"{row.source}: caption file {as_json.name} {fields}")
        spec = {k: fields[k] for k in SPEC_FIELDS if k in fields}
    if "caption" not in spec and "captions" not in spec and as_text.is_file():
        spec["caption"] = _read_caption(as_text, source=row.source)
    if "caption" not in spec and "captions" not in spec:
        raise Skip("no_caption", f"{row.source}: no caption ({as_text.name} or {as_json.name} beside it)")
    return spec


def _read_caption(path: Path, *, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise Skip("bad_row", f"{source}: cannot read caption file {path.name} ({error})") from None


def _captions(spec: dict, *, source: str) -> tuple[str, ...]:
    raw = spec["captions"] if "captions" in spec else spec.get("caption")
    raw = [raw] if isinstance(raw, str) else raw
    if raw is None:
        raise Skip("no_caption", f"{source}: no 'caption' or 'captions'")
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise Skip("bad_row", f"{source}: 'captions' must be a string or a list of strings, got {raw!r}")
    captions = tuple(c.strip() for c in raw if c.strip())
    if not captions:
        raise Skip("no_caption", f"{source}: the caption is empty")
    return captions


def _window_fields(spec: dict, *, source: str) -> tuple[float, float | None, tuple[tuple[float, float], ...]]:
    start = _seconds(spec["start"], name="start", source=source) if spec.get("start") is not None else 0.0
    end = _seconds(spec["end"], name="end", source=source) if spec.get("end") is not None else None
    raw_shots = spec.get("shots", [])
    if not isinstance(raw_shots, list) or not all(isinstance(s, list | tuple) and len(s) == 2 for s in raw_shots):
        raise Skip("bad_window", f"{source}: 'shots' must be a list of [start, end] pairs, got {raw_shots!r}")
    shots = tuple((_seconds(a, name="shot start", source=source), _seconds(b, name="shot end", source=source))
                  for a, b in raw_shots)
    for a, b in ((start, end), *shots):
        if a < 0 or (b is not None and b <= a):
            raise Skip("bad_window", f"{source}: [{a}, {b}] s is not a window (need 0 <= start < end)")
    return start, end, shots


def _seconds(value, *, name: str, source: str) -> float:
    try:
        seconds = float(value)  # csv cells arrive as strings
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds):
        raise Skip("bad_window", f"{source}: {name} = {value!r} is not a number of seconds")
    return seconds


def _fit_window(start: float, end: float | None, shots: tuple, *, info: VideoInfo, source: str) -> tuple:
    """Check start/end/shots against the decoded duration (num_frames / fps). Container durations and shot
    detectors can put an end up to one frame past that; such ends are clamped to it."""
    duration = info.duration

    def clamp(t: float) -> float:
        return duration if duration < t <= duration + 1.0 / info.fps else t

    end = None if end is None else clamp(end)
    shots = tuple((a, clamp(b)) for a, b in shots)
    stop = duration if end is None else end
    if not start < stop <= duration:
        raise Skip("bad_window", f"{source}: window [{start}, {stop}] s is outside the video (0..{duration:.3f} s)")
    late = [s for s in shots if s[1] > duration]
    if late:
        raise Skip("bad_window", f"{source}: shots {late} end after the video ({duration:.3f} s)")
    return start, end, shots


# ------------------------------------------------------------------------------------------- one shard

def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def stats_path(output: Path, index: int) -> Path:
    return output / f".shard-{index:06d}.json"


def build_shard(task: ShardTask) -> dict:
    """Write one shard (atomically) and then its stats sidecar; returns the stats. Runs in worker processes."""
    output, stats = Path(task.output), {"skipped": [], "samples": 0, "seconds": 0.0}
    tar_path = output / shard_name(task.index)
    try:
        with atomic_path(tar_path) as tmp:
            _write_tar(tmp, task, stats)
            if not stats["samples"]:
                raise _NothingWritten
        size = tar_path.stat().st_size
    except _NothingWritten:
        tar_path.unlink(missing_ok=True)  # a stale tar from an earlier input would otherwise be kept
        size = 0
    stats |= {"shard": task.index, "tar": shard_name(task.index) if size else None, "rows": len(task.rows),
              "bytes": size, "seconds": round(stats["seconds"], 6), "fingerprint": task.fingerprint}
    write_atomic(stats_path(output, task.index), json.dumps(stats, indent=1).encode())
    return stats


def _write_tar(path: Path, task: ShardTask, stats: dict) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for row in task.rows:
            try:
                video, meta = prepare_sample(row, min_duration=task.min_duration)
            except Skip as skip:
                stats["skipped"].append({"path": row.source, "reason": skip.reason, "message": str(skip),
                                         "row": row.index})
                continue
            except Exception as error:  # a bug, not a bad sample: stop, but say which sample hit it
                raise RuntimeError(f"{row.source}: {type(error).__name__}: {error}") from error
            key = f"{row.index:09d}"  # unique, dot-free (WebDataset splits keys at the first dot)
            _add_member(tar, f"{key}.{_extension(row)}", video)
            _add_member(tar, f"{key}.json", json.dumps(meta.to_json(), ensure_ascii=False).encode())
            stats["samples"] += 1
            stats["seconds"] += meta.window[1] - meta.window[0]


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------ all shards

def plan_shards(rows: list[Row], *, output: Path, shard_size: int, min_duration: float) -> list[ShardTask]:
    tasks = []
    for index, first in enumerate(range(0, len(rows), shard_size)):
        chunk = tuple(rows[first:first + shard_size])
        identity = {"format": FORMAT, "shard_size": shard_size, "min_duration": min_duration,
                    "rows": [[r.index, r.source, r.spec, r.error] for r in chunk]}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        tasks.append(ShardTask(index=index, rows=chunk, output=str(output), min_duration=min_duration,
                               fingerprint=digest))
    return tasks


def finished_stats(task: ShardTask) -> dict | None:
    """The stats of a shard an earlier run completed for the same rows and settings, else None."""
    try:
        stats = json.loads(stats_path(Path(task.output), task.index).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stats, dict) or stats.get("fingerprint") != task.fingerprint:
        return None
    if stats["tar"] and not (Path(task.output) / stats["tar"]).is_file():
        return None
    return stats


def build_shards(tasks: list[ShardTask], *, workers: int, kept: int) -> dict[int, dict]:
    """Stats by shard index, with a progress bar over all shards (the kept ones count as done)."""
    built = {}
    with progress() as bar, _each_built(tasks, workers=workers) as results:
        job = bar.add_task("shards", total=len(tasks) + kept, completed=kept)
        for stats in results:
            built[stats["shard"]] = stats
            bar.advance(job)
    return built


@contextlib.contextmanager
def _each_built(tasks: list[ShardTask], *, workers: int) -> Iterator[Iterator[dict]]:
    """Build the shards in this process, or one shard per task in spawned workers (not forked: the parent runs
    rich's refresh thread, and forking a threaded process can deadlock)."""
    if workers == 1 or len(tasks) <= 1:
        yield map(build_shard, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        yield pool.imap_unordered(build_shard, tasks)


def make_shards(input: str | Path, output: str | Path, *, shard_size: int, workers: int,
                min_duration: float) -> dict:
    """Shard the input into `output`; returns the summary (also written to output/summary.json)."""
    _check_settings(shard_size=shard_size, workers=workers, min_duration=min_duration)
    input, output = Path(input), Path(output)
    rows = list_rows(input)
    if not rows:
        raise ValueError(f"--input {input}: no videos found (extensions {', '.join(VIDEO_EXTENSIONS)})")
    tasks = plan_shards(rows, output=output, shard_size=shard_size, min_duration=min_duration)
    output.mkdir(parents=True, exist_ok=True)
    kept = {task.index: stats for task in tasks if (stats := finished_stats(task)) is not None}
    built = build_shards([t for t in tasks if t.index not in kept], workers=workers, kept=len(kept))
    every = [kept[t.index] if t.index in kept else built[t.index] for t in tasks]
    return write_summary(every, input=input, output=output, rows=len(rows), kept=len(kept))


def _check_settings(*, shard_size: int, workers: int, min_duration: float) -> None:
    for flag, value, ok, allowed in (("--shard-size", shard_size, shard_size >= 1, "an integer >= 1"),
                                     ("--workers", workers, workers >= 1, "an integer >= 1"),
                                     ("--min-duration", min_duration, min_duration >= 0, "seconds >= 0")):
        if not ok:
            raise ValueError(f"{flag} = {value!r}: expected {allowed}")


def write_summary(every: list[dict], *, input: Path, output: Path, rows: int, kept: int) -> dict:
    skipped = [entry for stats in every for entry in stats["skipped"]]
    tars = [stats["tar"] for stats in every if stats["tar"]]
    stale = sorted(p.name for p in output.glob("shard-*.tar") if p.name not in set(tars))
    result = {
        "input": str(input), "output": str(output), "rows": rows,
        "samples": sum(stats["samples"] for stats in every), "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(entry["reason"] for entry in skipped).items())),
        "shards": len(tars), "shards_written": len(every) - kept, "shards_kept": kept,
        "bytes": sum(stats["bytes"] for stats in every),
        "video_seconds": round(sum(stats["seconds"] for stats in every), 3),
        "shard_files": tars,
        "stale_shard_files": stale,  # from an earlier run over other input: not ours now, left for you to delete
    }
    lines = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in skipped)
    write_atomic(output / "skipped.jsonl", lines.encode())
    write_atomic(output / "summary.json", (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode())
    return result


# ------------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_tools.make_shards", description=__doc__.split("\n\n")[0],
                                     epilog="exit status: 0 done, 1 every row was skipped, 2 bad arguments or input")
    parser.add_argument("--input", required=True, help="folder of videos + .txt/.json captions, or .csv/.jsonl")
    parser.add_argument("--output", required=True, help="folder for shard-NNNNNN.tar, skipped.jsonl, summary.json")
    parser.add_argument("--shard-size", type=int, default=200, help="rows per shard (default 200)")
    parser.add_argument("--workers", type=int, default=1, help="shards built in parallel (default 1: in process)")
    parser.add_argument("--min-duration", type=float, default=1.0,
                        help="skip clips whose window is shorter, seconds (default 1.0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = make_shards(args.input, args.output, shard_size=args.shard_size, workers=args.workers,
                             min_duration=args.min_duration)
    except (ValueError, OSError) as error:
        console.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    _report(result, output=Path(args.output))
    return 0 if result["samples"] else 1


def _report(result: dict, *, output: Path) -> None:
    rows = {k: result[k] for k in ("rows", "samples", "skipped", "shards", "shards_written", "shards_kept")}
    rows |= {f"skipped: {reason}": n for reason, n in result["skipped_by_reason"].items()}
    seconds = result["video_seconds"]
    rows |= {"size": f"{result['bytes'] / 2**20:.1f} MiB", "video": f"{seconds:.1f} s ({seconds / 3600:.2f} h)"}
    summary(f"make_shards -> {output}", rows)
    with (output / "skipped.jsonl").open(encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number == SHOW_SKIPPED:
                console.print(f"... {result['skipped'] - SHOW_SKIPPED} more in {escape(str(handle.name))}")
                break
            entry = json.loads(line)
            console.print(f"[yellow]skipped[/] {entry['reason']}: {escape(entry['message'])}")
    if result["stale_shard_files"]:
        console.print(f"[yellow]not from this input[/]: {', '.join(result['stale_shard_files'])}")
    if not result["samples"]:
        console.print("[red]no samples were written[/]")


if __name__ == "__main__":
    sys.exit(main())
