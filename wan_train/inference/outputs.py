"""Generated videos on disk: an H.264 mp4 (with an AAC sound track and a .wav beside it when there is sound), a
preview (PNG contact sheet or GIF) and the settings as JSON.

    saved = save_video("out/fox.mp4", video_B3FHW[0], fps=16, metadata={"prompt": ..., "seed": 0, ...})

writes out/fox.mp4, out/fox.png and out/fox.json, each atomically and durably (wan_train.fileio.durable: a
temporary file beside it, fsynced, renamed), so a reader never sees a half-written file. The mp4 encoder here is
also the one data_tools uses for demo data and shards (wan_train never imports data_tools, so it lives on this
side).

Odd sizes: H.264 in yuv420p subsamples chroma 2x2 and x264 refuses odd widths and heights, so the mp4 alone gets
the last row and/or column repeated (edge replication, at most one pixel each way); the preview, to_uint8 and the
metadata keep the exact generated size.
"""

from __future__ import annotations

import io
import json
import math
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw

from wan_train.fileio.durable import atomic_file
from wan_train.marking import Marker, container_tags

# x264's bytes depend on its thread count (so on the CPU count), and its macroblock-tree rate control gave
# different bytes for the same frames in a few percent of encodes; one thread and mbtree=0 never did.
X264_REPRODUCIBLE = {"threads": "1", "mbtree": "0"}
PREVIEWS = ("png", "gif", "none")
AAC_BIT_RATE = 96_000  # per channel; transparent for speech and effects at 16-48 kHz


# ------------------------------------------------------------------------------------------------------- mp4

def encode_mp4(frames: np.ndarray, *, fps: float, gop: int = 32, crf: int = 18, codec: str = "libx264",
               reproducible: bool = False, tags: dict[str, str] | None = None,
               sound: tuple[np.ndarray, int] | None = None) -> bytes:
    """uint8 frames [F, H, W, 3] (even H and W for yuv420p) -> the bytes of an mp4. `gop` is the keyframe
    interval, the random-access granularity of the decoder; `reproducible` gives the same bytes on every
    machine and run (slower: one encoder thread); `tags` are container metadata (mp4 keeps comment, description,
    title); `sound` (samples [C, T] float in [-1, 1], sample rate) becomes an AAC track starting with the
    first frame."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if sound is not None:
        _check_sound(*sound)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        container.metadata.update(tags or {})
        stream = container.add_stream(codec, rate=_rate(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "crf": str(crf), "preset": "veryfast", "bf": "0",
                          **(X264_REPRODUCIBLE if reproducible else {})}
        audio = None if sound is None else _aac_stream(container, *sound)  # every stream before the first packet
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        if audio is not None:
            audio_stream, audio_frame = audio
            container.mux(audio_stream.encode(audio_frame))
            container.mux(audio_stream.encode(None))
    return buffer.getvalue()


def _check_sound(samples: np.ndarray, rate: int) -> None:
    if not (isinstance(samples, np.ndarray) and samples.ndim == 2 and samples.shape[0] in (1, 2)
            and samples.shape[1] > 0 and np.issubdtype(samples.dtype, np.floating)):
        raise ValueError(f"sound must be float samples [1 or 2, T], got {getattr(samples, 'dtype', type(samples))} "
                         f"{tuple(getattr(samples, 'shape', ()))}")
    if not (isinstance(rate, int) and rate > 0):
        raise ValueError(f"sound sample rate {rate!r} must be a positive integer")


def _aac_stream(container, samples: np.ndarray, rate: int):
    """(an AAC stream of the container, one frame of all the samples from time 0)."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    stream = container.add_stream("aac", rate=rate)
    stream.bit_rate, stream.layout = AAC_BIT_RATE * samples.shape[0], layout
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.clip(samples, -1, 1), dtype=np.float32),
                                       format="fltp", layout=layout)
    frame.sample_rate, frame.pts = rate, 0
    return stream, frame


