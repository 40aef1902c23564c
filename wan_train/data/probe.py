"""What a video file holds (frame rate, frame count, size), read with decord without decoding frames, and what
its sound (or a sound file) holds, decoded whole with PyAV (counted, and checked to decode)."""

import io
from dataclasses import dataclass
from pathlib import Path

import decord

from wan_train.data.decoder_child import video_origin
from wan_train.data.errors import SampleError
from wan_train.data.metadata import AudioMeta


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


def probe_audio(source: bytes | str | Path, *, name: str, member: str | None = None) -> AudioMeta | None:
    """The first sound stream of a video or sound file (`member`: the sound member's extension it will be stored
    as), decoded to the end: its rate, channels, codec and the seconds it covers after the video's frame 0 (a
    sound file's time 0 is the video's). None where it has no sound stream; SampleError('bad_audio') where it does
    not decode, or holds no samples."""
    import av

    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        with av.open(handle) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            origin = video_origin(container)
            first, samples = None, 0
            for frame in container.decode(stream):
                if first is None and frame.pts is not None:
                    first = float(frame.pts * frame.time_base) - origin
                samples += frame.samples
            context = stream.codec_context
            rate, channels, codec = context.sample_rate, context.channels, context.name
    except av.error.FFmpegError as error:
        raise SampleError("bad_audio", f"{name}: the sound does not decode ({error})") from None
    if not samples or rate <= 0 or channels <= 0:
        raise SampleError("bad_audio", f"{name}: the sound stream holds no samples ({channels} channels at {rate} Hz)")
    return AudioMeta(sample_rate=rate, channels=channels, codec=codec, duration=samples / rate,
                     start=round(first or 0.0, 6), member=member)

