"""What a video file holds (frame rate, frame count, size), read with decord without decoding frames."""

import io
from dataclasses import dataclass
from pathlib import Path

import decord

from wan_train.data.errors import SampleError


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int
    width: int
    height: int

    @property
    def duration(self) -> float:
        """Seconds: frame i is shown over [i / fps, (i + 1) / fps)."""
        return self.num_frames / self.fps


def open_video(source: bytes | str | Path, *, name: str, width: int = -1, height: int = -1,
               num_threads: int = 1) -> "decord.VideoReader":
    """A decord reader over a file path or the bytes of a file (as stored in a shard). `width`/`height`
    other than -1 make the decoder scale every frame (swscale), which is far cheaper than resizing after."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        return decord.VideoReader(handle, width=width, height=height, num_threads=num_threads)
    except Exception as error:  # decord raises its own DECORDError or RuntimeError for unreadable input
        raise SampleError("undecodable", f"{name}: decord cannot open the video ({error})") from None


def probe_video(source: bytes | str | Path, *, name: str | None = None) -> VideoInfo:
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    reader = open_video(source, name=name)
    num_frames, fps = len(reader), float(reader.get_avg_fps())
    if num_frames <= 0 or not fps > 0:
        raise SampleError("undecodable", f"{name}: no video frames (frames={num_frames}, fps={fps})")
    height, width = reader[0].shape[:2]
    return VideoInfo(fps=fps, num_frames=num_frames, width=int(width), height=int(height))
