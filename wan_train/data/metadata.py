"""The `.json` member of a video sample in our shards: one schema, written by `data_tools.make_shards` and read
by the loader. Times are seconds in the stored video; `start`/`end` restrict sampling to a window of it (a
manifest row's segment), `shots` lists shot boundaries inside the window (from `data_tools.split_shots`).
Optional `subjects` name what the captions show, for reference-to-video training (wan_train.data.references):
`[{"name": "a large red circle", "boxes": [[t, x0, y0, x1, y1], ...]}, ...]`, where `name` is the exact phrase
the captions use for the subject and `boxes` (optional) its bounding box at times t (seconds in the stored video),
corners as fractions of the width and height (0, 0 = top left).
Optional `shot_captions` (multi-shot training, wan_train.data.multishot): one caption per entry of `shots`, in the
same order, describing that shot alone; the `caption(s)` then describe the whole video."""

import json
import math
from dataclasses import asdict, dataclass, field

from wan_train.data.errors import SampleError

VIDEO_EXTENSIONS = ("mp4", "mov", "mkv", "webm", "avi", "m4v", "mpg", "mpeg", "ts", "flv", "gif")


Box = tuple[float, float, float, float, float]  # (t seconds, x0, y0, x1, y1), x / y in [0, 1] of width / height
SUBJECT_FIELDS = ("name", "boxes")


@dataclass(frozen=True)
class Subject:
    name: str  # the exact (case-sensitive) phrase naming the subject in the captions
    boxes: tuple[Box, ...] = ()

    def box_at(self, t: float) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1) of the box recorded nearest to time t (seconds); None without boxes."""
        if not self.boxes:
            return None
        return min(self.boxes, key=lambda box: abs(box[0] - t))[1:]

    def to_json(self) -> dict:
        return {"name": self.name, "boxes": [list(b) for b in self.boxes]} if self.boxes else {"name": self.name}


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
    subjects: tuple[Subject, ...] = field(default=())
    shot_captions: tuple[str, ...] = field(default=())  # aligned with `shots`: shot_captions[i] describes shots[i]

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
        out["subjects"] = [s.to_json() for s in self.subjects]
        if not out["subjects"]:
            del out["subjects"]
        out["shot_captions"] = list(self.shot_captions)
        if not out["shot_captions"]:
            del out["shot_captions"]
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
            subjects=_parse_subjects(data.get("subjects", []), key=key),
            shot_captions=_parse_shot_captions(data.get("shot_captions", []), key=key),
        )
    except (TypeError, ValueError) as error:
        raise SampleError("bad_metadata", f"{key}: malformed field in .json ({error})") from None
    start, end = meta.window
    if meta.fps <= 0 or meta.num_frames <= 0 or meta.width <= 0 or meta.height <= 0:
        raise SampleError("bad_metadata", f"{key}: fps, num_frames, width and height must be positive")
    if not 0 <= start < end <= meta.duration + 1e-6:
        raise SampleError("bad_metadata",
                          f"{key}: window [{start}, {end}] s is outside the video (0..{meta.duration} s)")
    if meta.shot_captions and len(meta.shot_captions) != len(meta.shots):
        raise SampleError("bad_metadata", f"{key}: {len(meta.shot_captions)} shot_captions for {len(meta.shots)} "
                                          "shots: needs one caption per entry of 'shots', in the same order")
    late = [b[0] for s in meta.subjects for b in s.boxes if b[0] > meta.duration + 1e-6]
    if late:
        raise SampleError("bad_metadata", f"{key}: subject boxes at t={late[0]} s, after the video's end "
                                          f"({meta.duration} s)")
    return meta


def _parse_shot_captions(raw, *, key: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise SampleError("bad_metadata", f"{key}: 'shot_captions' must be a list of strings, got {raw!r:.200}")
    return tuple(raw)


def _parse_subjects(raw, *, key: str) -> tuple[Subject, ...]:
    """The `subjects` list, checked: names non-empty and distinct (each tags its own phrase), boxes of five finite
    numbers with t >= 0 and 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1."""
    if not isinstance(raw, list):
        raise SampleError("bad_metadata", f"{key}: 'subjects' must be a list of {{'name', 'boxes'}} objects")
    subjects = []
    for i, item in enumerate(raw):
        where = f"{key}: subjects[{i}]"
        if not isinstance(item, dict) or set(item) - set(SUBJECT_FIELDS) or "name" not in item:
            raise SampleError("bad_metadata", f"{where} must be an object with 'name' and optional 'boxes', "
                                              f"got {item!r:.200}")
        name, boxes = item["name"], item.get("boxes", [])
        if not isinstance(name, str) or not name.strip():
            raise SampleError("bad_metadata", f"{where}.name must be a non-empty string, got {name!r}")
        if not isinstance(boxes, list):
            raise SampleError("bad_metadata", f"{where}.boxes must be a list of [t, x0, y0, x1, y1]")
        subjects.append(Subject(name=name, boxes=tuple(_parse_box(b, where=f"{where}.boxes[{j}]")
                                                         for j, b in enumerate(boxes))))
    names = [s.name for s in subjects]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SampleError("bad_metadata", f"{key}: subject names must be distinct, {repeated} repeat")
    return tuple(subjects)


def _parse_box(raw, *, where: str) -> Box:
    numbers = isinstance(raw, list) and len(raw) == 5 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in raw)
    if not numbers:
        raise SampleError("bad_metadata", f"{where} must be [t, x0, y0, x1, y1] (five finite numbers), got {raw!r}")
    t, x0, y0, x1, y1 = (float(v) for v in raw)
    if t < 0 or not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise SampleError("bad_metadata", f"{where}={raw}: needs t >= 0 s and 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1 "
                                          "(fractions of the width and height)")
    return t, x0, y0, x1, y1
