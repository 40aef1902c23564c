"""Reference-to-video (R2V, "subject cloning") samples: the target clip as VideoSource makes it, plus up to
MAX_REFERENCES reference crops of the subjects its metadata names (ClipMeta.subjects), each taken from another
moment of the same source video, and the caption with each subject's name replaced by its tag @Video1..@Video3.

Per sample, all randomness from the sample's rng:
- subjects: up to `references` of the metadata's subjects, chosen and ordered at random; slot k (tag @Video{k+1},
  refs[k]) holds the k-th. A sample without subjects is skipped (`no_subjects`): with nothing tagged in its caption
  a whole-frame reference would teach copying frames, not subjects.
- tags: in the chosen caption, the first occurrence of each chosen subject's name (exact, case-sensitive phrase;
  longer names claim their text first, so "dog" never tags inside a claimed "hot dog") becomes its tag. A name
  missing from the caption skips the sample (`subject_not_in_caption`); a caption dropped by caption dropout stays
  empty.
- moment: each reference is `reference_frames` frames at the bucket fps from another moment than the target clip:
  any moment of a recorded shot the target does not touch when there is one, else of the target's own span(s) at
  least `reference_gap` seconds before or after it; never overlapping it. The target clip is only placed where such
  a moment exists, and its bucket is the longest that leaves room for one (`no_reference_moment` when none does).
- crop: reference_crop="subject" cuts the subject's box (the union of its nearest recorded boxes over the
  reference's frames, grown by REFERENCE_MARGIN, clamped to the frame) from full-resolution frames, scales it to fit
  inside the bucket keeping its aspect and centres it on black (PAD_VALUE), as the inference side fits reference
  files (wan_train.inference.references); "frame", or a subject without boxes, covers and crops the whole frame
  like the target.
- dropout: with probability `reference_dropout` every reference of the sample is absent (ref_mask False, frames
  zero, not decoded) while the caption keeps its tags: the no-reference branch of guidance over references.

Item / batch keys beside VideoSource's (uint8 frames, converted to model space by the DataModule on the device):
  refs        uint8 [R, f, H, W, 3] / [B, R, f, H, W, 3]: R references of f frames at the target's H x W; a batch
              pads to its most references with zero frames
  ref_mask    bool [R] / [B, R]: False for dropped references and padding
  ref_starts  seconds (stored video) where each reference starts, per sample
  ref_names   the subject name of each slot, per sample"""

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from wan_train.data.buckets import Bucket, BucketTable
from wan_train.data.captions import MAX_REFERENCES, tag_caption
from wan_train.data.clips import choose_start, frame_indices, usable_spans
from wan_train.data.decode import Limits, cover_size, crop_to_bucket, decode_frames, expected, resize_frames
from wan_train.data.errors import SampleError
from wan_train.data.metadata import VIDEO_EXTENSIONS, ClipMeta, Subject
from wan_train.data.stream import Planned
from wan_train.data.video import VideoSource

REFERENCE_CROPS = ("subject", "frame")
REFERENCE_MARGIN = 0.2  # a subject box grows by this fraction of its width and height (half on each side)
PAD_VALUE = 0  # uint8 around a letterboxed subject crop: black, -1 in model space, as inference pads reference files
_EPS = 1e-6


