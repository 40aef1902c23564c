"""Per-video scorers: `scorer(videos [B, 3, F, H, W] in [-1, 1], prompts [B]) -> {metric: [B] float32}`, and
sound scorers for videos with sound: `scorer(videos, sounds [B] x [T] in [-1, 1], *, fps, sample_rate) -> {...}`.

One interface for the sweep (eval.cell) and for training: a validation metric is a scorer named by Hydra's
`_target_`, so wan_train never imports eval/ (train.py ... 'validation.metrics=[{_target_:
eval.scorers.ClipScore, model: models/clip-vit-base-patch32}]'). Networks load once per process (folder, device)
and are shared by every scorer and sweep cell that names them.
"""

from __future__ import annotations

import functools
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import torch
from PIL import Image

from eval.clip_score import ClipScorer
from eval.identity import ImageEmbedder, identity_similarity, subject_consistency, temporal_flickering
from eval.sync import MIN_OTHERS, sync_scores
from eval.syncnet import LoadedSyncNet, load_syncnet, syncnet_scores
from wan_train.inference.images import read_image, to_tensor
from wan_train.inference.references import IMAGE_SUFFIXES


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@functools.lru_cache(maxsize=8)
def clip_scorer(folder: str, device: str) -> ClipScorer:
    return ClipScorer(folder, device=device)


@functools.lru_cache(maxsize=2)
def syncnet(path: str, device: str) -> LoadedSyncNet:
    loaded = load_syncnet(path)
    loaded.net.to(device)
    return loaded


@functools.lru_cache(maxsize=8)
def image_embedder(folder: str, device: str) -> ImageEmbedder:
    return ImageEmbedder(folder, device=device)


class ClipScore:
    """clip_score: frame-averaged raw cosine between frames and prompt (eval.clip_score)."""

    def __init__(self, model: str, *, frames: int | None = 8, device: str = "auto"):
        self.scorer, self.frames = clip_scorer(str(model), resolve_device(device)), frames

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {"clip_score": self.scorer.score(videos, list(prompts), frames=self.frames)}

    def describe(self) -> dict:
        return {"clip_score": {**self.scorer.describe(), "frames": self.frames}}


class Consistency:
    """VBench's subject consistency with a DINO / DINOv2 folder, background consistency with a CLIP folder
    (eval.identity.subject_consistency; the backbone names the metric, as in VBench)."""

    def __init__(self, model: str, *, frames: int | None = None, device: str = "auto"):
        self.embedder, self.frames = image_embedder(str(model), resolve_device(device)), frames
        self.name = "background_consistency" if self.embedder.kind == "clip" else "subject_consistency"

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {self.name: subject_consistency(videos, embedder=self.embedder, frames=self.frames)}

    def describe(self) -> dict:
        return {self.name: {**self.embedder.describe(), "frames": self.frames}}


class Identity:
    """clip_i / dino_i: cosine of sampled frames with reference images of the subject (a character adapter's
    pictures), averaged over frames and references (eval.identity.identity_similarity)."""

    def __init__(self, model: str, *, references: list[str], frames: int | None = 8, device: str = "auto"):
        if not references:
            raise ValueError("Identity needs at least one reference image (metrics.references=[IMAGE, ...])")
        self.embedder, self.frames = image_embedder(str(model), resolve_device(device)), frames
        self.name = "clip_i" if self.embedder.kind == "clip" else "dino_i"
        self.references = [str(Path(r)) for r in references]
        self.images = [reference_picture(r) for r in self.references]

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        scores = [identity_similarity(videos, image, embedder=self.embedder, frames=self.frames)
                  for image in self.images]
        return {self.name: torch.stack(scores).mean(0)}

    def describe(self) -> dict:
        return {self.name: {**self.embedder.describe(), "frames": self.frames, "references": self.references}}


