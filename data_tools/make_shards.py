"""Pack captioned videos into WebDataset shards: `python -m data_tools.make_shards --input PATH --output DIR`.

Input is a folder of videos with same-name `.txt` / `.json` captions, or a `.csv` / `.jsonl` manifest (columns
`path`, `caption` or `captions`, optional `start`, `end`, `shots`; in csv, `captions` and `shots` are JSON lists;
relative paths are relative to the manifest), as `data_tools.inputs` reads it. Times are seconds. Each sample is
`<key>.<ext>`, the original video bytes (its sound track, if any, kept as it is), `<key>.wav` / `<key>.flac`
where the row names a sound file (`audio`: a column, or beside a folder's video), and `<key>.json`, a `ClipMeta`
(the schema the loader reads; `audio` records the sound's rate, channels, codec and extent). Rows go to
shards by position (shard i holds rows [i*N, (i+1)*N) of the sorted input), so a re-run rebuilds exactly the shards
that are missing and keeps the rest. Bad rows are skipped with a reason (DIR/skipped.jsonl), never fatal.

Files in DIR: `shard-000000.tar` ... (a shard whose rows were all skipped has no tar: WebDataset raises on an
empty one), `.shard-000000.json` (that shard's stats and skips, written right after it; a shard counts as done
only when its stats match the current input and settings), `skipped.jsonl` and `summary.json` (over all shards).
"""

import argparse
import contextlib
import hashlib
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

from data_tools.common import add_tar_member, atomic_path, console, progress, summary, write_atomic
from data_tools.inputs import FIELDS, PROBLEMS, Input, extension, list_inputs
from wan_train.data.audio import AUDIO_EXTENSIONS
from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta, parse_meta
from wan_train.data.probe import VideoInfo, probe_audio, probe_video

SKIP_REASONS = (*PROBLEMS, "unreadable", "no_caption", "bad_window", "undecodable", "too_short", "bad_metadata",
                "bad_audio")
FORMAT = 2  # bump when the bytes written for the same input change, so old shards are rebuilt on resume
SHOW_SKIPPED = 20


@dataclass(frozen=True)
class ShardTask:
    index: int
    rows: tuple[Input, ...]  # Input.index numbers the rows in input order
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


# --------------------------------------------------------------------------------- one row -> one sample

def prepare_sample(row: Input, *, min_duration: float) -> tuple[dict[str, bytes], ClipMeta]:
    """The members (extension -> bytes: the video, and its sound file if the row names one) and metadata of a row,
    or Skip with the reason it cannot be a sample."""
    if row.problem:
        raise Skip(row.reason, row.problem)
    members = {extension(row.source): _read(row.path, row=row, what="the file")}
    captions = _captions(row)
    start, end, shots = _window_fields(row.fields, source=row.source)
    try:  # by path: given bytes, decord logs the file's content as its name when it cannot open it
        info = probe_video(row.path, name=row.source)
    except SampleError as error:
        raise Skip("undecodable", str(error)) from None
    start, end, shots = _fit_window(start, end, shots, info=info, source=row.source)
    length = (info.duration if end is None else end) - start
    if length < min_duration:
        raise Skip("too_short", f"{row.source}: {length:.3f} s of video, less than --min-duration {min_duration} s")
    sound = _sound_member(row)
    if sound is not None:
        members[sound[0]] = sound[1]
    try:  # the sound file, else the video's own track: checked to decode whole
        audio = probe_audio(row.audio if sound else row.path, name=row.source, member=sound[0] if sound else None)
    except SampleError as error:
        raise Skip("bad_audio", str(error)) from None
    meta = ClipMeta(captions=captions, fps=info.fps, num_frames=info.num_frames, width=info.width,
                    height=info.height, duration=info.duration, source=row.source, start=start, end=end, shots=shots,
                    audio=audio)
    try:
        parse_meta(meta.to_json(), key=row.source)  # what we write must be what the loader accepts
    except SampleError as error:
        raise Skip("bad_metadata", str(error)) from None
    return members, meta


def _read(path: Path, *, row: Input, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # gone since it was listed
        raise Skip("missing_file", f"{row.source}: no such file ({path})") from None
    except OSError as error:
        raise Skip("unreadable", f"{row.source}: cannot read {what} ({error})") from None


def _sound_member(row: Input) -> tuple[str, bytes] | None:
    """(extension, bytes) of the sound file the row names, if any."""
    if "audio" not in row.fields:
        return None
    if row.audio is None or extension(row.audio) not in AUDIO_EXTENSIONS:
        raise Skip("bad_row", f"{row.source}: 'audio' must name a {' / '.join(f'.{e}' for e in AUDIO_EXTENSIONS)} "
                              f"file, got {row.fields['audio']!r}")
    return extension(row.audio), _read(row.audio, row=row, what="its sound file")


def _captions(row: Input) -> tuple[str, ...]:
    source, fields = row.source, row.fields
    raw = fields["captions"] if "captions" in fields else fields.get("caption")
    raw = [raw] if isinstance(raw, str) else raw
    if raw is None:
        raise Skip("no_caption", f"{source}: no 'caption' or 'captions' in {row.origin}")
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
    output, stats = Path(task.output), {"skipped": [], "samples": 0, "seconds": 0.0, "with_audio": 0}
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
                members, meta = prepare_sample(row, min_duration=task.min_duration)
            except Skip as skip:
                stats["skipped"].append({"path": row.source, "reason": skip.reason, "message": str(skip),
                                         "row": row.index})
                continue
            except Exception as error:  # a bug, not a bad sample: stop, but say which sample hit it
                raise RuntimeError(f"{row.source}: {type(error).__name__}: {error}") from error
            key = f"{row.index:09d}"  # unique, dot-free (WebDataset splits keys at the first dot)
            for ext, data in members.items():
                add_tar_member(tar, f"{key}.{ext}", data)
            add_tar_member(tar, f"{key}.json", json.dumps(meta.to_json(), ensure_ascii=False).encode())
            stats["samples"] += 1
            stats["seconds"] += meta.window[1] - meta.window[0]
            stats["with_audio"] += meta.audio is not None


# ------------------------------------------------------------------------------------------ all shards

def plan_shards(rows: list[Input], *, output: Path, shard_size: int, min_duration: float) -> list[ShardTask]:
    tasks = []
    for index, first in enumerate(range(0, len(rows), shard_size)):
        chunk = tuple(rows[first:first + shard_size])
        identity = {"format": FORMAT, "shard_size": shard_size, "min_duration": min_duration,
                    "rows": [[r.index, r.source, _spec(r), r.problem] for r in chunk]}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        tasks.append(ShardTask(index=index, rows=chunk, output=str(output), min_duration=min_duration,
                               fingerprint=digest))
    return tasks


def _spec(row: Input) -> dict:
    """The fields that decide a row's sample: other manifest columns change no byte, so no rebuild."""
    return {k: row.fields[k] for k in FIELDS if k in row.fields}


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
    rows = list_inputs(input, caption_column=True)
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
        "samples_with_audio": sum(stats["with_audio"] for stats in every),
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
    rows = {k: result[k] for k in ("rows", "samples", "samples_with_audio", "skipped", "shards", "shards_written",
                                   "shards_kept")}
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
