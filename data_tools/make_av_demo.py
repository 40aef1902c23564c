"""A procedural audio-video demo dataset: coloured shapes on a black background that flash at random moments, each
flash making a short beep whose pitch is the shape's colour's. Nothing in a clip's caption says when the flashes
come, so only attention between the towers of a twin-tower model (Ovi's fusion) can put each beep on its flash;
the caption names the colours, the shapes and how many times each flashes, and what the beeps sound like:

    a red square flashes twice on a black background <AUDCAP>a short low beep each time it flashes<ENDAUDCAP>
    a green circle flashes once and a blue triangle flashes twice on a black background <AUDCAP>a short middle
    beep each time the green circle flashes and a short high beep each time the blue triangle flashes<ENDAUDCAP>

The clip (defaults: 256x144, the quickstart's 144p 16:9 bucket, so the loader never rescales; 33 frames at 16 fps,
2.0625 s, one 33-frame bucket of data.durations=[2.0], so a clip is the whole video):
- Pictures: each shape sits still, dim (REST of its colour) between flashes; a flash lifts it to full colour at
  its onset frame, holds a frame, then fades back over three (FLASH). Onsets are whole frames (the sound starts
  exactly when the frame is shown), at least MIN_GAP frames apart over the whole clip (0.5 s: two latent frames of
  PixelSpace's groups of 4, 16 audio latents; a flash is over after 5), from frame FIRST_ONSET (frame 0 is a
  latent frame of its own) to the last frame where a whole flash still fits. 1-3 flashes per clip; a clip with
  two shapes (--two-shapes of them) has 2-3, each shape flashing at least once, never two at once.
- Scene "screen" (--scene screen, what train.py makes for data=av_demo): the same draws, but the whole screen lights
  up in the flashing colour (FLASH of it), black between flashes; the caption names the colours: "the screen
  flashes red twice <AUDCAP>a short low beep each time it flashes<ENDAUDCAP>". The classic flash-and-beep sync
  test pattern; it leaves the tiny quickstart-av model nothing to learn about where, only when and which colour.
- Sound: mono 16 kHz, exactly the clip's span (frames / fps s), digital silence but for the beeps. A beep is a
  sine at PITCHES[colour] (A4 440 Hz red, A5 880 Hz green, A6 1760 Hz blue: an octave apart, so MelSpace's
  smoothed mel-cepstra keep them far apart) for BEEP s, a 5 ms attack from its onset, an exponential decay (40 ms)
  and a 10 ms release to zero, peak AMPLITUDE. Silence rather than faint noise: noise made AAC encoding 3x slower
  and the files 5x bigger, and every bit of the sound latents' variance is then the beeps.
- Files: H.264 mp4 with the sound as its AAC track (wan_train.inference.outputs.encode_mp4), in WebDataset shards
  laid out as data_tools.make_shards writes them (DIR/shard-000000.tar ..., key %09d, members <key>.mp4 and
  <key>.json: ClipMeta with its `audio` record, plus `events`); --wav adds the lossless <key>.wav, which the
  loader then reads instead of the AAC track. --layout folder writes <key>.mp4, <key>.json (caption, events) and
  with --wav <key>.wav into a folder instead, for `python -m data_tools.make_shards --input DIR` to pack (which
  keeps the track, packs the .wav, and drops `events`: the folder's .json files keep them).
- Ground truth, for evaluation: the .json's `events`, in time order: [{"t": seconds, "frame": onset frame,
  "colour", "shape", "pitch": Hz, "box": [x0, y0, x1, y1] of the shape as fractions of the width and height}].

Output is a pure function of the arguments (clip i's draws depend on the seed and i only): the same seed gives
byte-identical shards, given the same PyAV build.

    python -m data_tools.make_av_demo --output data/av_demo --num-clips 256
    python -m data_tools.make_av_demo --output data/av_demo_val --num-clips 32 --seed 1
    python -m data_tools.make_av_demo --output raw_av/ --layout folder --wav && \\
        python -m data_tools.make_shards --input raw_av/ --output shards_av/
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.common import console, progress, summary, write_atomic
from data_tools.make_demo import BACKGROUNDS, COLOURS, SHAPES, MIN_SIDE, _extent, _signed_distance, write_shard
from data_tools.make_shards import shard_name
from wan_train.data.audio import SAMPLE_RATE, clip_samples
from wan_train.data.metadata import ClipMeta
from wan_train.data.probe import probe_audio
from wan_train.inference.outputs import encode_mp4, encode_wav

PITCHES = {"red": 440.0, "green": 880.0, "blue": 1760.0}  # Hz: A4, A5, A6
PITCH_WORDS = {"red": "low", "green": "middle", "blue": "high"}
BACKGROUND = "black"
COUNTS = {1: "once", 2: "twice", 3: "three times"}
REST = 0.3  # a shape's brightness between flashes: this fraction of its colour over the background
FLASH = (1.0, 1.0, 0.6, 0.3, 0.1)  # from the onset frame on: brightness above REST, as a fraction of (1 - REST)
FIRST_ONSET = 2  # frames; frame 0 is a latent frame of its own (the VAE's causal first frame)
MIN_GAP = 8  # frames between two onsets anywhere in the clip
MAX_EVENTS = 3
RADIUS = 0.17  # a shape's equal-area circle radius, as a fraction of the shorter side
BEEP, ATTACK, DECAY, RELEASE = 0.12, 0.005, 0.04, 0.01  # seconds: length, attack, decay time constant, release
AMPLITUDE = 0.5
MIN_FRAMES = FIRST_ONSET + (MAX_EVENTS - 1) * MIN_GAP + len(FLASH)  # room for three flashes: 23
LAYOUTS = ("shards", "folder")


@dataclass(frozen=True)
class Shape:
    """One flashing shape: its look and its centre (px)."""
    colour: str
    shape: str
    cx: float
    cy: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Event:
    frame: int  # onset: the first bright frame; the beep starts when it is shown, frame / fps s
    shape: int  # which of the clip's shapes flashes


SCENES = ("shapes", "screen")  # what flashes: the shapes, or the whole screen in their colours (black between)


@dataclass(frozen=True)
class AVClip:
    """Everything that decides one clip's pictures, sound and caption."""
    shapes: tuple[Shape, ...]
    events: tuple[Event, ...]  # in time order
    width: int
    height: int
    scene: str = "shapes"

    def count(self, shape: int) -> int:
        return sum(e.shape == shape for e in self.events)

    @property
    def caption(self) -> str:
        """Ovi's convention: the picture, then the sound between <AUDCAP> and <ENDAUDCAP>."""
        if self.scene == "screen":
            picture = " and ".join(f"{s.colour} {COUNTS[self.count(i)]}" for i, s in enumerate(self.shapes))
            if len(self.shapes) == 1:
                sound = f"a short {PITCH_WORDS[self.shapes[0].colour]} beep each time it flashes"
            else:
                sound = " and ".join(f"a short {PITCH_WORDS[s.colour]} beep each time it flashes {s.colour}"
                                     for s in self.shapes)
            return f"the screen flashes {picture} <AUDCAP>{sound}<ENDAUDCAP>"
        if len(self.shapes) == 1:
            (only,) = self.shapes
            return (f"a {only.name} flashes {COUNTS[self.count(0)]} on a {BACKGROUND} background "
                    f"<AUDCAP>a short {PITCH_WORDS[only.colour]} beep each time it flashes<ENDAUDCAP>")
        picture = " and ".join(f"a {s.name} flashes {COUNTS[self.count(i)]}" for i, s in enumerate(self.shapes))
        sound = " and ".join(f"a short {PITCH_WORDS[s.colour]} beep each time the {s.name} flashes"
                             for s in self.shapes)
        return f"{picture} on a {BACKGROUND} background <AUDCAP>{sound}<ENDAUDCAP>"