def reference_picture(path: str) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1]: an image as it is, or the middle frame of a clip (an R2V reference clip)."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return to_tensor(read_image(path))[None]
    import decord

    reader = decord.VideoReader(path)
    return to_tensor(Image.fromarray(reader[len(reader) // 2].asnumpy()))[None]


class Flickering:
    """temporal_flickering: VBench's pixel metric, 1 = no change between consecutive frames; no network."""

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {"temporal_flickering": temporal_flickering(videos)}

    def describe(self) -> dict:
        return {"temporal_flickering": {}}


class AVSync:
    """av_offset (frames, positive = sound late), av_offset_confidence, onset_precision / onset_recall / onset_f1
    and av_align (eval.sync); no network. The offset's null: the other sounds of the batch when it holds more
    than MIN_OTHERS videos, else shuffled blocks of each video's own sound (a sweep cell scores one at a time)."""

    def __call__(self, videos: torch.Tensor, sounds: Sequence[torch.Tensor], *, fps: float,
                 sample_rate: int) -> dict[str, torch.Tensor]:
        rows = []
        for i, (video, sound) in enumerate(zip(videos, sounds, strict=True)):
            others = [s for j, s in enumerate(sounds) if j != i] if len(sounds) > MIN_OTHERS else []
            rows.append(sync_scores(video, sound, fps=fps, sample_rate=sample_rate, others=others))
        return {k: torch.tensor([row[k] for row in rows], dtype=torch.float32) for k in rows[0]}

    def describe(self) -> dict:
        null = f"mismatched sounds of the batch (> {MIN_OTHERS} videos) or shuffled blocks of the video's own sound"
        return {"av_offset": {"unit": "frames, positive = sound late", "null": null}}


class SyncNetScore:
    """lse_d, lse_c and syncnet_offset (frames at 25 fps, positive = sound late) from syncnet_v2.model
    (eval.syncnet), each video taken as a talking-head crop (no face detector)."""

    def __init__(self, path: str, *, device: str = "auto"):
        self.loaded = syncnet(str(Path(path)), resolve_device(device))

    def __call__(self, videos: torch.Tensor, sounds: Sequence[torch.Tensor], *, fps: float,
                 sample_rate: int) -> dict[str, torch.Tensor]:
        found = [syncnet_scores(self.loaded.net, video, sound, fps=fps, sample_rate=sample_rate)
                 for video, sound in zip(videos, sounds, strict=True)]
        return {"lse_d": torch.tensor([f.lse_d for f in found]), "lse_c": torch.tensor([f.lse_c for f in found]),
                "syncnet_offset": torch.tensor([float(f.offset) for f in found])}

    def describe(self) -> dict:
        return {"lse_d": {"file": self.loaded.file, "sha256": self.loaded.sha256, "crop": "centred square",
                          "fps": 25, "vshift": 15}}


def read_sound(path: str | Path) -> tuple[torch.Tensor, int]:
    """A 16-bit PCM .wav (what generate.py writes beside a video with sound) -> (mono float32 [T] in [-1, 1],
    sample rate); channels are averaged."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * f.getsampwidth()}-bit samples; expected 16-bit PCM")
        samples = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").reshape(-1, f.getnchannels())
        rate = f.getframerate()
    return torch.from_numpy(samples.astype(np.float32).mean(1) / 32767), rate


def build_scorers(metrics, *, refs: list[str] = ()) -> list:
    """The scorers a sweep's `metrics` config asks for (eval.config.MetricsConfig). refs: a reference-to-video
    cell's references, the identity metric's pictures unless metrics.references names others."""
    scorers: list = [Flickering()]
    references = list(metrics.references) or list(refs)
    if metrics.clip is not None:
        scorers.append(ClipScore(metrics.clip, frames=metrics.frames, device=metrics.device))
    if metrics.image_model is not None:
        scorers.append(Consistency(metrics.image_model, device=metrics.device))
        if references:
            scorers.append(Identity(metrics.image_model, references=references, frames=metrics.frames,
                                    device=metrics.device))
    elif metrics.references:
        raise ValueError("metrics.references needs metrics.image_model (a DINOv2 / DINO / CLIP folder) to embed "
                         "the reference images and the frames with")
    return scorers


def build_sound_scorers(metrics) -> list:
    """The sound scorers the `metrics` config asks for: metrics.sync (eval.sync), metrics.syncnet (a file)."""
    scorers: list = []
    if metrics.sync:
        scorers.append(AVSync())
    if metrics.syncnet is not None:
        scorers.append(SyncNetScore(metrics.syncnet, device=metrics.device))
    return scorers


def score_sound(scorers: list, videos: torch.Tensor, sounds: Sequence[torch.Tensor], *, fps: float,
                sample_rate: int) -> dict[str, torch.Tensor]:
    """Every sound scorer's [B] values, under one dict."""
    out: dict[str, torch.Tensor] = {}
    for scorer in scorers:
        for name, values in scorer(videos, sounds, fps=fps, sample_rate=sample_rate).items():
            if name in out:
                raise ValueError(f"two scorers both report {name!r}")
            out[name] = values.float().cpu()
    return out


def score_videos(scorers: list, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Every scorer's [B] values, under one dict (names are unique across scorers)."""
    out: dict[str, torch.Tensor] = {}
    for scorer in scorers:
        for name, values in scorer(videos, prompts).items():
            if name in out:
                raise ValueError(f"two scorers both report {name!r}")
            out[name] = values.float().cpu()
    return out
