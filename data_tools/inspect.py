"""Inspect video shards: what they hold (shards, samples, hours; histograms of duration, size, orientation, fps
and training bucket; caption lengths; which samples have sound, its rates, codecs and hours) and whether every
sample is sound: its .json parses, it has a video member, every frame decodes, the decoded frame count is the
.json's `num_frames`, and its sound (a .wav / .flac member, else the video's own track), if any, decodes.

    python -m data_tools.inspect --shards 'data/shard-{000000..000009}.tar' --resolutions 480p 720p \\
        --durations 5 --fps 16 --workers 8 --report bad.jsonl

The exit status is 1 when any sample or shard is bad, so the check can gate a pipeline. Bad samples are listed
(shard, key, reason, message) and, with --report, written as JSON lines. Reasons: the loader's skip reasons
(`bad_metadata`, `missing_field`, `undecodable`, `bad_audio`) plus `frame_count_mismatch`, `unreadable_shard`
(missing file, corrupt or truncated tar; key is null) and `crashed` (a worker process died on the shard).

Sound that does not cover its video (it starts after the first frame or ends before the last by more than a frame:
clips there are skipped as `audio_too_short` with data.audio; or it runs on over half a second past the video:
likely another video's sound), or whose .json record disagrees with the file, is listed as a mismatch: a
warning, not a bad sample. Without decoding, the sound is what the .json records (data_tools.make_shards)."""

import argparse
import json
import multiprocessing
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from rich.table import Table

from data_tools.common import console, progress, shard_samples_until_damaged, shard_urls, summary, write_atomic
from wan_train.data.audio import sound_member
from wan_train.data.buckets import SIZES as BUCKET_SIZES
from wan_train.data.buckets import BucketTable
from wan_train.data.clips import longest_span
from wan_train.data.errors import SampleError
from wan_train.data.metadata import VIDEO_EXTENSIONS, AudioMeta, ClipMeta, parse_meta
from wan_train.data.probe import open_video, probe_audio
from wan_train.data.shards import expand_urls  # noqa: F401 (tests import it from here)

HISTOGRAMS = ("duration", "resolution", "orientation", "fps", "bucket")
DURATION_EDGES = (1, 2, 3, 5, 10, 20, 30, 60)  # seconds; bins [a, b) between consecutive edges
TOO_SHORT = "too short"
# Frames are checked scaled so the long side is ~128 px: decoding costs the same, copies and memory far less.
# Widths are multiples of 32 because decord's scaler rejects some small widths (16, 24, 48, 72 px).
CHECK_LONG_SIDE = 128
CHECK_CHUNK = 64  # frames per get_batch call, bounding memory for long videos
TABLE_ROWS = 20  # histogram rows shown; the stats keep every value


@dataclass
class Tally:
    """What the shards hold so far; one per shard (possibly in a worker process), merged in shard order."""

    shards: int = 0
    samples: int = 0
    seconds: float = 0.0  # sum of usable windows (end - start) over samples whose .json parses
    histograms: dict[str, Counter] = field(default_factory=lambda: {name: Counter() for name in HISTOGRAMS})
    caption_words: Counter = field(default_factory=Counter)  # words in a caption -> number of captions
    several_captions: int = 0
    decoded: int = 0  # samples whose every frame was decoded and counted
    bad: list[dict] = field(default_factory=list)
    # (width, height, seconds of the longest span a clip may come from) per sample: buckets are assigned at the end,
    # from the given table or one chosen to fit these
    spans: list[tuple[int, int, float]] = field(default_factory=list)
    audio: Counter = field(default_factory=Counter)  # the sound's source ("track", "wav", ...) or "none" -> samples
    audio_rates: Counter = field(default_factory=Counter)
    audio_codecs: Counter = field(default_factory=Counter)
    audio_seconds: float = 0.0
    audio_mismatches: list[dict] = field(default_factory=list)

    def merge(self, other: "Tally") -> None:
        self.shards += other.shards
        self.samples += other.samples
        self.seconds += other.seconds
        for name in HISTOGRAMS:
            self.histograms[name].update(other.histograms[name])
        self.caption_words.update(other.caption_words)
        self.several_captions += other.several_captions
        self.decoded += other.decoded
        self.bad.extend(other.bad)
        self.spans.extend(other.spans)
        for name in ("audio", "audio_rates", "audio_codecs"):
            getattr(self, name).update(getattr(other, name))
        self.audio_seconds += other.audio_seconds
        self.audio_mismatches.extend(other.audio_mismatches)

    def add_audio(self, audio: AudioMeta | None) -> None:
        self.audio["none" if audio is None else audio.member or "track"] += 1
        if audio is not None:
            self.audio_rates[f"{audio.sample_rate} Hz"] += 1
            self.audio_codecs[audio.codec] += 1
            self.audio_seconds += audio.duration

    def add_meta(self, meta: ClipMeta) -> None:
        start, end = meta.window
        self.seconds += end - start
        for name, value in describe(meta).items():
            self.histograms[name][value] += 1
        self.spans.append((meta.width, meta.height, longest_span(meta, span="shot")))
        self.caption_words.update(len(c.split()) for c in meta.captions)
        self.several_captions += len(meta.captions) > 1