def radius(width: int, height: int) -> float:
    return RADIUS * min(width, height)


def av_clip(*, seed: int, index: int, width: int, height: int, frames: int, two_shapes: float,
            scene: str = "shapes") -> AVClip:
    """The parameters of clip `index` (independent of how many clips are made): with probability `two_shapes` two
    shapes of different colours, one in each half of the frame along its longer side, else one anywhere. scene
    "screen" draws the same and flashes the whole screen in the shapes' colours instead."""
    rng = np.random.default_rng([seed, index])
    pair = bool(rng.random() < two_shapes)
    colours = rng.permutation(list(PITCHES))[:2 if pair else 1]
    halves = [(0.0, 0.5), (0.5, 1.0)] if pair else [(0.0, 1.0)]
    shapes = tuple(_placed(str(colour), str(rng.choice(SHAPES)), lane, rng, width=width, height=height)
                   for colour, lane in zip(colours, halves, strict=True))
    count = int(rng.integers(2, MAX_EVENTS + 1)) if pair else int(rng.integers(1, MAX_EVENTS + 1))
    onsets = onset_frames(rng, count=count, frames=frames)
    owners = [0, 1, *rng.integers(0, 2, count - 2).tolist()] if pair else [0] * count
    owners = rng.permutation(owners).tolist()
    events = tuple(Event(frame=f, shape=int(s)) for f, s in zip(onsets, owners, strict=True))
    return AVClip(shapes=shapes, events=events, width=width, height=height, scene=scene)


