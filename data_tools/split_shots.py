"""Find shot boundaries (hard cuts) in videos and write a manifest for `data_tools.make_shards`.

The detector is PySceneDetect's ContentDetector (0.6 defaults: H, S, V weights 1, 1, 1; threshold 27; min scene
length 15 frames) done with decord + numpy: frames are decoded downscaled to about 160 px wide, converted to
OpenCV's 8-bit HSV (H in [0, 180), S and V in [0, 255]), and frame i scores

    score_i = (mean|H_i - H_{i-1}| + mean|S_i - S_{i-1}| + mean|V_i - V_{i-1}|) / 3      (0..255 scale)

A cut opens a new shot at frame i when score_i >= threshold and at least `min_scene_len` frames have passed
since the previous cut (or the start). Frames are read in chunks, so memory does not grow with video length.

    python -m data_tools.split_shots --input videos/ --output shots.jsonl
    python -m data_tools.split_shots --input clips.jsonl --output shots.jsonl --per-shot --min-shot-duration 2
"""

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.markup import escape

from data_tools.common import atomic_path, console, progress, summary
from data_tools.inputs import Input, list_inputs
from wan_train.data.errors import SampleError
from wan_train.data.probe import open_video

THRESHOLD = 27.0  # PySceneDetect ContentDetector default, on the 0..255 HSV scale
MIN_SCENE_LEN = 15  # frames; PySceneDetect default
MIN_SHOT_DURATION = 1.0  # seconds; --per-shot drops shorter shots (too short to train on)
SCAN_WIDTH = 160  # px; decoded frame width for scoring (cuts are global changes, detail does not matter)
CHUNK = 64  # frames decoded at a time: 64 x 160 x 90 x 3 bytes ~ 2.8 MB
SHOW_SKIPPED = 20  # skipped videos listed at the end (all are in the returned summary)
_READER_REASONS = {"bad_row": "bad_metadata"}  # split_shots' name for a row or caption file it cannot parse


# ----------------------------------------------------------------------------------------------- detection

def detect_shots(source: bytes | str | Path, *, threshold: float = THRESHOLD, min_scene_len: int = MIN_SCENE_LEN,
                 start: float = 0.0, end: float | None = None, name: str | None = None) -> list[tuple[float, float]]:
    """Shot intervals in seconds that tile [start, end) of the video (end=None: its whole length); frame i
    covers [i / fps, (i + 1) / fps). Raises SampleError naming the video if it cannot be decoded."""
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    reader, fps = _open_scaled(source, name=name)
    duration = len(reader) / fps
    end = duration if end is None else min(end, duration)
    if not 0 <= start < end:
        raise SampleError("too_short", f"{name}: window [{start}, {end}] s is empty or outside the video "
                                       f"(0..{duration:.3f} s)")
    # frames overlapping the window; the 1e-6 s slack absorbs times written as rounded decimals
    first, stop = math.floor(start * fps + 1e-6), math.ceil(end * fps - 1e-6)
    cuts = find_cuts(frame_scores(reader, first=first, stop=stop, name=name), threshold=threshold,
                     min_scene_len=min_scene_len)
    bounds = [start] + [(first + c) / fps for c in cuts] + [end]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def find_cuts(scores: np.ndarray, *, threshold: float, min_scene_len: int) -> list[int]:
    """Frame indices that start a new shot (never 0), given score[i] = change from frame i-1 to frame i."""
    cuts, last = [], 0
    for i in np.flatnonzero(scores >= threshold).tolist():
        if i - last >= min_scene_len:
            cuts.append(i)
            last = i
    return cuts


def frame_scores(reader, *, first: int, stop: int, name: str) -> np.ndarray:
    """float32 [stop - first]: the ContentDetector score of each frame against the one before (0 for the first)."""
    scores, previous = np.zeros(stop - first, dtype=np.float32), None
    for begin in range(first, stop, CHUNK):
        hsv = hsv_planes(_read_chunk(reader, begin, min(begin + CHUNK, stop), name=name))
        if previous is not None:  # the last frame of the previous chunk, so the chunk's first frame is scored too
            hsv = np.concatenate([previous, hsv])
        # [N, 3, H, W] -> mean |delta| per channel -> average of the three channels (weights 1, 1, 1)
        delta = np.abs(np.diff(hsv, axis=0)).mean(axis=(2, 3)).mean(axis=1)
        scored = begin - first + (1 if previous is None else 0)  # index in `scores` of delta[0]
        scores[scored:scored + len(delta)] = delta
        previous = hsv[-1:]
    return scores