def encode_wav(samples: np.ndarray, rate: int) -> bytes:
    """Samples [C, T] float in [-1, 1] -> a 16-bit PCM .wav file's bytes."""
    _check_sound(samples, rate)
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").T.copy()  # interleaved [T, C]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(samples.shape[0])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return buffer.getvalue()


def write_mp4(path: str | Path, frames: np.ndarray, *, fps: float, **options) -> Path:
    """encode_mp4(frames, fps=fps, **options) written atomically to `path`."""
    path = Path(path)
    data = encode_mp4(frames, fps=fps, **options)
    with atomic_file(path) as f:
        f.write(data)
    return path


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] -> [F, H + H % 2, W + W % 2, 3], the last row / column repeated (yuv420p needs even
    sizes); even sizes come back unchanged (the same array)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


# ---------------------------------------------------------------------------------------------------- frames

def to_uint8(video: torch.Tensor) -> np.ndarray:
    """One video [3, F, H, W] in [-1, 1] (any float dtype or device) -> uint8 frames [F, H, W, 3]:
    round((x + 1) / 2 * 255), clamped to [0, 255]."""
    if video.ndim != 4 or video.shape[0] != 3:
        hint = " (one video: pass video[i] of a batch)" if video.ndim == 5 else ""
        raise ValueError(f"video must be [3, F, H, W] in [-1, 1], got shape {tuple(video.shape)}{hint}")
    if not video.is_floating_point():
        raise ValueError(f"video must be a float tensor in [-1, 1], got {video.dtype}")
    pixels = ((video.detach().float() + 1) * 127.5).round().clamp_(0, 255).to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be uint8 [F >= 1, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")


# -------------------------------------------------------------------------------------------------- previews

SHEET_GAP = 4  # pixels of background between cells and around them
SHEET_LABEL = 12  # pixels of caption strip under each frame: its index in the video
SHEET_BACKGROUND = (40, 40, 40)


def contact_sheet(frames_uint8: np.ndarray, *, columns: int = 4, max_frames: int = 16) -> Image.Image:
    """min(F, max_frames) evenly spaced frames (first and last included), left to right then top to bottom,
    in a grid of `columns` (fewer when there are fewer frames). Each cell is the frame, unscaled, over a strip
    naming its index in the video ("#12"); cells sit SHEET_GAP pixels apart on a dark background, so frames read
    as frames: cell (r, c) starts at (GAP + c * (W + GAP), GAP + r * (H + LABEL + GAP))."""
    _check_frames(frames_uint8)
    if columns < 1 or max_frames < 1:
        raise ValueError(f"columns and max_frames must be >= 1, got columns={columns}, max_frames={max_frames}")
    num_frames, height, width = frames_uint8.shape[:3]
    count = min(num_frames, max_frames)
    picks = np.linspace(0, num_frames - 1, count).round().astype(int)
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    cell_w, cell_h = width + SHEET_GAP, height + SHEET_LABEL + SHEET_GAP
    sheet = Image.new("RGB", (SHEET_GAP + cols * cell_w, SHEET_GAP + rows * cell_h), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for cell, index in enumerate(picks):
        r, c = divmod(cell, cols)
        x, y = SHEET_GAP + c * cell_w, SHEET_GAP + r * cell_h
        sheet.paste(Image.fromarray(frames_uint8[index]), (x, y))
        draw.text((x + 1, y + height + 1), f"#{index}", fill=(220, 220, 220))
    return sheet


def write_gif(path: str | Path, frames_uint8: np.ndarray, *, fps: float) -> Path:
    """An animated GIF that loops forever, written atomically. GIF frame delays are whole centiseconds, so the
    playback rate is 100 / round(100 / fps) frames per second; colours are quantised to a 256-colour palette."""
    _check_frames(frames_uint8)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    images = [Image.fromarray(frame) for frame in frames_uint8]
    delay_ms = 10 * max(1, round(100 / fps))
    with atomic_file(path) as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=delay_ms, loop=0)
    return path


# ------------------------------------------------------------------------------------------------ save_video

@dataclass(frozen=True)
class SavedVideo:
    video: Path
    preview: Path | None
    metadata: Path
    sound: Path | None = None  # the .wav beside a video with sound


def save_video(path: str | Path, video: torch.Tensor, *, fps: float, metadata: dict,
               preview: str = "png", marker: Marker | None = None, ingredients=(),
               sound: tuple[torch.Tensor, int] | None = None) -> SavedVideo:
    """Write one generated video [3, F, H, W] in [-1, 1] to `path` (.mp4, H.264 crf 18, byte-reproducible: the
    same pixels give the same file on every machine with the same PyAV build), a preview beside it (`<stem>.png`
    contact sheet, `<stem>.gif`, or none with preview="none") and `<stem>.json` holding `metadata` (indent 2,
    sorted keys) and its `provenance` record. Parent folders are created; every file is written atomically.
    Arguments are checked before anything is written.

    Marked as AI-generated (wan_train.marking; `marker` None: every layer on, this installation's keys): the
    frames carry the invisible watermark (the preview shows them as the mp4 does), the mp4 the provenance record
    in its tags and a signed C2PA manifest, with `ingredients` (input images or clips) in its chain.

    sound (samples [T] or [C, T] in [-1, 1], sample rate): the mp4 gets it as an AAC track and `<stem>.wav` the
    same samples as 16-bit PCM, both carrying the sound's watermark with the video's output id; the JSON
    records its rate, channels and duration under "sound"."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"save_video writes an .mp4; got path {str(path)!r}")
    if preview not in PREVIEWS:
        raise ValueError(f"preview={preview!r} is not one of {', '.join(map(repr, PREVIEWS))}")
    marker = Marker() if marker is None else marker
    try:
        record = marker.record(metadata)
        metadata_json = json.dumps({**metadata, "provenance": record}, indent=2, sort_keys=True,
                                   allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata for {path} is not JSON-serialisable: {e}") from e
    frames = marker.watermark(to_uint8(video), record)
    samples = None
    if sound is not None:
        wave_CT, rate = sound
        wave_CT = wave_CT[None] if wave_CT.ndim == 1 else wave_CT
        samples = marker.watermark_sound(wave_CT.detach().float().cpu().numpy().astype(np.float32), int(rate),
                                         record)
        _check_sound(samples, int(rate))
        metadata_json = json.dumps({**json.loads(metadata_json), "sound": {
            "sample_rate": int(rate), "channels": samples.shape[0], "samples": samples.shape[1],
            "seconds": round(samples.shape[1] / int(rate), 6), "codec": "aac", "wav": path.with_suffix(".wav").name,
        }}, indent=2, sort_keys=True) + "\n"

    data = encode_mp4(pad_to_even(frames), fps=fps, reproducible=True,
                      tags=container_tags(record) if marker.enabled else None,
                      sound=None if samples is None else (samples, int(rate)))
    data = marker.sign(data, record, title=path.name, ingredients=ingredients)
    with atomic_file(path) as f:
        f.write(data)
    preview_path = None
    if preview == "png":
        preview_path = path.with_suffix(".png")
        with atomic_file(preview_path) as f:
            contact_sheet(frames).save(f, format="PNG")
    elif preview == "gif":
        preview_path = write_gif(path.with_suffix(".gif"), frames, fps=fps)
    sound_path = None
    if samples is not None:
        sound_path = path.with_suffix(".wav")
        with atomic_file(sound_path) as f:
            f.write(encode_wav(samples, int(rate)))
    metadata_path = path.with_suffix(".json")
    with atomic_file(metadata_path) as f:
        f.write(metadata_json.encode())
    return SavedVideo(video=path, preview=preview_path, metadata=metadata_path, sound=sound_path)