def _placed(colour: str, shape: str, lane: tuple[float, float], rng: np.random.Generator, *, width: int,
            height: int) -> Shape:
    """A shape at a random place inside its lane (a band of the longer side) with a 2 px margin."""
    margin = _extent(shape, radius(width, height)) + 2.0
    long_side, short_side = max(width, height), min(width, height)
    along = rng.uniform(lane[0] * long_side + margin, lane[1] * long_side - margin)
    across = rng.uniform(margin, short_side - margin)
    cx, cy = (along, across) if width >= height else (across, along)
    return Shape(colour=colour, shape=shape, cx=float(cx), cy=float(cy))


def onset_frames(rng: np.random.Generator, *, count: int, frames: int) -> list[int]:
    """`count` onset frames in [FIRST_ONSET, last_onset(frames)], each pair at least MIN_GAP apart, uniform over
    all such sets: `count` distinct values from the range shrunk by the gaps, then the gaps put back."""
    room = last_onset(frames) - FIRST_ONSET + 1 - (count - 1) * (MIN_GAP - 1)
    picks = np.sort(rng.choice(room, size=count, replace=False))
    return [int(FIRST_ONSET + p + i * (MIN_GAP - 1)) for i, p in enumerate(picks)]


def last_onset(frames: int) -> int:
    """The last onset whose whole flash is inside the clip."""
    return frames - len(FLASH)


# ----------------------------------------------------------------------------------------------- pictures

def brightness(clip: AVClip, shape: int, *, frames: int) -> np.ndarray:
    """float32 [F]: how much of its colour shape `shape` shows at each frame (REST .. 1)."""
    lift = np.zeros(frames, np.float32)
    for event in clip.events:
        if event.shape == shape:
            span = slice(event.frame, min(frames, event.frame + len(FLASH)))
            lift[span] = np.maximum(lift[span], FLASH[:span.stop - span.start])
    return REST + (1.0 - REST) * lift


def coverage(shape: Shape, *, width: int, height: int) -> np.ndarray:
    """float32 [H, W] in [0, 1]: how much of each pixel the shape covers (1 px anti-aliased edge)."""
    dx = np.arange(width, dtype=np.float32)[None, :] + 0.5 - shape.cx
    dy = np.arange(height, dtype=np.float32)[:, None] + 0.5 - shape.cy
    return np.clip(0.5 - _signed_distance(shape.shape, dx, dy, radius=radius(width, height)), 0.0, 1.0)


