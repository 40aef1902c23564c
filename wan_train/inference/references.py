"""Reference-to-video inputs: the @VideoN tags of prompts, and reference files (an image, or a few frames of a
clip) fitted to the video's size. Reference j (0-based) is the subject the prompts tag @Video{j+1}; the DiT adds
slot j's embedding to its tokens (wan_train.models.dit.model, module docstring).

A reference is fitted inside the output size keeping its aspect (no part of the subject is cut away) and padded
with black to exactly that size, as the training data pads its subject crops (wan_train.data.references)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from wan_train.inference.images import read_image, to_tensor
from wan_train.models.dit.config import MAX_REFERENCES

TAG = re.compile(r"@Video(\d+)")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def prompt_tags(prompt: str) -> list[int]:
    """The reference numbers a prompt names (@Video2 -> 2), sorted, each once."""
    return sorted({int(n) for n in TAG.findall(prompt)})


def check_tags(prompts: Sequence[str], count: int) -> None:
    """Refuse more than MAX_REFERENCES references, and a tag with no reference (@Video3 with two given)."""
    if count > MAX_REFERENCES:
        raise ValueError(f"{count} references given: at most {MAX_REFERENCES} (@Video1..@Video{MAX_REFERENCES})")
    for prompt in prompts:
        missing = [n for n in prompt_tags(prompt) if not 1 <= n <= count]
        if missing:
            given = f"{count} reference{'s' if count != 1 else ''} given" + (
                f" (@Video1..@Video{count})" if count else ": pass refs=[...] with task=r2v")
            raise ValueError(f"prompt {prompt!r} tags {', '.join(f'@Video{n}' for n in missing)} with no matching "
                             f"reference; {given}")


def fit_reference(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """The picture scaled (LANCZOS) to fit inside width x height, centred on black: [3, height, width] in [-1, 1]."""
    scale = min(width / image.width, height / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image.convert("RGB").resize((w, h), Image.LANCZOS), ((width - w) // 2, (height - h) // 2))
    return to_tensor(canvas)


def read_reference(path: str | Path, *, width: int, height: int, frames: int = 1, fps: float = 16.0,
                   start: float = 0.0) -> torch.Tensor:
    """A reference file as [3, f, height, width] in [-1, 1]: an image is one frame; a video gives `frames`
    consecutive frames at `fps` (the output's frame rate) from `start` seconds in, as training takes a reference from
    a clip (consecutive frames at the training fps, wan_train.data.references). A clip too short for them is
    refused: repeating its last frame would show the model a still it never saw in training."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"refs: {path}: no such file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return fit_reference(read_image(path), width, height)[:, None]
    try:
        import decord

        reader = decord.VideoReader(str(path))
        count, source_fps = len(reader), float(reader.get_avg_fps())
    except Exception as error:  # decord raises its own DECORDError for unreadable files
        raise ValueError(f"refs: {path}: not a readable image or video ({error})") from None
    indices = reference_indices(count, source_fps, frames=frames, fps=fps, start=start)
    if indices is None:
        raise ValueError(f"refs: {path}: {count} frames at {source_fps:g} fps ({count / source_fps:.2f} s) do not "
                         f"hold {frames} frames at {fps:g} fps from {start:g} s (reference_frames, reference_start): "
                         "pass a longer clip, an earlier start, fewer frames, or an image")
    pixels = reader.get_batch(indices).asnumpy()
    return torch.stack([fit_reference(Image.fromarray(frame), width, height) for frame in pixels], dim=1)


def reference_indices(count: int, source_fps: float, *, frames: int, fps: float, start: float) -> list[int] | None:
    """The source frames shown at start + k / fps (k < frames) in a clip of `count` frames at `source_fps` (frame i
    is shown from i / source_fps on); None when the last is past the clip's end."""
    indices = [math.floor((start + k / fps) * source_fps + 1e-6) for k in range(frames)]
    return indices if indices[-1] < count else None


def read_voice(path: str | Path, *, rate: int) -> torch.Tensor:
    """A reference voice for an audio-video model: the first sound stream of an audio or video file (.wav, .flac,
    .mp3, .mp4 ...) as a mono float32 wave [T] at `rate` Hz (downmixed and resampled by FFmpeg's resampler)."""
    import av
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"voice {path}: no such file")
    chunks = []
    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise ValueError(f"voice {path}: the file has no sound stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except av.error.FFmpegError as error:
        raise ValueError(f"voice {path}: cannot decode its sound ({error})") from None
    if not chunks:
        raise ValueError(f"voice {path}: the sound stream is empty")
    return torch.from_numpy(np.concatenate(chunks).astype(np.float32))
