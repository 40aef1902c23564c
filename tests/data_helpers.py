"""Real mp4 files whose frames say which frame they are (and sound whose pitch says when it is), and real
WebDataset shards of them."""

import io
import json
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from wan_train.data.metadata import ClipMeta
from wan_train.inference.outputs import encode_mp4


def frame_colour(index: int) -> tuple[int, int, int]:
    """Frame i is a solid colour whose channels are the base-8 digits of i (512 distinguishable frames), far
    enough apart (32 levels) to survive H.264, scaling and cropping."""
    return tuple(((index >> (3 * c)) % 8) * 32 + 16 for c in range(3))


def frame_index(frame: np.ndarray) -> int:
    """Inverse of frame_colour on a frame [H, W, 3] uint8 (as loaded) or [3, H, W] float in [-1, 1] (model input)."""
    frame = np.asarray(frame, dtype=np.float64)
    mean = frame.reshape(-1, 3).mean(0) if frame.shape[-1] == 3 else (frame.reshape(3, -1).mean(1) + 1) * 127.5
    digits = np.clip(np.round((mean - 16) / 32), 0, 7).astype(int)
    return int(digits[0] + 8 * digits[1] + 64 * digits[2])


def indexed_video(*, frames: int, width: int, height: int, fps: float) -> bytes:
    data = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        data[i] = frame_colour(i)
    return encode_mp4(data, fps=fps, gop=8)


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """samples: (key, {ext: bytes}) in order; a fixed mtime keeps shards byte-reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    return path


def video_sample(key: str, *, frames: int, width: int, height: int, fps: float, captions=("a clip",),
                 **meta_fields) -> tuple[str, dict[str, bytes]]:
    meta = ClipMeta(captions=tuple(captions), fps=fps, num_frames=frames, width=width, height=height,
                    duration=frames / fps, source=f"{key}.mp4", **meta_fields)
    video = indexed_video(frames=frames, width=width, height=height, fps=fps)
    return key, {"mp4": video, "json": json.dumps(meta.to_json()).encode()}


def slow_video(*, frames: int = 160, width: int = 640, height: int = 360, fps: float = 16.0) -> bytes:
    """A video that is genuinely slow to decode late in: noise (every block coded) with one keyframe, so frame i
    needs the i frames before it decoded (~1.3 s for the last of the defaults on one core)."""
    noise = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(frames + 1), "crf": "25", "preset": "ultrafast", "bf": "0"}
        for frame in noise:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


# --- sound ---------------------------------------------------------------------------------------------------------

def two_tones(seconds: float, *, rate: int, change: float, low: float = 440.0, high: float = 1000.0) -> np.ndarray:
    """float32 [n]: a sine at `low` Hz that turns into one at `high` Hz at `change` seconds (phase-continuous), at
    half amplitude: where a clip's sound was cut shows as where the pitch changes."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(np.where(t < change, low, high)) / rate
    return (0.5 * np.sin(phase)).astype(np.float32)


def pitch_change(sound: np.ndarray, *, rate: int, low: float = 440.0, high: float = 1000.0,
                 window: int = 320) -> float | None:
    """Seconds into `sound` where two_tones' pitch changes (the last window whose `low` energy wins, plus half a
    window; resolution 1/4 ms at 16 kHz); None if it never changes."""
    t = np.arange(window) / rate
    probes = np.stack([np.exp(-2j * np.pi * low * t), np.exp(-2j * np.pi * high * t)])
    starts = np.arange(0, sound.size - window, 4)
    windows = np.lib.stride_tricks.sliding_window_view(sound, window)[starts]
    low_wins = np.abs(windows @ probes[0]) > np.abs(windows @ probes[1])
    if low_wins.all() or not low_wins.any():
        return None
    return (starts[np.nonzero(low_wins)[0][-1]] + 4 + window / 2) / rate


def encode_sound_video(frames: np.ndarray, sound: np.ndarray | None, *, fps: float, rate: int,
                       layout: str = "stereo", codec: str = "aac", offset: int = 0) -> bytes:
    """An mp4 of H.264 `frames` and, with `sound` (float32 [n], every channel the same), a sound track as a
    camera or ffmpeg writes it (AAC's priming samples trimmed by the edit list; the first sample at `offset`
    samples of the track's clock)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.options = {"g": "8", "bf": "0", "preset": "ultrafast"}
        audio = None
        if sound is not None:
            audio = container.add_stream(codec, rate=rate)
            audio.layout = layout
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if audio is not None:
            channels = 2 if layout == "stereo" else 1
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.tile(sound, (channels, 1))), format="fltp",
                                               layout=layout)
            chunk.sample_rate, chunk.pts, chunk.time_base = rate, offset, Fraction(1, rate)
            container.mux(audio.encode(chunk))
            container.mux(audio.encode(None))
    return buffer.getvalue()


def sound_file(sound: np.ndarray, *, rate: int, fmt: str = "wav", layout: str = "mono") -> bytes:
    """The bytes of a .wav (16-bit PCM) or .flac of float32 [n] (every channel the same)."""
    codec = {"wav": "pcm_s16le", "flac": "flac"}[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout
        channels = 2 if layout == "stereo" else 1
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.tile(sound, (channels, 1))), format="fltp",
                                           layout=layout)
        chunk.sample_rate, chunk.pts = rate, 0
        for packet in stream.encode(chunk):
            container.mux(packet)
        container.mux(stream.encode(None))
    return buffer.getvalue()