def hsv_planes(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> int16 [N, 3, H, W] in OpenCV's 8-bit HSV (cv2.COLOR_RGB2HSV, what PySceneDetect
    scores): V = max(R, G, B), S ~ 255 (V - min) / V, H ~ hue_degrees / 2 in [0, 180), with OpenCV's 12-bit
    fixed-point rounding so the values match it exactly."""
    rgb = frames.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    diff = v - rgb.min(axis=-1)
    s = (diff * _S_DIV[v] + _HALF) >> _SHIFT
    # hue sector by which channel is the max (red first, as OpenCV), in units of 30 degrees per `diff`
    sector = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (sector * _H_DIV[diff] + _HALF) >> _SHIFT
    h += np.where(h < 0, 180, 0)
    return np.stack([h, s, v], axis=1).astype(np.int16)


# OpenCV's RGB2HSV_b lookup tables: (255 << 12) / v and (180 << 12) / (6 diff), rounded; entry 0 is 0
_SHIFT, _HALF = 12, 1 << 11
_S_DIV = np.rint(np.r_[0.0, (255 << _SHIFT) / np.arange(1, 256)]).astype(np.int32)
_H_DIV = np.rint(np.r_[0.0, (180 << _SHIFT) / (6.0 * np.arange(1, 256))]).astype(np.int32)


def _open_scaled(source: bytes | str | Path, *, name: str):
    """A reader that decodes frames at about SCAN_WIDTH px wide (never upscaled), and the frame rate."""
    reader = open_video(source, name=name)
    num_frames, fps = len(reader), float(reader.get_avg_fps())
    if num_frames <= 0 or not fps > 0:
        raise SampleError("undecodable", f"{name}: no video frames (frames={num_frames}, fps={fps})")
    height, width = _read_chunk(reader, 0, 1, name=name).shape[1:3]
    if width <= SCAN_WIDTH:
        return reader, fps
    # even sizes for the scaler; SCAN_WIDTH avoids the small widths decord's scaler rejects (16, 24, 48, 72)
    scan_height = max(2, 2 * round(height * SCAN_WIDTH / width / 2))
    return open_video(source, name=name, width=SCAN_WIDTH, height=scan_height), fps


def _read_chunk(reader, begin: int, stop: int, *, name: str) -> np.ndarray:
    try:
        return reader.get_batch(list(range(begin, stop))).asnumpy()
    except Exception as error:  # decord raises DECORDError / RuntimeError on corrupt packets
        raise SampleError("undecodable", f"{name}: decoding frames {begin}..{stop - 1} failed ({error})") from None


# ----------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str
    message: str


def usable_inputs(source: Path) -> tuple[list[Input], list[Skipped]]:
    """The input videos (see data_tools.inputs) to scan, and those skipped already: unparsable rows, unreadable
    caption files, paths that are no video file."""
    inputs = list_inputs(source)
    skipped = [Skipped(i.source, _READER_REASONS.get(i.reason, i.reason), i.problem) for i in inputs if i.problem]
    return [i for i in inputs if not i.problem], skipped


# ----------------------------------------------------------------------------------------------- outputs

def output_rows(video: Input, shots: list[tuple[float, float]], *, out_dir: Path, per_shot: bool,
                min_shot_duration: float) -> list[dict]:
    """One row per video with its `shots`, or (per_shot) one row per long-enough shot as a start/end window;
    the input's other fields (captions, anything a manifest row had) are carried over; a sound file's path is
    rewritten, like the video's, for the output's folder."""
    row = {"path": _relative(video.path, out_dir), **video.fields}
    if video.audio is not None:
        row["audio"] = _relative(video.audio, out_dir)
    row.pop("shots", None)
    if not per_shot:
        return [{**row, "shots": [list(s) for s in shots]}]
    return [{**row, "start": a, "end": b} for a, b in shots if b - a >= min_shot_duration]


def _relative(path: Path, out_dir: Path) -> str:
    """Relative to the manifest's folder when the video lies under it (the pair moves together), else absolute."""
    try:  # abspath, not resolve(), as for the inputs: a symlinked data folder keeps the name the user gave
        return path.relative_to(os.path.abspath(out_dir)).as_posix()
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------- the run

def split_shots(source: str | Path, output: str | Path, *, threshold: float = THRESHOLD,
                min_scene_len: int = MIN_SCENE_LEN, min_shot_duration: float = MIN_SHOT_DURATION,
                per_shot: bool = False, workers: int = 1) -> dict:
    """Detect shots in every input video and write the output manifest atomically; returns the summary."""
    check_settings(threshold=threshold, min_scene_len=min_scene_len, min_shot_duration=min_shot_duration,
                   workers=workers)
    videos, skipped = usable_inputs(Path(source))
    output = Path(output)
    result = {"videos": 0, "shots": 0, "mean_shot_seconds": 0.0, "rows": 0, "dropped_short_shots": 0,
              "uncaptioned": 0, "skipped": 0, "skipped_list": [], "output": str(output), "per_shot": per_shot}
    seconds = 0.0
    with (_detections(videos, threshold=threshold, min_scene_len=min_scene_len, workers=workers) as results,
          atomic_path(output) as tmp, tmp.open("w", encoding="utf-8") as out, progress() as bar):
        task = bar.add_task("shots", total=len(videos))
        for video, shots in zip(videos, results, strict=True):
            bar.advance(task)
            if isinstance(shots, Skipped):
                skipped.append(shots)
                continue
            rows = output_rows(video, shots, out_dir=output.parent, per_shot=per_shot,
                               min_shot_duration=min_shot_duration)
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            result["videos"] += 1
            result["shots"] += len(shots)
            result["rows"] += len(rows)
            result["dropped_short_shots"] += len(shots) - len(rows) if per_shot else 0
            result["uncaptioned"] += 0 if ("caption" in video.fields or "captions" in video.fields) else 1
            seconds += sum(b - a for a, b in shots)
    result["mean_shot_seconds"] = seconds / result["shots"] if result["shots"] else 0.0
    result["skipped"] = len(skipped)
    result["skipped_list"] = [(s.name, s.reason, s.message) for s in skipped]
    return result


