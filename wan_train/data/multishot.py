"""Multi-shot samples: k = data.shots consecutive recorded shots of one source video (ClipMeta.shots, from
data_tools.split_shots), each with its own caption (ClipMeta.shot_captions), plus the video's global caption.

Per sample, all randomness from the sample's rng:
- run: a random run of k consecutive recorded shots (inside the sample's window) among those whose every shot holds
  its share of frames (below); a sample with fewer than k captioned shots is skipped (`no_shots`), one with no run
  that holds them (`too_short`).
- frames: the run's bucket is assigned over its total length (table.assign(width, height, seconds of the k shots)),
  N frames; each shot gets the same f = 1 + 4 floor((N // k - 1) / 4) frames at the bucket fps (4: the VAE's
  temporal stride, BucketTable.temporal_stride). Each shot is encoded by the causal VAE on its own, so it must be
  1 + 4m frames; and since f depends on the bucket alone, every sample of a bucket has the same k x f layout and
  batches collate. k * f <= N: the video is shorter than its bucket's frame count.
- placement: each shot's f frames lie inside that shot (never across a cut), started as data.clip_start says
  (random, or the centre of the shot); the whole sample shares one crop (one framing of one source video).
- captions: the global one chosen as VideoSource chooses it; with probability data.caption_dropout the global caption
  and every shot caption are "" together (the unconditional branch of guidance sees no text at all).

Item / batch keys beside VideoSource's (uint8 frames, converted to model space by the DataModule on the device):
  video         uint8 [k * f, H, W, 3] / [B, k * f, H, W, 3]: the shots one after another
  prompt        the global caption
  start         seconds (stored video) where the first shot's frames start
  shot_prompts  list of k captions, per sample
  shot_frames   [f] * k: pixel frames of each shot (shared by the batch: one list, not one per sample)
  shot_starts   seconds (stored video) where each shot's frames start, per sample"""

import random
from dataclasses import dataclass

from wan_train.data.buckets import Bucket
from wan_train.data.captions import caption_flags, choose_caption
from wan_train.data.clips import choose_start, frame_indices
from wan_train.data.decode import cover_size, crop_to_bucket, decode_frames, expected
from wan_train.data.errors import SampleError
from wan_train.data.metadata import VIDEO_EXTENSIONS, ClipMeta
from wan_train.data.references import within
from wan_train.data.stream import Planned
from wan_train.data.video import VideoSource


def check_shot_options(*, shots: int) -> None:
    """ValueError naming data.shots unless it is 0 (off) or >= 2."""
    if shots < 0 or shots == 1:
        raise ValueError(f"data.shots={shots}: must be 0 (off) or >= 2 (consecutive shots per multi-shot sample)")


