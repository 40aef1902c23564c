"""A procedural demo dataset: one coloured shape moving across a plain background per clip, captioned from the
same parameters that drew it ("a large red circle moves from left to right on a dark blue background").

Clips are real H.264 mp4 in WebDataset shards laid out as `data_tools.make_shards` writes them
(DIR/shard-000000.tar ..., sample key %09d, members <key>.mp4 and <key>.json), so the whole data path -
decode, buckets, captions - can be exercised, and a tiny model can learn the content, without downloading
anything. Every 4th clip is portrait (width and height swapped) so aspect-ratio bucketing sees both.
Output is a pure function of the arguments: the same seed gives byte-identical shards (given the same PyAV build,
whose bundled x264 writes the bytes; encoded with encode_mp4(..., reproducible=True)).

    python -m data_tools.make_demo --output data/demo
"""

import argparse
import json
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools.common import add_tar_member, atomic_path, console, progress, summary
from data_tools.make_shards import shard_name
from wan_train.data.metadata import ClipMeta
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

    @property
    def caption(self) -> str:
        subject = self.character or f"a {self.size} {self.colour} {self.shape}"
        return f"{subject} moves {self.direction} on a {self.background} background"


def demo_clip(*, seed: int, index: int, width: int, height: int, character: str | None = None) -> DemoClip:
    """The parameters of clip `index` (independent of how many clips are made). `width` x `height` is the
    landscape size; portrait clips swap them. With `character`, the subject is always the CHARACTER."""
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
    return DemoClip(shape=shape, colour=colour, background=background, direction=direction, size=size,
                    offset=float(rng.uniform(0.0, 1.0)), width=width, height=height, character=character or None)


def _rgb(colour: str) -> tuple[int, int, int]:
    return COLOURS[colour] if colour in COLOURS else CHARACTER_COLOURS[colour]


def _portrait(index: int) -> bool:
    return index % PORTRAIT_EVERY == PORTRAIT_EVERY - 1


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return float(np.linalg.norm(np.subtract(a, b)))


# ----------------------------------------------------------------------------------------------- drawing

def render(clip: DemoClip, *, frames: int) -> np.ndarray:
    """uint8 [F, H, W, 3]: the shape moving at constant speed along a straight line, fully inside the frame
    from the first frame to the last, edges anti-aliased (1 px ramp) so sub-pixel motion stays smooth."""
    cx, cy = trajectory(clip, frames=frames)
    # offsets (px) of pixel centres from the shape's centre, kept separable: dx [F, 1, W], dy [F, H, 1]
    dx = np.arange(clip.width, dtype=np.float32)[None, None, :] + 0.5 - cx[:, None, None]
    dy = np.arange(clip.height, dtype=np.float32)[None, :, None] + 0.5 - cy[:, None, None]
    coverage = np.clip(0.5 - _signed_distance(clip.shape, dx, dy, radius=_radius(clip)), 0.0, 1.0)
    # blend through a 256-entry palette: one gather per pixel instead of float RGB arithmetic
    background = np.array(BACKGROUNDS[clip.background], dtype=np.float32)
    colour = np.array(_rgb(clip.colour), dtype=np.float32)
    palette = np.rint(background + np.linspace(0, 1, 256, dtype=np.float32)[:, None] * (colour - background))
    return np.take(palette.astype(np.uint8), np.rint(coverage * 255).astype(np.uint8), axis=0)


def trajectory(clip: DemoClip, *, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 [F] x and y of the shape's centre (px): from one side's margin to the other's."""
    margin = _extent(clip.shape, _radius(clip)) + 2.0
    lo_x, hi_x, lo_y, hi_y = margin, clip.width - margin, margin, clip.height - margin
    ux, uy = DIRECTIONS[clip.direction]
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32) if frames > 1 else np.zeros(1, np.float32)
    across_x, across_y = lo_x + clip.offset * (hi_x - lo_x), lo_y + clip.offset * (hi_y - lo_y)
    cx = np.full(frames, across_x, np.float32) if ux == 0 else (lo_x + (hi_x - lo_x) * (t if ux > 0 else 1 - t))
    cy = np.full(frames, across_y, np.float32) if uy == 0 else (lo_y + (hi_y - lo_y) * (t if uy > 0 else 1 - t))
    return cx.astype(np.float32), cy.astype(np.float32)


def _radius(clip: DemoClip) -> float:
    return SIZES[clip.size] * min(clip.width, clip.height)


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
                   character: str | None = None) -> dict[str, bytes]:
    """The tar members of sample `index`, as make_shards writes them: {"<key>.mp4": ..., "<key>.json": ...}."""
    clip = demo_clip(seed=seed, index=index, width=width, height=height, character=character)
    video = encode_mp4(render(clip, frames=frames), fps=fps, reproducible=True)
    meta = ClipMeta(captions=(clip.caption,), fps=float(fps), num_frames=frames, width=clip.width,
                    height=clip.height, duration=frames / fps, source=f"make_demo:seed={seed}:index={index}")
    key = f"{index:09d}"
    return {f"{key}.mp4": video, f"{key}.json": json.dumps(meta.to_json(), ensure_ascii=False).encode()}


def write_shard(path: Path, members: dict[str, bytes]) -> None:
    """A tar whose bytes depend only on the members (fixed mtime, owner and mode), written atomically."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            add_tar_member(tar, name, data)


def check_args(*, num_clips: int, width: int, height: int, frames: int, fps: float, shard_size: int) -> None:
    problems = []
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


def make_demo(output: str | Path, *, num_clips: int, seed: int, width: int, height: int, frames: int, fps: float,
              shard_size: int, character: str | None = None) -> dict:
    """Write ceil(num_clips / shard_size) shards into `output`; returns the summary."""
    check_args(num_clips=num_clips, width=width, height=height, frames=frames, fps=fps, shard_size=shard_size)
    output, began, written = Path(output), time.perf_counter(), []
    with progress() as bar:
        task = bar.add_task("clips", total=num_clips)
        for first in range(0, num_clips, shard_size):
            members = {}
            for index in range(first, min(first + shard_size, num_clips)):
                members |= sample_members(index, seed=seed, width=width, height=height, frames=frames, fps=fps,
                                          character=character)
                bar.advance(task)
            written.append(output / shard_name(len(written)))
            write_shard(written[-1], members)
    portrait = sum(_portrait(i) for i in range(num_clips)) if width != height else 0
    return {"clips": num_clips, "shards": len(written), "landscape": num_clips - portrait, "portrait": portrait,
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
    parser.add_argument("--character", default=None, metavar="TRIGGER",
                        help="every clip shows one subject (a large pink diamond) captioned only by these trigger "
                             "words, e.g. 'zxq mascot': data for a character LoRA")
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
        "portrait": result["portrait"], "size": f"{result['bytes'] / 2**20:.1f} MiB",
        "time": f"{result['seconds']:.1f} s",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