def check_settings(*, threshold: float, min_scene_len: int, min_shot_duration: float, workers: int) -> None:
    for flag, value, ok, allowed in (("--threshold", threshold, 0 <= threshold <= 255, "0..255"),
                                     ("--min-scene-len", min_scene_len, min_scene_len >= 0, "frames >= 0"),
                                     ("--min-shot-duration", min_shot_duration, min_shot_duration >= 0, "seconds >= 0"),
                                     ("--workers", workers, workers >= 1, "an integer >= 1")):
        if not ok:
            raise ValueError(f"{flag} = {value!r}: expected {allowed}")


@contextlib.contextmanager
def _detections(videos: list[Input], *, threshold: float, min_scene_len: int, workers: int) -> Iterator[Iterator]:
    """Shots or Skipped per video, in input order; decoding runs in `workers` processes when > 1. The workers
    are forked (cheap: no re-import) while this process has no other threads: before rich's progress bar starts
    its refresh thread, as forking a threaded process can deadlock; map() submits every job, forking at once."""
    jobs = [(v.path, v.source, v.fields.get("start"), v.fields.get("end"), threshold, min_scene_len) for v in videos]
    if workers <= 1 or len(jobs) <= 1:
        yield map(_detect_one, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool.map(_detect_one, jobs)


def _detect_one(job: tuple) -> list[tuple[float, float]] | Skipped:
    # returns rather than raises: SampleError does not survive pickling back from a worker process
    path, name, start, end, threshold, min_scene_len = job
    try:
        return detect_shots(path, threshold=threshold, min_scene_len=min_scene_len, name=name,
                            start=0.0 if start is None else float(start), end=None if end is None else float(end))
    except SampleError as error:
        return Skipped(name, error.reason, str(error))
    except (TypeError, ValueError) as error:  # a manifest row's start/end that is not a number
        return Skipped(name, "bad_metadata", f"{name}: bad start/end ({error})")


def _report(result: dict) -> None:
    for _, reason, message in result["skipped_list"][:SHOW_SKIPPED]:
        console.print(f"[yellow]skipped[/] ({reason}) {escape(message)}", highlight=False)
    if result["skipped"] > SHOW_SKIPPED:
        console.print(f"... and {result['skipped'] - SHOW_SKIPPED} more skipped")
    if result["uncaptioned"]:
        console.print(f"[yellow]{result['uncaptioned']} videos have no caption[/yellow]: make_shards needs a "
                      "\"caption\" or \"captions\" on every row")
    summary("split_shots", {
        "videos": result["videos"], "shots": result["shots"],
        "mean shot length": f"{result['mean_shot_seconds']:.2f} s",
        "rows written": f"{result['rows']}" + (f" ({result['dropped_short_shots']} short shots dropped)"
                                               if result["per_shot"] else ""),
        "skipped": result["skipped"], "output": result["output"],
    })


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


_EPILOG = """\
Shots are recorded as time windows into the unchanged original files; nothing is re-encoded.
  default     one row per video with "shots": [[start, end], ...] in seconds; the loader keeps each
              training clip inside one shot, and multi-shot training can use the boundaries
  --per-shot  one row per shot with "start"/"end" (the cut clips), shots under --min-shot-duration dropped
Captions and other fields of the input rows are copied. Paths are written relative to the output
manifest's folder when the video lies under it, else absolute. Unreadable videos are skipped and listed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_tools.split_shots", description=__doc__, epilog=_EPILOG,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--input", required=True, type=Path,
                        help="folder of videos (same-name .txt/.json captions optional) or a .csv/.jsonl manifest")
    parser.add_argument("--output", required=True, type=Path, help="the .jsonl manifest to write (for make_shards)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help="cut when the mean HSV change to the previous frame reaches this (0..255 scale)")
    parser.add_argument("--min-scene-len", type=int, default=MIN_SCENE_LEN,
                        help="frames: no cut within this many frames of the previous cut")
    parser.add_argument("--min-shot-duration", type=float, default=MIN_SHOT_DURATION,
                        help="seconds: with --per-shot, shorter shots are dropped")
    parser.add_argument("--per-shot", action="store_true",
                        help="one row per shot (a start/end window into the original file) instead of per video")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 no video could be read, 2 bad arguments or input."""
    args = build_parser().parse_args(argv)
    try:
        result = split_shots(args.input, args.output, threshold=args.threshold, min_scene_len=args.min_scene_len,
                             min_shot_duration=args.min_shot_duration, per_shot=args.per_shot,
                             workers=min(args.workers, os.cpu_count() or 1))
    except (ValueError, OSError) as error:
        console.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    _report(result)
    return 0 if result["videos"] else 1


if __name__ == "__main__":
    sys.exit(main())