def describe(meta: ClipMeta) -> dict[str, str]:
    """The histogram value of each kind for one sample (buckets: `bucket_counts`, once all are read)."""
    start, end = meta.window
    seconds = end - start
    bin_index = sum(seconds >= edge for edge in DURATION_EDGES)
    orientation = "landscape" if meta.width > meta.height else "portrait" if meta.width < meta.height else "square"
    return {"duration": _duration_label(bin_index), "resolution": f"{meta.width}x{meta.height}",
            "orientation": orientation, "fps": f"{round(meta.fps, 3):g}"}


def bucket_counts(spans: Sequence[tuple[int, int, float]], table: BucketTable) -> Counter:
    """The bucket the loader would assign to each sample's longest span (a shot, else the window), or TOO_SHORT."""
    return Counter(bucket.key if (bucket := table.assign(w, h, seconds)) else TOO_SHORT for w, h, seconds in spans)


CHOICE_DURATIONS = (1.0, 2.0, 3.0, 4.0, 5.0)  # seconds a chosen table may use (Wan trains 5 s at 16 fps)
CHOICE_SHARE = 0.9  # a chosen duration leaves at most 10% of the samples too short


def fitting_table(spans: Sequence[tuple[int, int, float]], *, fps: float, resolutions: Sequence[str] | None = None,
                  durations: Sequence[float] | None = None) -> BucketTable:
    """Buckets for this data where none were given: the largest resolution that half the samples reach without
    upscaling (else the smallest), and the longest duration that at least 90% of them last (else the shortest
    that still makes frames). Given resolutions or durations are kept."""
    if resolutions is None:
        every = BucketTable(resolutions=tuple(BUCKET_SIZES), fps=fps)
        fits = [r for r in BUCKET_SIZES if 2 * sum(every.reaches(r, w, h) for w, h, _ in spans) >= len(spans)]
        resolutions = (fits[-1] if fits else next(iter(BUCKET_SIZES)),)
    if durations is None:
        ok = [d for d in CHOICE_DURATIONS
              if len(spans) - bucket_counts(spans, BucketTable(resolutions=tuple(resolutions), durations=(d,),
                                                               fps=fps))[TOO_SHORT] >= CHOICE_SHARE * len(spans)]
        durations = (ok[-1] if ok else 5 / fps,)
    return BucketTable(resolutions=tuple(resolutions), durations=tuple(durations), fps=fps)


def _duration_label(bin_index: int) -> str:
    edges = (0, *DURATION_EDGES)
    if bin_index == len(DURATION_EDGES):
        return f"{edges[-1]}+ s"
    return f"{edges[bin_index]}-{edges[bin_index + 1]} s"


# --- reading shards ---------------------------------------------------------------------------------------------

# --- checking samples -------------------------------------------------------------------------------------------

class Problem(NamedTuple):
    reason: str  # a SampleError reason, or frame_count_mismatch (the loader trusts num_frames, so it has none)
    message: str


