"""Write real H.264 mp4 files with PyAV (demo data, tests, clip cutting)."""

import io
from pathlib import Path

import av
import numpy as np


# x264's bytes depend on its thread count (so on the CPU count), and its macroblock-tree rate control gave
# different bytes for the same frames in a few percent of encodes; one thread and mbtree=0 never did.
X264_REPRODUCIBLE = {"threads": "1", "mbtree": "0"}


def encode_mp4(frames: np.ndarray, *, fps: float, gop: int = 32, crf: int = 18, codec: str = "libx264",
               reproducible: bool = False) -> bytes:
    """uint8 frames [F, H, W, 3] (even H and W for yuv420p) -> the bytes of an mp4. `gop` is the keyframe
    interval, the random-access granularity of the decoder; `reproducible` gives the same bytes on every
    machine and run (slower: one encoder thread)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=_rate(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "crf": str(crf), "preset": "veryfast", "bf": "0",
                          **(X264_REPRODUCIBLE if reproducible else {})}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def write_mp4(path: str | Path, frames: np.ndarray, *, fps: float, **options) -> Path:
    path = Path(path)
    path.write_bytes(encode_mp4(frames, fps=fps, **options))
    return path


def _rate(fps: float):
    from fractions import Fraction
    return Fraction(fps).limit_denominator(1001)
