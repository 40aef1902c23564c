"""Which source frames make a training clip: `frames` frames at the target `fps`, i.e. the frames shown at
t_k = start + k / fps (k < frames), start on the source frame grid. A source frame i is shown over
[i / src_fps, (i + 1) / src_fps), so t_k maps to floor(t_k * src_fps); a faster source drops frames, a slower
one repeats them."""

import math
import random

from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta

CLIP_STARTS = ("random", "centre")
CLIP_SPANS = ("shot", "window")
_EPS = 1e-6


def usable_spans(meta: ClipMeta, *, span: str) -> list[tuple[float, float]]:
    """The intervals a clip may come from: the sample's window, or with span='shot' each recorded shot inside
    it (so a clip never crosses a cut)."""
    start, end = meta.window
    if span == "shot" and meta.shots:
        shots = [(max(a, start), min(b, end)) for a, b in meta.shots]
        return [(a, b) for a, b in shots if b > a]
    return [(start, end)]


def longest_span(meta: ClipMeta, *, span: str) -> float:
    return max((b - a for a, b in usable_spans(meta, span=span)), default=0.0)


def choose_start(meta: ClipMeta, *, frames: int, fps: float, mode: str, span: str, rng: random.Random,
                 key: str) -> float:
    """A start time (seconds, on the source frame grid) such that all `frames` timestamps lie in one span."""
    length = (frames - 1) / fps
    # first and last source-frame index a start may take, per span that is long enough
    options = []
    for a, b in usable_spans(meta, span=span):
        first = math.ceil(a * meta.fps - _EPS)
        last = math.floor((b - length) * meta.fps - _EPS)
        if (last + 1) / meta.fps + length > b + _EPS:  # the last timestamp must be shown before b
            last -= 1
        if last >= first:
            options.append((first, last))
    if not options:
        raise SampleError("too_short", f"{key}: no span of {length + 1 / fps:.2f} s for {frames} frames at {fps} fps")
    if mode == "centre":
        first, last = max(options, key=lambda o: o[1] - o[0])
        return (first + (last - first) // 2) / meta.fps
    first, last = rng.choice(options)
    return rng.randint(first, last) / meta.fps


def frame_indices(meta: ClipMeta, *, start: float, frames: int, fps: float) -> list[int]:
    return [min(math.floor((start + k / fps) * meta.fps + _EPS), meta.num_frames - 1) for k in range(frames)]
