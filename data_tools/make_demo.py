"""A procedural demo dataset: one coloured shape moving across a plain background per clip, captioned from the
same parameters that drew it ("a large red circle moves from left to right on a dark blue background").

Clips are real H.264 mp4 in WebDataset shards laid out as `data_tools.make_shards` writes them
(DIR/shard-000000.tar ..., sample key %09d, members <key>.mp4 and <key>.json), so the whole data path -
decode, buckets, captions - can be exercised, and a tiny model can learn the content, without downloading
anything. Every 4th clip is portrait (width and height swapped) so aspect-ratio bucketing sees both.
Output is a pure function of the arguments: the same seed gives byte-identical shards (given the same PyAV build,
whose bundled x264 writes the bytes; encoded with encode_mp4(..., reproducible=True)).

Reference-to-video data (wan_train.data.references): --subjects writes each clip's `subjects` (the caption's phrase
for each shape and its true bounding box at every frame); --multi draws two shapes per clip, different in colour
and shape, each in its own half of the frame, moving in opposite directions ("a large red circle moves from left to
right and a small yellow square moves from right to left on a black background"), so references have two subjects
to tell apart.

Multi-shot data (wan_train.data.multishot): --shots cuts each clip into two shots of the same shape and colour, a hard
cut at frame frames // 2: a "wide" shot (the shape small) then a "close-up" (large) moving another way on another
background. The .json records both `shots` (seconds) and a `shot_captions` entry for each ("wide — a small red
circle moves from left to right on a black background"); the global caption names the shape ("a red circle").

    python -m data_tools.make_demo --output data/demo
    python -m data_tools.make_demo --output data/demo_r2v --multi --subjects
    python -m data_tools.make_demo --output data/stories --shots
"""

import argparse
import dataclasses
import json
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.common import add_tar_member, atomic_path, console, progress, summary
from data_tools.make_shards import shard_name
from wan_train.data.metadata import ClipMeta, Subject
from wan_train.inference.outputs import encode_mp4

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # RGB, saturated and far apart in hue so colour names stay unambiguous after H.264
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 210, 50), "green": (50, 190, 70),
    "blue": (50, 100, 235), "purple": (150, 70, 210), "white": (240, 240, 240),
}
BACKGROUNDS = {
    "black": (12, 12, 12), "dark blue": (20, 30, 85), "dark green": (20, 65, 35), "grey": (110, 110, 110),
    "beige": (225, 210, 170),
}
DIRECTIONS = {  # unit motion vector in image coordinates (x right, y down)
    "from left to right": (1, 0), "from right to left": (-1, 0),
    "from top to bottom": (0, 1), "from bottom to top": (0, -1),
}
# --character: one subject in every clip, named only by its trigger words in the captions (as character LoRA data
# is captioned), with a look the plain demo never shows (a shape and colour outside SHAPES and COLOURS)
CHARACTER = {"shape": "diamond", "colour": "pink", "size": "large"}
CHARACTER_COLOURS = {"pink": (250, 90, 190)}
SIZES = {"small": 0.13, "large": 0.2}  # radius of the equal-area circle, as a fraction of the shorter side
MIN_CONTRAST = 150.0  # least RGB distance between a shape's colour and its background
MIN_SIDE = 32  # px; below this the shapes have no room to move
PORTRAIT_EVERY = 4  # clip i is portrait when i % 4 == 3
BOX_DECIMALS = 5  # subject box coordinates in the .json (1e-5 of the side: sub-pixel up to 100k px)
SHOT_VIEWS = {"wide": "small", "close-up": "large"}  # --shots: each shot's view (its caption's prefix) and size


