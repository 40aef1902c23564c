"""The raw-video source: a shard sample (video bytes + metadata json) -> a clip at its bucket's size, and with
`audio_rate` its sound (wan_train.data.audio), with `voices` also reference voices from elsewhere in the source
(wan_train.data.voices)."""

import random
from dataclasses import dataclass

import torch

from wan_train.data.audio import clip_samples, collate_audio, sound_member, sound_request
from wan_train.data.buckets import Bucket, BucketTable
from wan_train.data.captions import caption_flags, choose_caption, tag_caption
from wan_train.data.clips import CLIP_SPANS, CLIP_STARTS, choose_start, frame_indices, longest_span
from wan_train.data.decode import CROPS, Limits, cover_size, crop_to_bucket, decode_clip, expected
from wan_train.data.errors import SampleError
from wan_train.data.metadata import VIDEO_EXTENSIONS, ClipMeta, parse_meta
from wan_train.data.stream import Planned, stack
from wan_train.data.voices import check_voice_options, collate_voices, plan_voices, split_voices


@dataclass(frozen=True)
class VideoSource:
    table: BucketTable
    caption_dropout: float = 0.0
    clip_start: str = "random"
    crop: str = "centre"
    span: str = "shot"
    decode_timeout: float = 60.0
    decode_memory: float = 8.0  # a sample's decode memory bound, in multiples of its bucket's uint8 clip
    audio_rate: int | None = None  # Hz: each clip also gets its sound at this rate (None: no sound)
    voices: int = 0  # reference voices per sample (wan_train.data.voices); needs audio_rate
    voice_seconds: float = 3.0
    voice_gap: float = 0.5
    voice_dropout: float = 0.0

    def __post_init__(self):
        for name, allowed in (("clip_start", CLIP_STARTS), ("crop", CROPS), ("span", CLIP_SPANS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"data.{name}={getattr(self, name)!r}: expected one of {list(allowed)}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"data.caption_dropout={self.caption_dropout}: must be in [0, 1]")
        if not self.decode_memory > 0:
            raise ValueError(f"data.decode_memory={self.decode_memory}: must be > 0 (a multiple of the bucket's clip)")
        if self.audio_rate is not None and not self.audio_rate > 0:
            raise ValueError(f"audio_rate={self.audio_rate}: a sample rate in Hz (> 0), or None for no sound")
        check_voice_options(voices=self.voices, seconds=self.voice_seconds, gap=self.voice_gap,
                            dropout=self.voice_dropout)
        if self.voices and not self.audio_rate:
            raise ValueError(f"data.voices={self.voices} with data.audio=false: reference voices are cut from the "
                             "samples' sound; set data.audio=true")

    @staticmethod
    def read_meta(sample: dict) -> tuple[str, ClipMeta]:
        """The sample's name in messages and its checked metadata (SampleError if a member is missing)."""
        key = f"{sample.get('__url__', '?')}:{sample['__key__']}"
        if "json" not in sample:
            raise SampleError("missing_field", f"{key}: no .json member")
        if not any(ext in sample for ext in VIDEO_EXTENSIONS):
            raise SampleError("missing_field", f"{key}: no video member (one of {list(VIDEO_EXTENSIONS)})")
        return key, parse_meta(sample["json"], key=key)

    def plan(self, sample: dict, *, rng: random.Random) -> Planned:
        key, meta = self.read_meta(sample)
        bucket = self.table.assign(meta.width, meta.height, longest_span(meta, span=self.span))
        if bucket is None:
            raise SampleError("too_short", f"{key}: shorter than the shortest bucket "
                                           f"({self.table.frame_counts[0]} frames at {self.table.fps} fps)")
        caption = choose_caption(len(meta.captions), dropout=self.caption_dropout, rng=rng)
        return Planned(key=sample["__key__"], url=sample.get("__url__", ""), bucket=bucket, sample=sample,
                       choice={"meta": meta, "caption": caption, "name": key},
                       flags=caption_flags(meta.captions, key=key))

    def limits(self, bucket: Bucket) -> Limits:
        """One sample's deadline and decode memory bound (wan_train.data.decode.Limits)."""
        return Limits.for_bucket(bucket, timeout=self.decode_timeout, memory_factor=self.decode_memory)

    def load(self, planned: Planned, *, rng: random.Random) -> dict:
        return self.load_clip(planned, rng=rng, limits=self.limits(planned.bucket))

    def load_clip(self, planned: Planned, *, rng: random.Random, limits: Limits) -> dict:
        meta, name, bucket = planned.choice["meta"], planned.choice["name"], planned.bucket
        video = next(planned.sample[ext] for ext in VIDEO_EXTENSIONS if ext in planned.sample)
        fps = self.table.fps
        start = choose_start(meta, frames=bucket.frames, fps=fps, mode=self.clip_start, span=self.span, rng=rng,
                             key=name)
        indices = frame_indices(meta, start=start, frames=bucket.frames, fps=fps)
        caption = planned.choice["caption"]
        prompt = "" if caption is None else meta.captions[caption]
        sound, member, voices, flags = None, b"", [], []
        if self.audio_rate:
            ext, member = sound_member(planned.sample) or (None, b"")
            if self.voices:
                voices, prompt, flags = self.plan_voices(planned, indices, prompt=prompt, rng=rng)
            sound = sound_request(start, frames=bucket.frames, fps=fps, rate=self.audio_rate, member=ext,
                                  voices=tuple(v for v in voices if v is not None), voice_samples=self.voice_samples)
        frames, audio = decode_clip(video, indices, size=cover_size(meta.width, meta.height, bucket), key=name,
                                    expect=expected(meta), limits=limits, sound=sound, member=member)
        item = {
            "video": crop_to_bucket(frames, bucket, mode=self.crop, rng=rng),
            "prompt": prompt,
            "key": planned.key,
            "url": planned.url,
            "start": start,
        }
        if audio is not None and self.voices:
            audio, refs, present = split_voices(audio, clip=sound["samples"], starts=voices,
                                                samples=self.voice_samples, key=name)
            item.update(audio_refs=refs, audio_ref_mask=present,
                        voice_starts=[v if p else None for v, p in zip(voices, present.tolist(), strict=True)])
            if audio.size:
                planned.flags.extend(flags)
        if audio is not None:
            item.update(audio=torch.from_numpy(audio), has_audio=audio.size > 0)
            if not audio.size:
                why = f"{name}: no sound stream in the video and no .wav / .flac member: trained with has_audio False"
                planned.flags.append(("no_audio", why))
        return item

    def plan_voices(self, planned: Planned, indices: list[int], *, prompt: str,
                    rng: random.Random) -> tuple[list[float | None], str, list[tuple[str, str]]]:
        """The voices' starts (wan_train.data.voices.plan_voices), the prompt with their speakers tagged, and the
        flags to raise if the sample has sound. From the whole source: an R2V sample's "meta" is narrowed to where
        its clip may lie."""
        meta, name = planned.choice.get("source_meta", planned.choice["meta"]), planned.choice["name"]
        shown = (indices[0] / meta.fps, (indices[-1] + 1) / meta.fps)  # the clip's display interval, seconds
        voices, tagged, flags = plan_voices(meta, planned.choice.get("subjects"), voices=self.voices, target=shown,
                                            seconds=self.voice_seconds, gap=self.voice_gap,
                                            dropout=self.voice_dropout, rate=self.audio_rate, rng=rng, key=name)
        if tagged and prompt:  # the voices' speakers, as R2V tags its subjects
            prompt = tag_caption(prompt, [s.name for s in tagged], key=name)
        return voices, prompt, flags

    def collate(self, items: list[dict]) -> dict:
        batch = {
            "video": stack(items, "video"),
            "prompt": [item["prompt"] for item in items],
            "key": [item["key"] for item in items],
            "url": [item["url"] for item in items],
            "start": [item["start"] for item in items],
        }
        if self.audio_rate:
            samples = clip_samples(items[0]["video"].shape[0], fps=self.table.fps, rate=self.audio_rate)
            batch.update(collate_audio(items, samples=samples))
            if self.voices:
                batch.update(collate_voices(items))
        return batch

    @property
    def voice_samples(self) -> int:
        return round(self.voice_seconds * self.audio_rate) if self.audio_rate else 0

