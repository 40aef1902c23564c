"""THE bucket table: the (width, height, frames) shapes a batch can have. The raw-video loader, latent caching
and the cached-latent loader all assign buckets here, so a cached latent always has a shape training accepts.

Sizes are the Wan ones at stride 16 (VAE 8 x patch 2: 832x480, 1280x720, ...); models with a coarser stride
(TI2V-5B: VAE 16 x patch 2 = 32) snap each side down to a multiple of theirs (1280x720 -> 1280x704, the
official 5B size). Frame counts are 1 + 4k (the VAE's causal first frame, then 4 frames per latent)."""

import math
from dataclasses import dataclass, field

# (width, height), multiples of 16, areas within 3% of the 16:9 size of each resolution
# (96p, 144p and 240p are for CPU runs, tests and the quickstart's demo data.)
SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "96p": {"16:9": (176, 96), "9:16": (96, 176), "1:1": (128, 128), "4:3": (144, 112), "3:4": (112, 144)},
    "144p": {"16:9": (256, 144), "9:16": (144, 256), "1:1": (192, 192), "4:3": (224, 160), "3:4": (160, 224)},
    "240p": {"16:9": (416, 240), "9:16": (240, 416), "1:1": (320, 320), "4:3": (368, 272), "3:4": (272, 368)},
    "480p": {"16:9": (832, 480), "9:16": (480, 832), "1:1": (624, 624), "4:3": (720, 544), "3:4": (544, 720)},
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960), "4:3": (1104, 832), "3:4": (832, 1104)},
    "1080p": {"16:9": (1920, 1072), "9:16": (1072, 1920), "1:1": (1440, 1440), "4:3": (1664, 1248),
              "3:4": (1248, 1664)},
}
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4")


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int
    frames: int

    @property
    def key(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @classmethod
    def from_key(cls, key: str) -> "Bucket":
        width, height, frames = (int(v) for v in key.split("x"))
        return cls(width, height, frames)


def _ratio(name: str) -> float:
    w, h = name.split(":")
    return float(w) / float(h)


@dataclass(frozen=True)
class BucketTable:
    """Buckets = resolutions x aspect ratios x durations. `durations` are seconds at `fps`; each becomes the
    largest 1 + 4k frame count that fits in it (5 s at 16 fps -> 81, at 24 fps -> 121)."""

    resolutions: tuple[str, ...] = ("480p",)
    aspect_ratios: tuple[str, ...] = ASPECT_RATIOS
    durations: tuple[float, ...] = (5.0,)
    fps: float = 16.0
    spatial_stride: int = 16
    temporal_stride: int = 4
    frame_counts: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        for name, allowed in (("resolutions", SIZES), ("aspect_ratios", ASPECT_RATIOS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad or not getattr(self, name):
                raise ValueError(f"data.buckets.{name}: {bad or 'empty'} not in {list(allowed)}")
        if self.spatial_stride % 16 and 16 % self.spatial_stride:
            raise ValueError(f"data.buckets.spatial_stride={self.spatial_stride}: must divide or be a multiple of 16")
        frames = sorted({1 + self.temporal_stride * int(d * self.fps // self.temporal_stride) for d in self.durations})
        if not self.durations or frames[0] <= 1:
            raise ValueError(f"data.buckets.durations={list(self.durations)}: each must span at least "
                             f"{self.temporal_stride + 1} frames at {self.fps} fps")
        object.__setattr__(self, "frame_counts", tuple(frames))

    def size(self, resolution: str, aspect_ratio: str) -> tuple[int, int]:
        w, h = SIZES[resolution][aspect_ratio]
        s = self.spatial_stride
        return w // s * s, h // s * s

    @property
    def buckets(self) -> list[Bucket]:
        return sorted(Bucket(*self.size(r, a), f) for r in self.resolutions for a in self.aspect_ratios
                      for f in self.frame_counts)

    def aspect_of(self, width: int, height: int) -> str:
        """The table's aspect ratio nearest to width:height (in log space)."""
        return min(self.aspect_ratios, key=lambda a: abs(math.log(_ratio(a) * height / width)))

    def reaches(self, resolution: str, width: int, height: int) -> bool:
        """A width x height clip fills `resolution` at its nearest aspect ratio without upscaling (3% slack)."""
        return math.prod(self.size(resolution, self.aspect_of(width, height))) <= width * height * 1.03

    def assign(self, width: int, height: int, seconds: float) -> Bucket | None:
        """The bucket for a clip of `width` x `height` with `seconds` of usable video, or None if it is shorter
        than the shortest frame bucket. The aspect ratio is the nearest in log space; the resolution is the
        largest that needs no upscaling (the smallest one when every one would)."""
        aspect = self.aspect_of(width, height)
        fitting = [r for r in self.resolutions if self.reaches(r, width, height)]
        resolution = max(fitting, key=lambda r: math.prod(self.size(r, aspect))) if fitting else min(
            self.resolutions, key=lambda r: math.prod(self.size(r, aspect)))
        # frames k / fps for k < F must lie inside the clip: (F - 1) / fps < seconds
        usable = [f for f in self.frame_counts if (f - 1) / self.fps < seconds - 1e-9]
        if not usable:
            return None
        return Bucket(*self.size(resolution, aspect), max(usable))