@dataclass(frozen=True)
class DemoClip:
    """Everything that decides one clip's pixels and caption."""
    shape: str
    colour: str
    background: str
    direction: str
    size: str
    offset: float  # where across the motion the path runs, 0..1 of the free room
    width: int
    height: int
    character: str | None = None  # the trigger words naming the subject (--character)
    # the band across the motion the path runs in, as fractions of the frame (--multi: one half per shape)
    lane: tuple[float, float] = (0.0, 1.0)
    partner: "DemoClip | None" = None  # --multi: the second shape (same background and frame size)
    scale: float = 1.0  # --shape-scale: every SIZES radius times this

    @property
    def subject(self) -> str:
        """The caption's phrase for this shape (the subject's name in --subjects metadata)."""
        return self.character or f"a {self.size} {self.colour} {self.shape}"

    @property
    def caption(self) -> str:
        if self.partner is None:
            return f"{self.subject} moves {self.direction} on a {self.background} background"
        return (f"{self.subject} moves {self.direction} and {self.partner.subject} moves {self.partner.direction} "
                f"on a {self.background} background")

    @property
    def shapes(self) -> tuple["DemoClip", ...]:
        """Every shape of the clip, in drawing order (the partner over the first)."""
        return (self,) if self.partner is None else (self, self.partner)


def demo_clip(*, seed: int, index: int, width: int, height: int, character: str | None = None,
              multi: bool = False, shape_scale: float = 1.0, path_offset: float | None = None) -> DemoClip:
    """The parameters of clip `index` (independent of how many clips are made). `width` x `height` is the
    landscape size; portrait clips swap them. With `character`, the subject is always the CHARACTER. With `multi`,
    the first shape keeps the plain clip's look, direction and size, in one half of the frame (_partner). With
    `path_offset`, every clip's (first) shape runs at that place across its motion instead of a random one (0..1 of
    the free room; 0.5: the frame's middle line), so the caption fixes the whole layout; the other draws are
    unchanged."""
    rng = np.random.default_rng([seed, index])
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    if character:
        colour, shape = CHARACTER["colour"], CHARACTER["shape"]
    backgrounds = [name for name, rgb in BACKGROUNDS.items() if _distance(rgb, _rgb(colour)) >= MIN_CONTRAST]
    if _portrait(index):
        width, height = height, width
    background, direction = str(rng.choice(backgrounds)), str(rng.choice(list(DIRECTIONS)))
    size = CHARACTER["size"] if character else str(rng.choice(list(SIZES)))
    offset = float(rng.uniform(0.0, 1.0))  # drawn also when fixed: every other draw stays the same
    clip = DemoClip(shape=shape, colour=colour, background=background, direction=direction, size=size,
                    offset=offset if path_offset is None else path_offset, width=width, height=height,
                    character=character or None, scale=shape_scale)
    return _partner(clip, rng) if multi else clip


def _partner(first: DemoClip, rng: np.random.Generator) -> DemoClip:
    """The first shape moved into one half of the frame (across its motion) and a second shape in the other half,
    unlike it in shape and colour (both far from the background and from each other), moving the opposite way:
    the two never overlap, so a crop around one shows that one."""
    background = BACKGROUNDS[first.background]
    colours = [c for c, rgb in COLOURS.items() if c != first.colour and _distance(rgb, background) >= MIN_CONTRAST
               and _distance(rgb, _rgb(first.colour)) >= MIN_CONTRAST]
    shapes = [s for s in SHAPES if s != first.shape]
    ux, uy = DIRECTIONS[first.direction]
    opposite = next(d for d, v in DIRECTIONS.items() if v == (-ux, -uy))
    colour, shape, size = str(rng.choice(colours)), str(rng.choice(shapes)), str(rng.choice(list(SIZES)))
    halves = [(0.0, 0.5), (0.5, 1.0)]
    mine = int(rng.integers(2))
    partner = DemoClip(shape=shape, colour=colour, background=first.background, direction=opposite, size=size,
                       offset=float(rng.uniform(0.0, 1.0)), width=first.width, height=first.height,
                       lane=halves[1 - mine], scale=first.scale)
    return dataclasses.replace(first, lane=halves[mine], partner=partner)