def check_reference_options(*, references: int, frames: int, gap: float, crop: str, dropout: float,
                            temporal_stride: int) -> None:
    """ValueError naming the data.* key of the first bad reference option."""
    if not 0 <= references <= MAX_REFERENCES:
        raise ValueError(f"data.references={references}: must be 0 (off) to {MAX_REFERENCES}; prompts tag at most "
                         f"{MAX_REFERENCES} subjects, as @Video1..@Video{MAX_REFERENCES}")
    if frames < 1 or (frames - 1) % temporal_stride:
        raise ValueError(f"data.reference_frames={frames}: must be 1 (an image) or 1 + {temporal_stride}k (a clip the "
                         "VAE encodes without a partial latent frame)")
    if not gap >= 0:
        raise ValueError(f"data.reference_gap={gap}: must be >= 0 seconds")
    if crop not in REFERENCE_CROPS:
        raise ValueError(f"data.reference_crop={crop!r}: expected one of {list(REFERENCE_CROPS)}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"data.reference_dropout={dropout}: must be in [0, 1]")


# --- decisions (shared with data_tools.reference_index) ---------------------------------------------------------

def require_subjects(meta: ClipMeta, *, key: str) -> tuple[Subject, ...]:
    if not meta.subjects:
        raise SampleError("no_subjects", f"{key}: the metadata names no 'subjects' (R2V tags and crops "
                                                  "the subjects its captions name)")
    return meta.subjects


def choose_subjects(meta: ClipMeta, *, limit: int, rng: random.Random, key: str) -> tuple[Subject, ...]:
    """Up to `limit` subjects in slot order (a random subset in random order: slot k is tagged @Video{k+1})."""
    subjects = require_subjects(meta, key=key)
    return tuple(rng.sample(subjects, min(limit, len(subjects))))


def reference_length(frames: int, *, fps: float, src_fps: float) -> float:
    """Seconds of source video a reference of `frames` frames at `fps` may need: its frames' display time plus
    one source frame for rounding its start up onto the source frame grid."""
    return (frames - 1) / fps + 2.0 / src_fps


def target_spans(meta: ClipMeta, *, span: str, frames: int, fps: float, gap: float) -> list[tuple[float, float]]:
    """The intervals (seconds) the target clip may lie in so that a reference moment exists: a whole span (shot
    or window, as `span` says) when another recorded shot can hold a reference, else the span less the room for
    a reference and the gap at its start, or at its end (two overlapping intervals)."""
    room = reference_length(frames, fps=fps, src_fps=meta.fps)
    shots = usable_spans(meta, span="shot")
    out = []
    for a, b in usable_spans(meta, span=span):
        if any(d - c >= room and (d <= a + _EPS or c >= b - _EPS) for c, d in shots):
            out.append((a, b))
        else:
            out += [(a + room + gap, b), (a, b - room - gap)]
    return [(a, b) for a, b in out if b - a > _EPS]


def reference_bucket(meta: ClipMeta, *, table: BucketTable, span: str, frames: int, gap: float,
                     key: str) -> tuple[Bucket, list[tuple[float, float]]]:
    """The target's bucket and the spans it may lie in (target_spans), or `no_reference_moment`."""
    spans = target_spans(meta, span=span, frames=frames, fps=table.fps, gap=gap)
    bucket = table.assign(meta.width, meta.height, max((b - a for a, b in spans), default=0.0))
    if bucket is None:
        raise SampleError(
            "no_reference_moment", f"{key}: no span holds a {table.frame_counts[0]}-frame clip at {table.fps} fps "
            f"plus a {frames}-frame reference {gap} s away from it, and no other shot holds the reference")
    return bucket, spans


def reference_spans(meta: ClipMeta, *, target: tuple[float, float], frames: int, fps: float,
                    gap: float) -> list[tuple[float, float]]:
    """Where a reference may lie, given the target clip's display interval [t0, t1) (seconds): the recorded shots
    the target does not touch that can hold it, if any; else the parts of every span at least `gap` away from
    the target. A reference never crosses a recorded cut."""
    t0, t1 = target
    room = reference_length(frames, fps=fps, src_fps=meta.fps)
    shots = usable_spans(meta, span="shot")
    other = [(c, d) for c, d in shots if d - c >= room and (d <= t0 + _EPS or c >= t1 - _EPS)]
    if other:
        return other
    pieces = [(c, min(d, t0 - gap)) for c, d in shots] + [(max(c, t1 + gap), d) for c, d in shots]
    return [(c, d) for c, d in pieces if d - c > _EPS]


def choose_reference_start(meta: ClipMeta, *, target: tuple[float, float], frames: int, fps: float, gap: float,
                           rng: random.Random, key: str) -> float:
    """A reference start (seconds, on the source frame grid) inside reference_spans, or `no_reference_moment`."""
    spans = reference_spans(meta, target=target, frames=frames, fps=fps, gap=gap)
    problem = f"{key}: no moment for a {frames}-frame reference {gap} s away from the clip at {target[0]:.3f} s"
    if not spans:
        raise SampleError("no_reference_moment", problem)
    try:
        return choose_start(within(meta, spans), frames=frames, fps=fps, mode="random", span="shot", rng=rng, key=key)
    except SampleError:
        raise SampleError("no_reference_moment", problem) from None


def within(meta: ClipMeta, spans: list[tuple[float, float]]) -> ClipMeta:
    """The metadata with `spans` (non-empty, inside its window) as its shots: clips.choose_start(span="shot")
    then places a clip inside one of them, with the frame-grid arithmetic written once, there."""
    return dataclasses.replace(meta, shots=tuple(spans))


# --- pixels -----------------------------------------------------------------------------------------------------

def subject_box(subject: Subject, times: Sequence[float], *, margin: float = REFERENCE_MARGIN,
                ) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) as fractions of the frame: the union of the subject's boxes nearest to `times` (seconds),
    grown by `margin` of its width and height and clamped to the frame."""
    boxes = [subject.box_at(t) for t in times]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    dx, dy = margin * (x1 - x0) / 2, margin * (y1 - y0) / 2
    return max(0.0, x0 - dx), max(0.0, y0 - dy), min(1.0, x1 + dx), min(1.0, y1 + dy)


def crop_box(frames: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """[f, h, w, 3] -> the pixels covering `box` (fractions), at least one pixel each way (a view)."""
    _, h, w, _ = frames.shape
    left, top = min(math.floor(box[0] * w), w - 1), min(math.floor(box[1] * h), h - 1)
    right, bottom = max(math.ceil(box[2] * w), left + 1), max(math.ceil(box[3] * h), top + 1)
    return frames[:, top:bottom, left:right]


def letterbox(frames: np.ndarray, bucket: Bucket) -> torch.Tensor:
    """uint8 [f, h, w, 3] -> uint8 [f, H, W, 3]: scaled to fit inside the bucket keeping its aspect, centred on
    PAD_VALUE."""
    f, h, w, _ = frames.shape
    scale = min(bucket.width / w, bucket.height / h)
    nw, nh = min(bucket.width, max(1, round(w * scale))), min(bucket.height, max(1, round(h * scale)))
    canvas = np.full((f, bucket.height, bucket.width, 3), PAD_VALUE, np.uint8)
    top, left = (bucket.height - nh) // 2, (bucket.width - nw) // 2
    canvas[:, top:top + nh, left:left + nw] = resize_frames(np.ascontiguousarray(frames), (nw, nh))
    return torch.from_numpy(canvas)


# --- the source ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReferenceSource(VideoSource):
    references: int = 1  # most references per sample (1..MAX_REFERENCES)
    reference_frames: int = 1  # frames per reference at the bucket fps: 1 = an image
    reference_gap: float = 0.5  # seconds between a reference and the target clip when they share a span
    reference_crop: str = "subject"
    reference_dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_reference_options(references=self.references, frames=self.reference_frames, gap=self.reference_gap,
                                crop=self.reference_crop, dropout=self.reference_dropout,
                                temporal_stride=self.table.temporal_stride)
        if self.references < 1:
            raise ValueError("data.references=0: ReferenceSource needs at least one reference (0 turns R2V off)")

    def plan(self, sample: dict, *, rng: random.Random) -> Planned:
        planned = super().plan(sample, rng=rng)  # members, metadata, caption choice and dropout, too_short
        meta, key, caption = planned.choice["meta"], planned.choice["name"], planned.choice["caption"]
        subjects = choose_subjects(meta, limit=self.references, rng=rng, key=key)
        prompt = "" if caption is None else tag_caption(meta.captions[caption], [s.name for s in subjects], key=key)
        dropped = rng.random() < self.reference_dropout
        planned.bucket, spans = reference_bucket(meta, table=self.table, span=self.span, frames=self.reference_frames,
                                                 gap=self.reference_gap, key=key)
        # the target loader reads "meta": restricted to the spans that leave room for a reference
        planned.choice.update(meta=within(meta, spans), source_meta=meta, subjects=subjects, prompt=prompt,
                              dropped=dropped)
        return planned

    def load(self, planned: Planned, *, rng: random.Random) -> dict:
        choice, bucket, fps = planned.choice, planned.bucket, self.table.fps
        meta, name, subjects = choice["source_meta"], choice["name"], choice["subjects"]
        # this source's VideoSource settings, the clip inside one of the spans plan() left (span="shot")
        target = VideoSource(**{f.name: getattr(self, f.name) for f in dataclasses.fields(VideoSource)
                                if f.name != "span"}, span="shot")
        limits = self.limits(bucket)  # one deadline for the clip and its references
        item = target.load_clip(planned, rng=rng, limits=limits)
        indices = frame_indices(meta, start=item["start"], frames=bucket.frames, fps=fps)
        shown = (indices[0] / meta.fps, (indices[-1] + 1) / meta.fps)  # the target's display interval, seconds
        starts = [choose_reference_start(meta, target=shown, frames=self.reference_frames, fps=fps,
                                         gap=self.reference_gap, rng=rng, key=name) for _ in subjects]
        if choice["dropped"]:
            refs = torch.zeros((len(subjects), self.reference_frames, bucket.height, bucket.width, 3),
                               dtype=torch.uint8)
        else:
            video = next(planned.sample[ext] for ext in VIDEO_EXTENSIONS if ext in planned.sample)
            refs = self._references(video, meta, bucket, subjects, starts, rng=rng, key=name, limits=limits)
        item.update(prompt=choice["prompt"], refs=refs, ref_mask=torch.full((len(subjects),), not choice["dropped"]),
                    ref_starts=starts, ref_names=[s.name for s in subjects])
        return item

    def _references(self, video: bytes, meta: ClipMeta, bucket: Bucket, subjects: tuple[Subject, ...],
                    starts: list[float], *, rng: random.Random, key: str, limits: Limits) -> torch.Tensor:
        """uint8 [R, f, H, W, 3]. Subject crops are cut from frames decoded at full size (a small subject scaled up
        from the bucket-sized frame would be a blur); whole-frame references decode at the target's cover size."""
        f = self.reference_frames
        indices = [frame_indices(meta, start=s, frames=f, fps=self.table.fps) for s in starts]
        boxed = [k for k, s in enumerate(subjects) if self.reference_crop == "subject" and s.boxes]
        whole = [k for k in range(len(subjects)) if k not in boxed]
        out: list[torch.Tensor | None] = [None] * len(subjects)
        if whole:
            frames = decode_frames(video, [i for k in whole for i in indices[k]],
                                   size=cover_size(meta.width, meta.height, bucket), key=key, expect=expected(meta),
                                   limits=limits)
            for n, k in enumerate(whole):
                out[k] = crop_to_bucket(frames[n * f:(n + 1) * f], bucket, mode=self.crop, rng=rng)
        if boxed:
            frames = decode_frames(video, [i for k in boxed for i in indices[k]], size=(-1, -1), key=key,
                                   expect=expected(meta), limits=limits)
            for n, k in enumerate(boxed):
                box = subject_box(subjects[k], [i / meta.fps for i in indices[k]])
                out[k] = letterbox(crop_box(frames[n * f:(n + 1) * f], box), bucket)
        return torch.stack(out)

    def collate(self, items: list[dict]) -> dict:
        batch = super().collate(items)
        count = max(item["refs"].shape[0] for item in items)
        refs = torch.zeros((len(items), count, *items[0]["refs"].shape[1:]), dtype=torch.uint8)
        mask = torch.zeros((len(items), count), dtype=torch.bool)
        for b, item in enumerate(items):
            refs[b, :item["refs"].shape[0]] = item["refs"]
            mask[b, :item["ref_mask"].shape[0]] = item["ref_mask"]
        batch.update(refs=refs, ref_mask=mask, ref_starts=[item["ref_starts"] for item in items],
                     ref_names=[item["ref_names"] for item in items])
        return batch
