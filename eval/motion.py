"""Motion of a flat-colour subject: does a generated video move the reference's subject the way its prompt says?
For the same synthetic subjects as eval.form (the quickstart's moving shapes), whose captions say "moves from left to
right" and the like.

- Each frame: the subject pixels (eval.form.subject_pixels, with the reference's subject colour) and their centroid.
- The displacement: the mean centroid over the last quarter of the frames minus that over the first quarter (frames
  without subject pixels are left out; none in either quarter: no displacement, both scores 0).
- `along`: the displacement along the prompted direction as a share of the frame's extent that way (the quickstart's
  held-out clips score +0.15 to +0.23 over 17 frames); negative is the wrong way.
- `across`: the size of the displacement across the prompted direction, in the same unit.

Colours are RGB in [0, 255]; videos [3, F, H, W] in [-1, 1] as everywhere in eval/."""

from __future__ import annotations

import re

import numpy as np
import torch

from eval.form import reference_mask, subject_pixels, to_rgb

# unit motion vectors in image coordinates (x right, y down) of the motion phrases in data_tools.make_demo's captions
DIRECTIONS = {"from left to right": (1, 0), "from right to left": (-1, 0),
              "from top to bottom": (0, 1), "from bottom to top": (0, -1)}
_PHRASE = re.compile("|".join(re.escape(phrase) for phrase in DIRECTIONS))


def prompted_direction(prompt: str, subject: str | None = None) -> tuple[int, int] | None:
    """The direction of the first motion phrase after `subject`'s first mention in `prompt` (after its start when
    `subject` is None); None when there is none ("@Video1 moves from left to right and @Video2 moves from right to
    left": @Video2's is right to left)."""
    start = 0 if subject is None else prompt.find(subject)
    if start < 0:
        return None
    found = _PHRASE.search(prompt, start)
    return None if found is None else DIRECTIONS[found.group(0)]


def centroids(video: torch.Tensor, colour: np.ndarray) -> np.ndarray:
    """float [F, 2]: the (x, y) centroid of each frame's subject pixels in pixels (NaN where there are none)."""
    rows = []
    for frame in to_rgb(video):
        ys, xs = np.nonzero(subject_pixels(frame, colour))
        rows.append((xs.mean(), ys.mean()) if len(xs) else (np.nan, np.nan))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def motion_scores(video: torch.Tensor, reference: torch.Tensor, direction: tuple[int, int]) -> dict[str, float]:
    """`along` and `across` (shares of the frame) of one video [3, F, H, W]'s subject, the one of the reference
    picture [3, H', W'] (both in [-1, 1]), against the prompted unit `direction` (x, y)."""
    colour, _ = reference_mask(to_rgb(reference))
    points = centroids(video, colour)
    quarter = max(1, len(points) // 4)
    first, last = points[:quarter], points[-quarter:]
    first, last = first[~np.isnan(first[:, 0])], last[~np.isnan(last[:, 0])]
    if not len(first) or not len(last):
        return {"along": 0.0, "across": 0.0}
    height, width = video.shape[-2:]
    dx, dy = (last.mean(0) - first.mean(0)) / (width, height)  # in shares of the frame's width and height
    ux, uy = direction
    return {"along": float(dx * ux + dy * uy), "across": float(abs(dx * uy - dy * ux))}