def shot_clips(*, seed: int, index: int, width: int, height: int, character: str | None = None,
               shape_scale: float = 1.0) -> tuple[DemoClip, DemoClip]:
    """--shots: the two shots of clip `index`, one per SHOT_VIEWS entry: the plain clip's shape, colour, background,
    direction and path, small; then the same shape and colour, large, moving another way on another background
    that also contrasts with it (drawn from their own generator, so the plain clip's draws are untouched)."""
    (wide, small), (close, large) = SHOT_VIEWS.items()
    first = dataclasses.replace(demo_clip(seed=seed, index=index, width=width, height=height, character=character,
                                          shape_scale=shape_scale), size=small)
    rng = np.random.default_rng([seed, index, 1])
    backgrounds = [name for name, rgb in BACKGROUNDS.items()
                   if name != first.background and _distance(rgb, _rgb(first.colour)) >= MIN_CONTRAST]
    directions = [d for d in DIRECTIONS if d != first.direction]
    second = dataclasses.replace(first, size=large, background=str(rng.choice(backgrounds)),
                                 direction=str(rng.choice(directions)), offset=float(rng.uniform(0.0, 1.0)))
    return first, second


def shot_caption(view: str, clip: DemoClip) -> str:
    return f"{view} — {clip.caption}"


def _rgb(colour: str) -> tuple[int, int, int]:
    return COLOURS[colour] if colour in COLOURS else CHARACTER_COLOURS[colour]


def _portrait(index: int) -> bool:
    return index % PORTRAIT_EVERY == PORTRAIT_EVERY - 1


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return float(np.linalg.norm(np.subtract(a, b)))


# ----------------------------------------------------------------------------------------------- drawing

def render(clip: DemoClip, *, frames: int) -> np.ndarray:
    """uint8 [F, H, W, 3]: the shape (--multi: each shape) moving at constant speed along a straight line, fully
    inside the frame from the first frame to the last, edges anti-aliased (1 px ramp) so sub-pixel motion stays
    smooth."""
    background = np.array(BACKGROUNDS[clip.background], dtype=np.float32)
    if clip.partner is not None:  # float blending, each shape over what is below it
        out = np.broadcast_to(background, (frames, clip.height, clip.width, 3))
        for shape in clip.shapes:
            alpha = _coverage(shape, frames=frames)[..., None]
            out = out + alpha * (np.array(_rgb(shape.colour), dtype=np.float32) - out)
        return np.rint(out).astype(np.uint8)
    # blend through a 256-entry palette: one gather per pixel instead of float RGB arithmetic
    colour = np.array(_rgb(clip.colour), dtype=np.float32)
    palette = np.rint(background + np.linspace(0, 1, 256, dtype=np.float32)[:, None] * (colour - background))
    return np.take(palette.astype(np.uint8), np.rint(_coverage(clip, frames=frames) * 255).astype(np.uint8), axis=0)


def _coverage(clip: DemoClip, *, frames: int) -> np.ndarray:
    """float32 [F, H, W] in [0, 1]: how much of each pixel the shape covers."""
    cx, cy = trajectory(clip, frames=frames)
    # offsets (px) of pixel centres from the shape's centre, kept separable: dx [F, 1, W], dy [F, H, 1]
    dx = np.arange(clip.width, dtype=np.float32)[None, None, :] + 0.5 - cx[:, None, None]
    dy = np.arange(clip.height, dtype=np.float32)[None, :, None] + 0.5 - cy[:, None, None]
    return np.clip(0.5 - _signed_distance(clip.shape, dx, dy, radius=_radius(clip)), 0.0, 1.0)


def boxes(clip: DemoClip, *, frames: int, fps: float) -> list[list[float]]:
    """The shape's bounding box at every frame: [t, x0, y0, x1, y1], t = i / fps seconds (when frame i is shown),
    corners as fractions of the width and height, clamped to the frame."""
    cx, cy = trajectory(clip, frames=frames)
    left, top, right, bottom = _bounds(clip.shape, _radius(clip))
    out = []
    for i in range(frames):
        corners = ((cx[i] - left) / clip.width, (cy[i] - top) / clip.height, (cx[i] + right) / clip.width,
                   (cy[i] + bottom) / clip.height)
        out.append([round(i / fps, BOX_DECIMALS), *(round(min(1.0, max(0.0, float(v))), BOX_DECIMALS)
                                                     for v in corners)])
    return out


def _bounds(shape: str, radius: float) -> tuple[float, float, float, float]:
    """How far the shape reaches (px) left, up, right and down of its centre; the triangle points up, its
    centroid 2/3 of the way from the apex (circumradius R above, R / 2 below, sqrt(3) R / 2 to each side)."""
    if shape == "triangle":
        r = _CIRCUMRADIUS * radius
        return np.sqrt(3) / 2 * r, r, np.sqrt(3) / 2 * r, r / 2
    reach = _extent(shape, radius)
    return reach, reach, reach, reach