def check_sample(sample: dict, *, decode: bool) -> tuple[ClipMeta | None, Problem | None]:
    """The sample's metadata (None if it has none that parses) and what is wrong with it (None if nothing)."""
    key = sample["__key__"]
    if "json" not in sample:
        return None, Problem("missing_field", f"{key}: no .json member (has {_members_of(sample)})")
    try:
        meta = parse_meta(sample["json"], key=key)
    except SampleError as error:
        return None, Problem(error.reason, str(error))
    video = next((sample[ext] for ext in VIDEO_EXTENSIONS if ext in sample), None)
    if video is None:
        return meta, Problem("missing_field", f"{key}: no video member (has {_members_of(sample)})")
    if decode:
        try:
            frames = count_frames(video, key=key, width=meta.width, height=meta.height)
        except SampleError as error:
            return meta, Problem(error.reason, str(error))
        if frames != meta.num_frames:
            return meta, Problem("frame_count_mismatch",
                                 f"{key}: .json says {meta.num_frames} frames, the video decodes to {frames}")
    return meta, None


# seconds past the video's end a sound may run before it is listed (AAC's last frame, a fade-out); short of it, one
# frame is all it may lack (the loader pads one frame at a clip's end)
AUDIO_LONGER = 0.5


def check_audio(sample: dict, meta: ClipMeta, *, decode: bool) -> tuple[AudioMeta | None, Problem | None,
                                                                            str | None]:
    """The sample's sound (decoded whole with `decode`, else the .json's record), what is wrong with it (it does
    not decode: `bad_audio`) and how it disagrees with its video or its record (a mismatch message, or None)."""
    key = sample["__key__"]
    if not decode:
        return meta.audio, None, None if meta.audio is None else audio_mismatch(meta.audio, meta, key=key)
    member = sound_member(sample)
    video = next(sample[ext] for ext in VIDEO_EXTENSIONS if ext in sample)
    try:
        audio = probe_audio(member[1] if member else video, name=key, member=member[0] if member else None)
    except SampleError as error:
        return None, Problem(error.reason, str(error)), None
    if (audio is None) != (meta.audio is None):
        said = "no sound" if meta.audio is None else f"{meta.audio.duration:.3f} s of sound"
        heard = "none" if audio is None else f"{audio.duration:.3f} s"
        return audio, None, f"{key}: the .json records {said}, the sample has {heard}"
    return audio, None, None if audio is None else audio_mismatch(audio, meta, key=key)


def audio_mismatch(audio: AudioMeta, meta: ClipMeta, *, key: str) -> str | None:
    """How the sound fails to cover its video (see the module's doc), or None."""
    frame, problems = 1 / meta.fps, []
    if audio.start > frame:
        problems.append(f"starts {audio.start:.3f} s after the first frame")
    if audio.end < meta.duration - frame:
        problems.append(f"ends {meta.duration - audio.end:.3f} s before the video")
    if audio.end > meta.duration + AUDIO_LONGER:
        problems.append(f"runs {audio.end - meta.duration:.3f} s past the video")
    if not problems:
        return None
    return (f"{key}: the sound ({audio.start:.3f}..{audio.end:.3f} s) {' and '.join(problems)} "
            f"(0..{meta.duration:.3f} s)")


def _members_of(sample: dict) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


def count_frames(video: bytes, *, key: str, width: int, height: int) -> int:
    """Decode every frame of the video (scaled down) and return how many there are; SampleError('undecodable')
    if any frame fails. `width`/`height` (from the .json) only choose the reduced size."""
    long_side = max(width, height)
    if long_side <= CHECK_LONG_SIDE:
        return _decode_all(video, key=key, size=(-1, -1))
    scaled_width = max(32, round(CHECK_LONG_SIDE * width / long_side / 32) * 32)
    scaled_height = max(2, round(scaled_width * height / width / 2) * 2)
    try:
        return _decode_all(video, key=key, size=(scaled_width, scaled_height))
    except SampleError:
        # the .json size may be wrong or the scaler may refuse it: only a full-size failure condemns the video
        return _decode_all(video, key=key, size=(-1, -1))


