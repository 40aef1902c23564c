"""The `.json` member of a video sample in our shards: one schema, written by `data_tools.make_shards` and read
by the loader. Times are seconds in the stored video; `start`/`end` restrict sampling to a window of it (a
manifest row's segment), `shots` lists shot boundaries inside the window (from `data_tools.split_shots`).
Optional `subjects` name what the captions show, for reference-to-video training (wan_train.data.references):
`[{"name": "a large red circle", "boxes": [[t, x0, y0, x1, y1], ...]}, ...]`, where `name` is the exact phrase
the captions use for the subject and `boxes` (optional) its bounding box at times t (seconds in the stored video),
corners as fractions of the width and height (0, 0 = top left), and `speech` (optional) the stretches
`[[t0, t1], ...]` (seconds in the stored video) where that subject is heard, e.g. from speaker diarization, from
which an audio-video run cuts its reference voice (wan_train.data.voices).
Optional `shot_captions` (multi-shot training, wan_train.data.multishot): one caption per entry of `shots`, in the
same order, describing that shot alone; the `caption(s)` then describe the whole video.
Optional `audio`: what `data_tools.make_shards` found of the sample's sound (AudioMeta); absent where it found
none (or the shard predates it). The loader trusts the sound it decodes, not this record (wan_train.data.audio)."""

import json
import math
from dataclasses import asdict, dataclass, field

from wan_train.data.decoder_child import MAX_CHANNELS, MAX_RATE  # a sound stream's sane bounds
from wan_train.data.errors import SampleError

VIDEO_EXTENSIONS = ("mp4", "mov", "mkv", "webm", "avi", "m4v", "mpg", "mpeg", "ts", "flv", "gif")


Box = tuple[float, float, float, float, float]  # (t seconds, x0, y0, x1, y1), x / y in [0, 1] of width / height
SUBJECT_FIELDS = ("name", "boxes", "speech")


@dataclass(frozen=True)
class Subject:
    name: str  # the exact (case-sensitive) phrase naming the subject in the captions
    boxes: tuple[Box, ...] = ()
    speech: tuple[tuple[float, float], ...] = ()  # (t0, t1) seconds where the subject is heard

    def box_at(self, t: float) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1) of the box recorded nearest to time t (seconds); None without boxes."""
        if not self.boxes:
            return None
        return min(self.boxes, key=lambda box: abs(box[0] - t))[1:]

    def to_json(self) -> dict:
        out = {"name": self.name}
        if self.boxes:
            out["boxes"] = [list(b) for b in self.boxes]
        if self.speech:
            out["speech"] = [list(s) for s in self.speech]
        return out


@dataclass(frozen=True)
class AudioMeta:
    """A sample's sound: its first sound stream's rate, channels and codec, heard from `start` seconds after the
    video's frame 0 for `duration` seconds; `member` the extension of the sample's sound member ("wav", "flac"),
    None for the video's own track."""

    sample_rate: int
    channels: int
    codec: str
    duration: float
    start: float = 0.0
    member: str | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration

    def to_json(self) -> dict:
        out = asdict(self)
        if self.member is None:
            del out["member"]
        return out


AUDIO_FIELDS = ("sample_rate", "channels", "codec", "duration", "start", "member")


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
    audio: AudioMeta | None = None

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
        if self.audio is None:
            del out["audio"]
        else:
            out["audio"] = self.audio.to_json()
        return out


# sane ranges: anything outside is a broken or hostile .json, not a video (16384 px is the largest frame FFmpeg's
# H.264 / HEVC decoders accept; a day is longer than any training clip's source)
MAX_SIDE = 16384
MAX_FPS = 1000.0
MAX_DURATION = 86400.0
# duration vs num_frames / fps: other tools take the container's duration, which may run a little past the frames
DURATION_TOLERANCE = 0.05


def parse_meta(raw: bytes | str | dict, *, key: str) -> ClipMeta:
    """Validate a sample's metadata; anything wrong raises SampleError('bad_metadata') naming the sample and field.
    Numbers must be JSON numbers, finite and in range (no NaN / Infinity, which Python's json reads); captions
    that are only whitespace become empty (the unconditional prompt)."""
    try:
        data = json.loads(raw) if isinstance(raw, bytes | str) else raw
    except (ValueError, RecursionError) as error:
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
    number = _Numbers(data, key)
    fps = number.real("fps", low=0.0, high=MAX_FPS)
    num_frames = number.integer("num_frames", low=1, high=int(MAX_FPS * MAX_DURATION))
    width, height = number.integer("width", low=1, high=MAX_SIDE), number.integer("height", low=1, high=MAX_SIDE)
    duration = number.real("duration", low=0.0, high=MAX_DURATION)
    start = number.real("start", low=0.0, high=MAX_DURATION) if "start" in data else 0.0
    end = None if data.get("end") is None else number.real("end", low=0.0, high=MAX_DURATION)
    if duration > num_frames / fps * (1 + DURATION_TOLERANCE) + 1 / fps:
        raise SampleError("bad_metadata", f"{key}: duration {duration} s is longer than its {num_frames} frames at "
                                          f"{fps:g} fps ({num_frames / fps:g} s)")
    try:
        meta = ClipMeta(
            captions=tuple(c if c.strip() else "" for c in captions), fps=fps, num_frames=num_frames, width=width,
            height=height, duration=duration, source=str(data.get("source", key)), start=start, end=end,
            shots=_parse_shots(data.get("shots", []), key=key),
            subjects=_parse_subjects(data.get("subjects", []), key=key),
            shot_captions=_parse_shot_captions(data.get("shot_captions", []), key=key),
            audio=None if data.get("audio") is None else _parse_audio(data["audio"], key=key),
        )
    except (TypeError, ValueError) as error:
        raise SampleError("bad_metadata", f"{key}: malformed field in .json ({error})") from None
    start, end = meta.window
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