def trajectory(clip: DemoClip, *, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 [F] x and y of the shape's centre (px): from one side's margin to the other's, `offset` of the way
    across its lane (a lane too narrow for the shape and margins holds it at the lane's middle)."""
    margin = _extent(clip.shape, _radius(clip)) + 2.0
    lo_x, hi_x, lo_y, hi_y = margin, clip.width - margin, margin, clip.height - margin
    ux, uy = DIRECTIONS[clip.direction]
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32) if frames > 1 else np.zeros(1, np.float32)
    across_x, across_y = (_across(clip, side, margin) for side in (clip.width, clip.height))
    cx = np.full(frames, across_x, np.float32) if ux == 0 else (lo_x + (hi_x - lo_x) * (t if ux > 0 else 1 - t))
    cy = np.full(frames, across_y, np.float32) if uy == 0 else (lo_y + (hi_y - lo_y) * (t if uy > 0 else 1 - t))
    return cx.astype(np.float32), cy.astype(np.float32)


def _across(clip: DemoClip, side: int, margin: float) -> float:
    """Where (px) along `side` a path across it runs: `offset` of the way through the lane's room."""
    lo, hi = clip.lane[0] * side + margin, clip.lane[1] * side - margin
    if hi < lo:
        lo = hi = (clip.lane[0] + clip.lane[1]) / 2 * side
    return lo + clip.offset * (hi - lo)


def _radius(clip: DemoClip) -> float:
    return SIZES[clip.size] * clip.scale * min(clip.width, clip.height)


def _extent(shape: str, radius: float) -> float:
    """How far the shape reaches from its centre along x or y (px)."""
    return {"circle": radius, "square": _HALF_SIDE * radius, "triangle": _CIRCUMRADIUS * radius,
            "diamond": _DIAMOND * radius}[shape]


# Equal areas for a given radius r, so 'small' and 'large' mean the same amount of colour for every shape:
# square side 2h with 4h^2 = pi r^2; equilateral triangle of circumradius R with (3 sqrt(3) / 4) R^2 = pi r^2.
_HALF_SIDE = float(np.sqrt(np.pi) / 2)
_CIRCUMRADIUS = float(np.sqrt(4 * np.pi / (3 * np.sqrt(3))))
_DIAMOND = float(np.sqrt(np.pi / 2))  # half-diagonal d of a square turned 45 degrees: area 2 d^2 = pi r^2
_TRIANGLE_NORMALS = np.array([[0.0, 1.0], [np.sqrt(3) / 2, -0.5], [-np.sqrt(3) / 2, -0.5]], dtype=np.float32)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, *, radius: float) -> np.ndarray:
    """Approximate distance (px) to the shape's edge, negative inside; exact near the edges, which is all the
    1 px anti-aliasing ramp needs."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - radius
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - _HALF_SIDE * radius
    if shape == "diamond":  # |x| + |y| = d; dividing by sqrt(2) makes it a distance
        return (np.abs(dx) + np.abs(dy) - _DIAMOND * radius) / np.sqrt(2)
    # triangle pointing up (y grows downwards): inside all three edges, each at the inradius R / 2 from the centroid
    edges = [nx * dx + ny * dy for nx, ny in _TRIANGLE_NORMALS]
    return np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - _CIRCUMRADIUS * radius / 2


# ----------------------------------------------------------------------------------------------- shards

def sample_members(index: int, *, seed: int, width: int, height: int, frames: int, fps: float,
                   character: str | None = None, subjects: bool = False, multi: bool = False,
                   shots: bool = False, shape_scale: float = 1.0, path_offset: float | None = None) -> dict[str, bytes]:
    """The tar members of sample `index`, as make_shards writes them: {"<key>.mp4": ..., "<key>.json": ...}."""
    if shots:
        return _shot_members(index, seed=seed, width=width, height=height, frames=frames, fps=fps,
                             character=character, shape_scale=shape_scale)
    clip = demo_clip(seed=seed, index=index, width=width, height=height, character=character, multi=multi,
                     shape_scale=shape_scale, path_offset=path_offset)
    video = encode_mp4(render(clip, frames=frames), fps=fps, reproducible=True)
    named = tuple(Subject(name=shape.subject, boxes=tuple(tuple(b) for b in boxes(shape, frames=frames, fps=fps)))
                  for shape in clip.shapes) if subjects else ()
    meta = ClipMeta(captions=(clip.caption,), fps=float(fps), num_frames=frames, width=clip.width,
                    height=clip.height, duration=frames / fps, source=f"make_demo:seed={seed}:index={index}",
                    subjects=named)
    return _members(index, video, meta)


def _shot_members(index: int, *, seed: int, width: int, height: int, frames: int, fps: float,
                  character: str | None, shape_scale: float) -> dict[str, bytes]:
    """--shots: the two shot_clips cut at frame frames // 2 (the first frame of the close-up), shown from
    cut / fps seconds."""
    first, second = shot_clips(seed=seed, index=index, width=width, height=height, character=character,
                               shape_scale=shape_scale)
    cut = frames // 2
    video = encode_mp4(np.concatenate([render(first, frames=cut), render(second, frames=frames - cut)]), fps=fps,
                       reproducible=True)
    cut_time, duration = cut / fps, frames / fps
    meta = ClipMeta(captions=(character or f"a {first.colour} {first.shape}",), fps=float(fps), num_frames=frames,
                    width=first.width, height=first.height, duration=duration,
                    source=f"make_demo:seed={seed}:index={index}", shots=((0.0, cut_time), (cut_time, duration)),
                    shot_captions=tuple(shot_caption(view, clip) for view, clip in zip(SHOT_VIEWS, (first, second),
                                                                                        strict=True)))
    return _members(index, video, meta)


def _members(index: int, video: bytes, meta: ClipMeta) -> dict[str, bytes]:
    key = f"{index:09d}"
    return {f"{key}.mp4": video, f"{key}.json": json.dumps(meta.to_json(), ensure_ascii=False).encode()}


def write_shard(path: Path, members: dict[str, bytes]) -> None:
    """A tar whose bytes depend only on the members (fixed mtime, owner and mode), written atomically."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            add_tar_member(tar, name, data)


