"""Real mp4 files whose frames say which frame they are, and real WebDataset shards of them."""

import io
import json
import tarfile
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