def _decode_all(video: bytes, *, key: str, size: tuple[int, int]) -> int:
    reader = open_video(video, name=key, width=size[0], height=size[1])
    total = len(reader)
    for first in range(0, total, CHECK_CHUNK):
        indices = list(range(first, min(first + CHECK_CHUNK, total)))
        try:
            got = reader.get_batch(indices).shape[0]
        except Exception as error:  # decord raises DECORDError / RuntimeError on broken streams
            raise SampleError("undecodable", f"{key}: decoding frames {indices[0]}..{indices[-1]} of {total} "
                              f"failed ({error})") from None
        if got != len(indices):
            raise SampleError("undecodable", f"{key}: asked for {len(indices)} frames from {first}, got {got}")
    return total


# --- one shard, many shards -------------------------------------------------------------------------------------

def inspect_shard(url: str, *, decode: bool, on_sample: Callable[[], None] | None = None) -> Tally:
    """Tally one shard. A shard that cannot be read (from the start or part-way) adds an `unreadable_shard` entry;
    the samples read before the damage still count (all but the one being read)."""
    tally = Tally(shards=1)

    def damaged(error: Exception) -> None:
        tally.bad.append(_bad(url, None, "unreadable_shard", f"{url}: {type(error).__name__}: {error}"))

    for sample in shard_samples_until_damaged(url, damaged):
        tally.samples += 1
        meta, problem = check_sample(sample, decode=decode)
        if meta is not None:
            tally.add_meta(meta)
        if meta is not None and problem is None:
            audio, problem, mismatch = check_audio(sample, meta, decode=decode)
            if problem is None:
                tally.add_audio(audio)
            if mismatch is not None:
                tally.audio_mismatches.append({"shard": url, "key": sample["__key__"], "message": mismatch})
        if problem is not None:
            tally.bad.append(_bad(url, sample["__key__"], *problem))
        elif decode:
            tally.decoded += 1
        if on_sample is not None:
            on_sample()
    return tally


def _bad(shard: str, key: str | None, reason: str, message: str) -> dict:
    return {"shard": shard, "key": key, "reason": reason, "message": message}


def inspect_shards(urls: Sequence[str], *, table: BucketTable | None = None, decode: bool, workers: int,
                   fps: float = 16.0, resolutions: Sequence[str] | None = None,
                   durations: Sequence[float] | None = None) -> dict:
    """Tally every shard (`workers` > 1: in that many processes, one shard per task) with a progress bar, and
    return the stats as plain data (see `_stats`). The result does not depend on `workers`. Buckets: `table`, or
    without one a table chosen to fit the data (fitting_table), keeping the resolutions or durations given."""
    total = Tally()
    with progress() as bar:
        shards = bar.add_task("shards", total=len(urls))
        samples = bar.add_task("samples", total=None)
        if workers <= 1:
            for url in urls:
                total.merge(inspect_shard(url, decode=decode, on_sample=lambda: bar.advance(samples)))
                bar.advance(shards)
        else:
            parts = {}  # merged in shard order once all are in, so the result does not depend on timing
            for i, part in _in_processes(urls, decode=decode, workers=workers):
                parts[i] = part
                bar.advance(shards)
                bar.advance(samples, part.samples)
            for i in range(len(urls)):
                total.merge(parts[i])
    chosen = table is None
    if chosen:
        table = fitting_table(total.spans, fps=fps, resolutions=resolutions, durations=durations)
    return _stats(total, table=table, chosen=chosen)


