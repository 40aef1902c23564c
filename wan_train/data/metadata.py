"""The `.json` member of a video sample in our shards: one schema, written by `data_tools.make_shards` and read
by the loader. Times are seconds in the stored video; `start`/`end` restrict sampling to a window of it (a
manifest row's segment), `shots` lists shot boundaries inside the window (from `data_tools.split_shots`)."""

import json
from dataclasses import asdict, dataclass, field

from wan_train.data.errors import SampleError

VIDEO_EXTENSIONS = ("mp4", "mov", "mkv", "webm", "avi", "m4v", "mpg", "mpeg", "ts", "flv", "gif")


@dataclass(frozen=True)
class ClipMeta:
    captions: tuple[str, ...]
    fps: float
    num_frames: int
    width: int
    height: int
    duration: float
    source: str
    start: float = 0.0
    end: float | None = None
    shots: tuple[tuple[float, float], ...] = field(default=())

    @property
    def window(self) -> tuple[float, float]:
        return self.start, self.duration if self.end is None else self.end

    def to_json(self) -> dict:
        out = asdict(self)
        captions = out.pop("captions")
        out["caption" if len(captions) == 1 else "captions"] = captions[0] if len(captions) == 1 else list(captions)
        out["shots"] = [list(s) for s in self.shots]
        if not out["shots"]:
            del out["shots"]
        if self.end is None:
            del out["end"]
        return out


def parse_meta(raw: bytes | str | dict, *, key: str) -> ClipMeta:
    """Validate a sample's metadata; anything wrong raises SampleError('bad_metadata') naming the sample."""
    try:
        data = json.loads(raw) if isinstance(raw, bytes | str) else raw
    except ValueError as error:
        raise SampleError("bad_metadata", f"{key}: .json is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise SampleError("bad_metadata", f"{key}: .json holds {type(data).__name__}, expected an object")
    captions = data.get("captions", data.get("caption"))
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise SampleError("bad_metadata", f"{key}: needs 'caption' (a string) or 'captions' (a non-empty list)")
    missing = [k for k in ("fps", "num_frames", "width", "height", "duration") if k not in data]
    if missing:
        raise SampleError("bad_metadata", f"{key}: .json lacks {missing}")
    try:
        meta = ClipMeta(
            captions=tuple(captions), fps=float(data["fps"]), num_frames=int(data["num_frames"]),
            width=int(data["width"]), height=int(data["height"]), duration=float(data["duration"]),
            source=str(data.get("source", key)), start=float(data.get("start", 0.0)),
            end=None if data.get("end") is None else float(data["end"]),
            shots=tuple((float(a), float(b)) for a, b in data.get("shots", ())),
        )
    except (TypeError, ValueError) as error:
        raise SampleError("bad_metadata", f"{key}: malformed field in .json ({error})") from None
    start, end = meta.window
    if meta.fps <= 0 or meta.num_frames <= 0 or meta.width <= 0 or meta.height <= 0:
        raise SampleError("bad_metadata", f"{key}: fps, num_frames, width and height must be positive")
    if not 0 <= start < end <= meta.duration + 1e-6:
        raise SampleError("bad_metadata",
                          f"{key}: window [{start}, {end}] s is outside the video (0..{meta.duration} s)")
    return meta