def check_args(*, num_clips: int, width: int, height: int, frames: int, fps: float, shard_size: int,
               subjects: bool = False, multi: bool = False, shots: bool = False, shape_scale: float = 1.0,
               path_offset: float | None = None) -> None:
    problems = []
    if path_offset is not None and not 0.0 <= path_offset <= 1.0:
        problems.append(f"--path-offset must be within 0..1 (0.5: the middle line), got {path_offset}")
    if path_offset is not None and (shots or multi):
        problems.append("--path-offset applies to one-shape clips: not with --shots or --multi")
    if not 0 < shape_scale <= _max_scale(width, height):
        problems.append(f"--shape-scale must be > 0 and leave a large shape inside a {width}x{height} frame "
                        f"(at most {_max_scale(width, height):.2f}), got {shape_scale}")
    if shots and (subjects or multi):
        problems.append("--shots cannot be combined with --subjects or --multi")
    if shots and frames < 2:
        problems.append(f"--shots needs --frames >= 2 (a frame per shot at least), got {frames}")
    if num_clips < 1:
        problems.append(f"--num-clips must be >= 1, got {num_clips}")
    for flag, value in (("--width", width), ("--height", height)):
        if value < MIN_SIDE or value % 2:
            problems.append(f"{flag} must be even and >= {MIN_SIDE} (yuv420p, room to move), got {value}")
    if frames < 1:
        problems.append(f"--frames must be >= 1, got {frames}")
    if not fps > 0:
        problems.append(f"--fps must be > 0, got {fps}")
    if shard_size < 1:
        problems.append(f"--shard-size must be >= 1, got {shard_size}")
    if problems:
        raise ValueError("; ".join(problems))


def _max_scale(width: int, height: int) -> float:
    """The largest --shape-scale that leaves every large shape (and the 2 px margin) inside the frame."""
    side = min(width, height)
    return (side / 2 - 2.0) / (SIZES["large"] * side * max(_extent(s, 1.0) for s in (*SHAPES, "diamond")))