def box(shape: Shape, *, width: int, height: int) -> list[float]:
    """[x0, y0, x1, y1] of the shape's square around its centre (its reach along x and y), as fractions."""
    reach = _extent(shape.shape, radius(width, height))
    corners = (shape.cx - reach) / width, (shape.cy - reach) / height, (shape.cx + reach) / width, \
        (shape.cy + reach) / height
    return [round(min(1.0, max(0.0, float(v))), 5) for v in corners]


def render(clip: AVClip, *, frames: int) -> np.ndarray:
    """uint8 [F, H, W, 3]: each shape at its brightness over the black background (the shapes never overlap); scene
    "screen": the whole frame in the flashing colour, black between flashes (flashes never overlap)."""
    background = np.array(BACKGROUNDS[BACKGROUND], np.float32)
    if clip.scene == "screen":
        level = np.zeros((frames, 3), np.float32)
        for i, shape in enumerate(clip.shapes):
            lift = (brightness(clip, i, frames=frames) - REST) / (1.0 - REST)
            level += lift[:, None] * (np.array(COLOURS[shape.colour], np.float32) - background)
        pixels = np.rint(np.clip(background + level, 0, 255)).astype(np.uint8)
        return np.broadcast_to(pixels[:, None, None, :], (frames, clip.height, clip.width, 3)).copy()
    plain = np.empty((clip.height, clip.width, 3), np.uint8)
    plain[:] = background.astype(np.uint8)
    out = np.repeat(plain[None], frames, axis=0)  # a 3-vector broadcast over every frame is 20x slower
    for i, shape in enumerate(clip.shapes):  # float arithmetic inside each shape's box only
        alpha = coverage(shape, width=clip.width, height=clip.height)
        ys, xs = np.nonzero(alpha)
        rows, cols = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        level = brightness(clip, i, frames=frames)[:, None, None, None] * alpha[rows, cols, None]
        out[:, rows, cols] = np.rint(background + level * (np.array(COLOURS[shape.colour], np.float32)
                                                           - background)).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------------------------- sound