def _in_processes(urls: Sequence[str], *, decode: bool, workers: int) -> Iterator[tuple[int, Tally]]:
    """(shard index, tally) as shards finish. Not 'fork': the parent runs the progress bar's thread, and fork with
    threads can deadlock. 'forkserver' preloaded with this module forks workers with webdataset/torch already
    imported (start-up ~2.5x faster than 'spawn'). A worker that dies (a decoder crash) costs its shard only."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["data_tools.inspect"])
    else:
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(urls)), mp_context=context) as pool:
        futures = {pool.submit(inspect_shard, url, decode=decode): i for i, url in enumerate(urls)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                part = future.result()
            except Exception as error:  # BrokenProcessPool after a segfault, or a pickling failure
                part = Tally(shards=1, bad=[_bad(urls[i], None, "crashed", f"{urls[i]}: worker failed ({error!r})")])
            yield i, part


def _stats(tally: Tally, *, table: BucketTable, chosen: bool) -> dict:
    words = sorted(tally.caption_words.elements())
    captions = {"captions": len(words), "min": words[0] if words else 0, "mean": statistics.fmean(words) if words
                else 0.0, "median": statistics.median(words) if words else 0, "max": words[-1] if words else 0,
                "several": tally.several_captions, "empty": tally.caption_words[0]}
    histograms = {**tally.histograms, "bucket": bucket_counts(tally.spans, table)}
    buckets = {"resolutions": list(table.resolutions), "durations": list(table.durations), "fps": table.fps,
               "chosen": chosen, "too_short": histograms["bucket"][TOO_SHORT], "suggested": None}
    if not chosen and buckets["too_short"] > (1 - CHOICE_SHARE) * len(tally.spans):
        better = fitting_table(tally.spans, fps=table.fps, resolutions=table.resolutions)
        if better.durations != table.durations:
            buckets["suggested"] = list(better.durations)
    return {"shards": tally.shards, "samples": tally.samples, "seconds": tally.seconds, "hours": tally.seconds / 3600,
            "decoded": tally.decoded, "histograms": {k: _ordered(k, v) for k, v in histograms.items()},
            "buckets": buckets, "captions": captions, "bad": tally.bad, "audio": _audio_stats(tally)}


def _audio_stats(tally: Tally) -> dict:
    """Samples with sound and without (those whose video checked out), where the sound comes from (`track`, or
    the member's extension), rates, codecs, hours, and the mismatches."""
    sources = Counter({k: v for k, v in tally.audio.items() if k != "none"})
    return {"with": sum(sources.values()), "without": tally.audio["none"], "sources": _by_count(sources),
            "sample_rates": _by_count(tally.audio_rates), "codecs": _by_count(tally.audio_codecs),
            "hours": tally.audio_seconds / 3600, "mismatches": tally.audio_mismatches}


def _by_count(counts: Counter) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _ordered(name: str, counts: Counter) -> dict[str, int]:
    """Durations by bin, fps by value, the rest by count (most first)."""
    labels = [_duration_label(i) for i in range(len(DURATION_EDGES) + 1)]
    order = {"duration": lambda item: labels.index(item[0]), "fps": lambda item: float(item[0])}
    return dict(sorted(counts.items(), key=order.get(name, lambda item: (-item[1], item[0]))))


# --- output and CLI ---------------------------------------------------------------------------------------------

def render(stats: dict) -> None:
    summary("shards", {"shards": stats["shards"], "samples": stats["samples"], "hours": f"{stats['hours']:.2f}",
                       "decoded and counted": stats["decoded"], "bad": len(stats["bad"])})
    for name, counts in stats["histograms"].items():
        console.print(_histogram_table(name, counts))
    console.print(bucket_note(stats), soft_wrap=True)
    summary("caption words", {k: f"{v:.1f}" if isinstance(v, float) else v for k, v in stats["captions"].items()})
    render_audio(stats["audio"])
    if stats["bad"]:
        console.print(_bad_table(stats["bad"]))


def render_audio(audio: dict, *, limit: int = 20) -> None:
    rows = {"with sound": audio["with"], "without": audio["without"], "hours": f"{audio['hours']:.2f}"}
    for name in ("sources", "sample_rates", "codecs"):
        if audio[name]:
            rows[name.replace("_", " ")] = ", ".join(f"{k}: {n}" for k, n in audio[name].items())
    rows["mismatches"] = len(audio["mismatches"])
    summary("sound", rows)
    if audio["mismatches"]:
        table = Table(title=f"sound that does not fit its video ({len(audio['mismatches'])})")
        for column in ("shard", "key", "message"):
            table.add_column(column, overflow="fold")
        for entry in audio["mismatches"][:limit]:
            table.add_row(entry["shard"], entry["key"], entry["message"])
        if len(audio["mismatches"]) > limit:
            table.add_row("...", "", f"{len(audio['mismatches']) - limit} more")
        console.print(table)


def bucket_note(stats: dict) -> str:
    """Which buckets the histogram used, and where they fit the data badly, which would."""
    b = stats["buckets"]
    options = (f"--resolutions {' '.join(b['resolutions'])} --durations {' '.join(f'{d:g}' for d in b['durations'])} "
               f"--fps {b['fps']:g}")
    if b["chosen"]:
        return f"buckets: chosen to fit the data (none given): {options}"
    note = f"buckets: {options}"
    if b["too_short"]:
        share = 100 * b["too_short"] / max(1, stats["samples"])
        note += f"; {b['too_short']} samples ({share:.0f}%) are too short for them"
        if b["suggested"]:
            note += f" (--durations {' '.join(f'{d:g}' for d in b['suggested'])} would fit at least 90%)"
    return note


def _histogram_table(name: str, counts: dict[str, int], *, width: int = 40) -> Table:
    table = Table(title=name)
    for column in (name, "samples", "%", ""):
        table.add_column(column, justify="right" if column in ("samples", "%") else "left")
    total, peak = sum(counts.values()), max(counts.values(), default=1)
    rows = list(counts.items())
    if len(rows) > TABLE_ROWS:
        rest = sum(n for _, n in rows[TABLE_ROWS - 1:])
        rows = rows[:TABLE_ROWS - 1] + [(f"{len(rows) - TABLE_ROWS + 1} others", rest)]
    for label, n in rows:
        table.add_row(label, str(n), f"{100 * n / total:.1f}", "█" * round(width * min(n, peak) / peak))
    return table


def _bad_table(bad: list[dict], *, limit: int = 50) -> Table:
    table = Table(title=f"bad samples ({len(bad)})")
    for column in ("shard", "key", "reason", "message"):
        table.add_column(column, overflow="fold")
    for entry in bad[:limit]:
        table.add_row(entry["shard"], entry["key"] or "-", entry["reason"], entry["message"])
    if len(bad) > limit:
        table.add_row("...", "", "", f"{len(bad) - limit} more (see --report)")
    return table


def _parser() -> argparse.ArgumentParser:
    defaults = BucketTable()
    parser = argparse.ArgumentParser(prog="python -m data_tools.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="+", required=True,
                        help="brace patterns (shard-{000000..000009}.tar), globs, directories, paths or URLs")
    parser.add_argument("--resolutions", nargs="+",
                        help="bucket resolutions (default: the largest most samples reach without upscaling)")
    parser.add_argument("--durations", nargs="+", type=float,
                        help="bucket durations in seconds (default: the longest of 1-5 s that 90%% of samples last)")
    parser.add_argument("--fps", type=float, help=f"training frame rate for buckets (default {defaults.fps})")
    parser.add_argument("--workers", type=int, default=1, help="processes checking shards in parallel")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding (metadata and histograms only)")
    parser.add_argument("--report", type=Path, help="write bad samples here as JSON lines (empty if none)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    urls = shard_urls(parser, args.shards, option="--shards")
    options = {"resolutions": args.resolutions, "durations": args.durations, "fps": args.fps}
    try:  # checks the given values; the table itself is used only when both resolutions and durations are given
        table = BucketTable(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if v is not None})
    except ValueError as error:
        parser.error(str(error))
    given = args.resolutions is not None and args.durations is not None
    stats = inspect_shards(urls, table=table if given else None, decode=not args.no_decode, workers=args.workers,
                           fps=table.fps, resolutions=args.resolutions, durations=args.durations)
    render(stats)
    if args.report is not None:
        write_atomic(args.report, "".join(json.dumps(entry) + "\n" for entry in stats["bad"]).encode())
    return 1 if stats["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