class _Numbers:
    """Fields of a sample's .json read as numbers: JSON numbers only (not strings or booleans), finite, in range."""

    def __init__(self, data: dict, key: str):
        self.data, self.key = data, key

    def real(self, name: str, *, low: float, high: float) -> float:
        """A finite number in (low, high] (low itself only for 'start' / 'end', which may be 0)."""
        value = self._number(name)
        inclusive = name in ("start", "end")
        if not (low <= value <= high if inclusive else low < value <= high):
            raise self._range(name, value, f"{'[' if inclusive else '('}{low:g}, {high:g}]")
        return float(value)

    def integer(self, name: str, *, low: int, high: int) -> int:
        value = self._number(name)
        if value != int(value):
            raise SampleError("bad_metadata", f"{self.key}: .json {name}={value!r} must be a whole number")
        if not low <= value <= high:
            raise self._range(name, value, f"[{low}, {high}]")
        return int(value)

    def _number(self, name: str) -> int | float:
        value = self.data[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SampleError("bad_metadata", f"{self.key}: .json {name}={value!r:.100} must be a finite number")
        return value

    def _range(self, name: str, value, allowed: str) -> SampleError:
        return SampleError("bad_metadata", f"{self.key}: .json {name}={value!r} is outside {allowed}")


def _parse_shots(raw, *, key: str) -> tuple[tuple[float, float], ...]:
    """[[start, end], ...] in seconds: pairs of finite numbers with 0 <= start < end."""
    if not isinstance(raw, list):
        raise SampleError("bad_metadata", f"{key}: 'shots' must be a list of [start, end] pairs, got {raw!r:.200}")
    shots = []
    for i, pair in enumerate(raw):
        ok = isinstance(pair, list) and len(pair) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
        if not ok or not 0 <= pair[0] < pair[1]:
            raise SampleError("bad_metadata", f"{key}: shots[{i}]={pair!r:.100} must be [start, end] seconds with "
                                              "0 <= start < end")
        shots.append((float(pair[0]), float(pair[1])))
    return tuple(shots)


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
                                              f"'speech', got {item!r:.200}")
        name, boxes, speech = item["name"], item.get("boxes", []), item.get("speech", [])
        if not isinstance(name, str) or not name.strip():
            raise SampleError("bad_metadata", f"{where}.name must be a non-empty string, got {name!r}")
        if not isinstance(boxes, list):
            raise SampleError("bad_metadata", f"{where}.boxes must be a list of [t, x0, y0, x1, y1]")
        if not isinstance(speech, list):
            raise SampleError("bad_metadata", f"{where}.speech must be a list of [t0, t1] (seconds)")
        subjects.append(Subject(name=name, boxes=tuple(_parse_box(b, where=f"{where}.boxes[{j}]")
                                                         for j, b in enumerate(boxes)),
                                speech=tuple(_parse_stretch(t, where=f"{where}.speech[{j}]")
                                             for j, t in enumerate(speech))))
    names = [s.name for s in subjects]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SampleError("bad_metadata", f"{key}: subject names must be distinct, {repeated} repeat")
    return tuple(subjects)


def _parse_stretch(raw, *, where: str) -> tuple[float, float]:
    numbers = isinstance(raw, list) and len(raw) == 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in raw)
    if not numbers or not 0 <= raw[0] < raw[1]:
        raise SampleError("bad_metadata", f"{where} must be [t0, t1] with 0 <= t0 < t1 (seconds), got {raw!r}")
    return float(raw[0]), float(raw[1])


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



def _parse_audio(raw, *, key: str) -> AudioMeta:
    """{"sample_rate", "channels", "codec", "duration", optional "start", "member"}, checked."""
    if not isinstance(raw, dict) or set(raw) - set(AUDIO_FIELDS) or not {"sample_rate", "channels", "codec",
                                                                           "duration"} <= set(raw):
        raise SampleError("bad_metadata", f"{key}: 'audio' must be an object with sample_rate, channels, codec, "
                                          f"duration and optional start, member; got {raw!r:.200}")
    number = _Numbers(raw, f"{key}: audio")
    codec, member = raw["codec"], raw.get("member")
    if not isinstance(codec, str) or not (member is None or isinstance(member, str)):
        raise SampleError("bad_metadata", f"{key}: audio codec / member must be strings")
    return AudioMeta(sample_rate=number.integer("sample_rate", low=1, high=MAX_RATE),
                     channels=number.integer("channels", low=1, high=MAX_CHANNELS), codec=codec,
                     duration=number.real("duration", low=0.0, high=MAX_DURATION),
                     start=number.real("start", low=-MAX_DURATION, high=MAX_DURATION) if "start" in raw else 0.0,
                     member=member)