def beep(pitch: float, *, rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [BEEP * rate]: a sine at `pitch` Hz starting at phase 0, under the attack / decay / release
    envelope, peak AMPLITUDE."""
    t = np.arange(round(BEEP * rate)) / rate
    envelope = np.minimum(t / ATTACK, 1.0) * np.exp(-np.maximum(t - ATTACK, 0.0) / DECAY)
    envelope *= np.clip((BEEP - t) / RELEASE, 0.0, 1.0)
    return (AMPLITUDE * envelope * np.sin(2 * np.pi * pitch * t)).astype(np.float32)


def sound(clip: AVClip, *, frames: int, fps: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [clip_samples(frames)]: silence with each event's beep from sample round(frame / fps * rate)."""
    out = np.zeros(clip_samples(frames, fps=fps, rate=rate), np.float32)
    for event in clip.events:
        wave = beep(PITCHES[clip.shapes[event.shape].colour], rate=rate)
        start = round(event.frame / fps * rate)
        out[start:start + wave.size] += wave[:out.size - start]
    return out


def events_json(clip: AVClip, *, fps: float) -> list[dict]:
    """The ground truth of the .json's `events` (see the module docstring)."""
    out = []
    for event in clip.events:
        shape = clip.shapes[event.shape]
        screen = clip.scene == "screen"
        out.append({"t": round(event.frame / fps, 6), "frame": event.frame, "colour": shape.colour,
                    "shape": "screen" if screen else shape.shape, "pitch": PITCHES[shape.colour],
                    "box": [0.0, 0.0, 1.0, 1.0] if screen else box(shape, width=clip.width, height=clip.height)})
    return out


# ----------------------------------------------------------------------------------------------- files

def sample_members(index: int, *, seed: int, width: int, height: int, frames: int, fps: float, two_shapes: float,
                   wav: bool = False, layout: str = "shards", scene: str = "shapes") -> dict[str, bytes]:
    """The files of sample `index`, by name: <key>.mp4 (H.264 + the AAC track), <key>.json and with `wav`
    <key>.wav. For shards the .json is the ClipMeta make_shards would write (its `audio` probed from the sound the
    loader will read) plus `events`; for a folder it is what make_shards reads beside a video (caption) plus
    `events`."""
    clip = av_clip(seed=seed, index=index, width=width, height=height, frames=frames, two_shapes=two_shapes,
                   scene=scene)
    wave = sound(clip, frames=frames, fps=fps)[None]  # [1, T]
    key = f"{index:09d}"
    members = {f"{key}.mp4": encode_mp4(render(clip, frames=frames), fps=fps, reproducible=True,
                                        sound=(wave, SAMPLE_RATE))}
    if wav:
        members[f"{key}.wav"] = encode_wav(wave, SAMPLE_RATE)
    events = events_json(clip, fps=fps)
    if layout == "folder":
        meta = {"caption": clip.caption, "events": events}
    else:
        heard = members[f"{key}.wav"] if wav else members[f"{key}.mp4"]
        audio = probe_audio(heard, name=key, member="wav" if wav else None)
        meta = ClipMeta(captions=(clip.caption,), fps=float(fps), num_frames=frames, width=width, height=height,
                        duration=frames / fps, source=f"make_av_demo:seed={seed}:index={index}",
                        audio=audio).to_json() | {"events": events}
    members[f"{key}.json"] = json.dumps(meta, ensure_ascii=False).encode()
    return dict(sorted(members.items(), key=lambda item: item[0].endswith(".json")))  # the .json last


def check_args(*, num_clips: int, width: int, height: int, frames: int, fps: float, shard_size: int,
               two_shapes: float, layout: str = "shards", scene: str = "shapes") -> None:
    problems = []
    if scene not in SCENES:
        problems.append(f"--scene must be one of {list(SCENES)}, got {scene!r}")
    if num_clips < 1:
        problems.append(f"--num-clips must be >= 1, got {num_clips}")
    for flag, value in (("--width", width), ("--height", height)):
        if value < MIN_SIDE or value % 2:
            problems.append(f"{flag} must be even and >= {MIN_SIDE} (yuv420p, room for two shapes), got {value}")
    if frames < MIN_FRAMES:
        problems.append(f"--frames must be >= {MIN_FRAMES} (three flashes {MIN_GAP} frames apart from frame "
                        f"{FIRST_ONSET}, each {len(FLASH)} frames long), got {frames}")
    if not 0 < fps <= len(FLASH) / BEEP:
        problems.append(f"--fps must be in (0, {len(FLASH) / BEEP:.1f}] (a {BEEP * 1000:.0f} ms beep must end "
                        f"within its flash's {len(FLASH)} frames, so inside the clip), got {fps}")
    if shard_size < 1:
        problems.append(f"--shard-size must be >= 1, got {shard_size}")
    if not 0 <= two_shapes <= 1:
        problems.append(f"--two-shapes must be a probability in [0, 1], got {two_shapes}")
    if layout not in LAYOUTS:
        problems.append(f"--layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if problems:
        raise ValueError("; ".join(problems))


def make_av_demo(output: str | Path, *, num_clips: int, seed: int, width: int = 256, height: int = 144,
                 frames: int = 33, fps: float = 16.0, shard_size: int = 32, two_shapes: float = 0.5,
                 wav: bool = False, layout: str = "shards", scene: str = "shapes") -> dict:
    """Write ceil(num_clips / shard_size) shards (or, layout="folder", the clips' files) into `output`; returns
    the summary."""
    check_args(num_clips=num_clips, width=width, height=height, frames=frames, fps=fps, shard_size=shard_size,
               two_shapes=two_shapes, layout=layout, scene=scene)
    output, began, written = Path(output), time.perf_counter(), []
    colours = dict.fromkeys(PITCHES, 0)
    pairs = 0
    with progress() as bar:
        task = bar.add_task("clips", total=num_clips)
        for first in range(0, num_clips, shard_size):
            members = {}
            for index in range(first, min(first + shard_size, num_clips)):
                files = sample_members(index, seed=seed, width=width, height=height, frames=frames, fps=fps,
                                       two_shapes=two_shapes, wav=wav, layout=layout, scene=scene)
                events = json.loads(files[f"{index:09d}.json"])["events"]
                pairs += len({e["colour"] for e in events}) == 2
                for event in events:
                    colours[event["colour"]] += 1
                members |= files
                bar.advance(task)
            if layout == "folder":
                for name, data in members.items():
                    written.append(output / name)
                    write_atomic(written[-1], data)
            else:
                written.append(output / shard_name(len(written)))
                write_shard(written[-1], members)
    pattern = "*.mp4" if layout == "folder" else "*.tar"
    return {"clips": num_clips, "files" if layout == "folder" else "shards": len(written), "two_shapes": pairs,
            "events": sum(colours.values()), "events_by_colour": colours,
            "bytes": sum(p.stat().st_size for p in written), "seconds": time.perf_counter() - began,
            "output": str(output), "stale": sorted(p.name for p in output.glob(pattern) if p not in written)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_tools.make_av_demo", description=__doc__,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="folder for the shards (or the clips' files)")
    parser.add_argument("--num-clips", "--clips", type=int, default=256, help="clips to make")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--width", type=int, default=256, help="px; 256x144 is the 144p 16:9 bucket")
    parser.add_argument("--height", type=int, default=144, help="px")
    parser.add_argument("--frames", type=int, default=33, help="frames per clip (1 + 4k: one bucket, whole clips)")
    parser.add_argument("--fps", type=float, default=16.0, help="frames per second (a flash's timing is in frames)")
    parser.add_argument("--shard-size", type=int, default=32, help="clips per shard")
    parser.add_argument("--two-shapes", type=float, default=0.5,
                        help="the fraction of clips with two shapes (different colours, so different pitches) "
                             "flashing at their own times: which beep comes when needs the picture too")
    parser.add_argument("--scene", choices=SCENES, default="shapes",
                        help="shapes: the shapes flash where they sit; screen: the whole screen flashes in their "
                             "colours, black between flashes (the classic flash-and-beep sync test; the tiny "
                             "quickstart-av model learns it within the CPU demo's budget)")
    parser.add_argument("--wav", action="store_true",
                        help="also store each clip's sound losslessly as <key>.wav (the loader then reads it "
                             "instead of the mp4's AAC track)")
    parser.add_argument("--layout", choices=LAYOUTS, default="shards",
                        help="shards: WebDataset shards ready for training; folder: <key>.mp4 / .json (/ .wav) "
                             "files for python -m data_tools.make_shards --input")
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    output = args.pop("output")
    try:
        check_args(**{k: v for k, v in args.items() if k not in ("seed", "wav")})
    except ValueError as error:
        parser.error(str(error))  # exits with status 2
    result = make_av_demo(output, **args)
    if result["stale"]:
        console.print(f"[yellow]{output} also holds {', '.join(result['stale'])} not written by this run[/]: "
                      "remove them before using this folder (all its files are read)")
    written = ("files", result["files"]) if args["layout"] == "folder" else ("shards", result["shards"])
    summary(f"make_av_demo -> {output}", {
        "clips": result["clips"], written[0]: written[1], "two shapes": result["two_shapes"],
        "events": result["events"], **{f"  {c} ({PITCHES[c]:g} Hz)": n for c, n in result["events_by_colour"].items()},
        "size": f"{result['bytes'] / 2**20:.1f} MiB", "time": f"{result['seconds']:.1f} s",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