def make_demo(output: str | Path, *, num_clips: int, seed: int, width: int, height: int, frames: int, fps: float,
              shard_size: int, character: str | None = None, subjects: bool = False, multi: bool = False,
              shots: bool = False, shape_scale: float = 1.0, path_offset: float | None = None) -> dict:
    """Write ceil(num_clips / shard_size) shards into `output`; returns the summary."""
    check_args(num_clips=num_clips, width=width, height=height, frames=frames, fps=fps, shard_size=shard_size,
               subjects=subjects, multi=multi, shots=shots, shape_scale=shape_scale, path_offset=path_offset)
    output, began, written = Path(output), time.perf_counter(), []
    with progress() as bar:
        task = bar.add_task("clips", total=num_clips)
        for first in range(0, num_clips, shard_size):
            members = {}
            for index in range(first, min(first + shard_size, num_clips)):
                members |= sample_members(index, seed=seed, width=width, height=height, frames=frames, fps=fps,
                                          character=character, subjects=subjects, multi=multi, shots=shots,
                                          shape_scale=shape_scale, path_offset=path_offset)
                bar.advance(task)
            written.append(output / shard_name(len(written)))
            write_shard(written[-1], members)
    portrait = sum(_portrait(i) for i in range(num_clips)) if width != height else 0
    return {"clips": num_clips, "shards": len(written), "landscape": num_clips - portrait, "portrait": portrait,
            "subjects": num_clips * (2 if multi else 1) if subjects else 0,
            "bytes": sum(p.stat().st_size for p in written), "seconds": time.perf_counter() - began,
            "output": str(output), "stale": sorted(p.name for p in output.glob("*.tar") if p not in written)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_tools.make_demo", description=__doc__,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="folder for the shards")
    parser.add_argument("--num-clips", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--width", type=int, default=256, help="px of landscape clips (portrait ones swap); "
                        "256x144 is the 144p 16:9 bucket")
    parser.add_argument("--height", type=int, default=144, help="px of landscape clips (portrait ones swap)")
    parser.add_argument("--frames", type=int, default=49, help="frames per clip")
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--shard-size", type=int, default=16, help="clips per shard")
    parser.add_argument("--shape-scale", type=float, default=1.0,
                        help="every shape's size times this (the quickstart's demo: 1.75, shapes 12-22%% of the frame)")
    parser.add_argument("--path-offset", type=float, default=None, metavar="0..1",
                        help="where across its motion every shape's path runs, as a share of the free room (0.5: the "
                             "middle line; default: random per clip): with whole-path clips the caption then fixes "
                             "the layout")
    parser.add_argument("--character", default=None, metavar="TRIGGER",
                        help="every clip shows one subject (a large pink diamond) captioned only by these trigger "
                             "words, e.g. 'zxq mascot': data for a character LoRA")
    parser.add_argument("--subjects", action="store_true",
                        help="write each clip's subjects (the caption's phrase for each shape and its bounding box at "
                             "every frame) into its .json: data for reference-to-video training (data.references)")
    parser.add_argument("--multi", action="store_true",
                        help="two shapes per clip, different in colour and shape, each in its own half of the frame, "
                             "moving opposite ways; with --subjects, two subjects per clip")
    parser.add_argument("--shots", action="store_true",
                        help="two shots per clip, cut at frame FRAMES // 2: the shape small ('wide'), then large "
                             "('close-up') moving another way on another background; writes each shot's time range "
                             "and caption: data for multi-shot training (data.shots)")
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    output = args.pop("output")
    try:
        check_args(**{k: v for k, v in args.items() if k not in ("seed", "character")})
    except ValueError as error:
        parser.error(str(error))  # exits with status 2
    result = make_demo(output, **args)
    if result["stale"]:
        console.print(f"[yellow]{output} also holds {', '.join(result['stale'])} not written by this run[/]: "
                      "remove them before training on this folder (a folder of shards means all its *.tar)")
    summary(f"make_demo -> {output}", {
        "clips": result["clips"], "shards": result["shards"], "landscape": result["landscape"],
        "portrait": result["portrait"], "subjects": result["subjects"], "size": f"{result['bytes'] / 2**20:.1f} MiB",
        "time": f"{result['seconds']:.1f} s",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