def frames_per_shot(bucket_frames: int, *, shots: int, temporal_stride: int) -> int:
    """f = 1 + stride * floor((N // k - 1) / stride): the most 1 + stride*m frames k shots of a bucket of N
    frames can each have."""
    return 1 + temporal_stride * ((bucket_frames // shots - 1) // temporal_stride)


def shot_runs(meta: ClipMeta, *, shots: int, key: str) -> list[list[tuple[int, tuple[float, float]]]]:
    """Every run of `shots` consecutive recorded shots inside the window, as (index into meta.shots, span clipped to
    the window (seconds)) pairs; `no_shots` when the metadata has no such run or no shot captions."""
    if not meta.shots or not meta.shot_captions:
        raise SampleError("no_shots", f"{key}: the metadata has no 'shots' with 'shot_captions' (multi-shot samples "
                                      f"need {shots} captioned consecutive shots)")
    start, end = meta.window
    spans = [(i, (max(a, start), min(b, end))) for i, (a, b) in enumerate(meta.shots)]
    runs = [spans[i:i + shots] for i in range(len(spans) - shots + 1)]
    runs = [run for run in runs if all(b > a for _, (a, b) in run)]
    if not runs:
        raise SampleError("no_shots", f"{key}: {len(meta.shots)} recorded shots, no {shots} consecutive ones inside "
                                      f"the window [{start}, {end}] s")
    return runs


@dataclass(frozen=True)
class MultiShotSource(VideoSource):
    shots: int = 2  # consecutive shots per sample (k)

    def __post_init__(self):
        super().__post_init__()
        check_shot_options(shots=self.shots)
        if self.shots < 2:
            raise ValueError(f"data.shots={self.shots}: MultiShotSource needs at least 2 shots (0 turns it off)")

    def plan(self, sample: dict, *, rng: random.Random) -> Planned:
        key, meta = self.read_meta(sample)
        caption = choose_caption(len(meta.captions), dropout=self.caption_dropout, rng=rng)
        options, problems = [], []
        for run in shot_runs(meta, shots=self.shots, key=key):
            layout = self._layout(meta, run)
            (options if isinstance(layout, tuple) else problems).append((run, layout))
        if not options:
            raise SampleError("too_short", f"{key}: no run of {self.shots} consecutive shots holds them at "
                                           f"{self.table.fps} fps; {problems[0][1]}")
        run, (bucket, frames) = rng.choice(options)
        return Planned(key=sample["__key__"], url=sample.get("__url__", ""), bucket=bucket, sample=sample,
                       choice={"meta": meta, "caption": caption, "name": key, "run": run, "frames": frames},
                       flags=caption_flags(meta.captions, key=key))

    def _layout(self, meta: ClipMeta, run: list[tuple[int, tuple[float, float]]]) -> tuple[Bucket, int] | str:
        """(bucket over the run's total length, frames per shot), or why the run cannot make a sample."""
        table, fps = self.table, self.table.fps
        bucket = table.assign(meta.width, meta.height, sum(b - a for _, (a, b) in run))
        first = run[0][0]
        if bucket is None:
            return (f"shots {first}..{first + self.shots - 1} are shorter together than the shortest bucket "
                    f"({table.frame_counts[0]} frames)")
        frames = frames_per_shot(bucket.frames, shots=self.shots, temporal_stride=table.temporal_stride)
        for index, span in run:
            try:  # centre mode draws nothing from the rng: this only asks whether the shot holds the frames
                choose_start(within(meta, [span]), frames=frames, fps=fps, mode="centre", span="shot",
                             rng=random.Random(0), key="")
            except SampleError:
                return (f"shot {index} ({span[1] - span[0]:.2f} s) is shorter than {frames} frames, its share of "
                        f"the {bucket.frames}-frame bucket of shots {first}..{first + self.shots - 1}")
        return bucket, frames

    def load(self, planned: Planned, *, rng: random.Random) -> dict:
        choice, bucket, fps = planned.choice, planned.bucket, self.table.fps
        meta, name, run, frames = choice["meta"], choice["name"], choice["run"], choice["frames"]
        video = next(planned.sample[ext] for ext in VIDEO_EXTENSIONS if ext in planned.sample)
        starts = [choose_start(within(meta, [span]), frames=frames, fps=fps, mode=self.clip_start, span="shot",
                               rng=rng, key=name) for _, span in run]
        indices = [i for start in starts for i in frame_indices(meta, start=start, frames=frames, fps=fps)]
        pixels = decode_frames(video, indices, size=cover_size(meta.width, meta.height, bucket), key=name,
                               expect=expected(meta), limits=self.limits(bucket))
        dropped = choice["caption"] is None
        return {
            "video": crop_to_bucket(pixels, bucket, mode=self.crop, rng=rng),
            "prompt": "" if dropped else meta.captions[choice["caption"]],
            "key": planned.key,
            "url": planned.url,
            "start": starts[0],
            "shot_prompts": ["" if dropped else meta.shot_captions[index] for index, _ in run],
            "shot_frames": [frames] * self.shots,
            "shot_starts": starts,
        }

    def collate(self, items: list[dict]) -> dict:
        layouts = {tuple(item["shot_frames"]) for item in items}
        if len(layouts) > 1:
            raise ValueError(f"multi-shot batch of {[item['key'] for item in items]} mixes shot layouts "
                             f"{sorted(layouts)}: a batch must come from one bucket")
        batch = super().collate(items)
        batch.update(shot_prompts=[item["shot_prompts"] for item in items], shot_frames=list(items[0]["shot_frames"]),
                     shot_starts=[item["shot_starts"] for item in items])
        return batch
