"""Form of a flat-colour subject: does a generated video draw the reference's shape as one solid shape, or only
scatter its colour? For synthetic subjects of one colour on a plain background (the quickstart's moving shapes,
data_tools.make_demo), where an embedding similarity (CLIP-I / DINO-I) cannot tell the two apart.

- The reference: its subject colour is the crop's centre (a reference crop is centred on the subject's box) and its
  mask the pixels within half the contrast to the nearest other colour of the crop (background or letterbox).
- Each generated frame: the background is the frame's median colour; the subject pixels are those within half of
  the subject-to-background contrast of the subject colour.
- `coherence`: the share of the frame's subject pixels in its largest 8-connected component (1: one solid shape;
  scattered colour: near 0; no subject pixels: 0).
- `shape_iou`: the IoU of that component with the reference's mask, both centred on their centroids and scaled to
  the same area (the reference crop is letterboxed to the frame, so sizes differ): 1 for the same shape, about 0.8
  for a square against a circle of the same area; 0 when the component covers less than `min_area` of the frame
  (a speck of colour is no shape, however square).
- `form` = coherence x shape_iou, averaged over frames.

Colours are RGB in [0, 255]; videos [3, F, H, W] in [-1, 1] as everywhere in eval/."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MIN_AREA = 0.01  # of the frame: the quickstart's small shapes cover 3%, one latent pixel (8 x 8) 0.2% at 144p
MIN_CONTRAST = 30.0  # RGB distance below which a subject cannot be told from its background
_FAR = 40.0  # reference pixels this far from the subject colour are "other" (background, letterbox)


def to_rgb(pixels: torch.Tensor) -> np.ndarray:
    """[3, ..., H, W] in [-1, 1] -> float [..., H, W, 3] in [0, 255]."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).movedim(0, -1).numpy()


def reference_mask(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subject colour [3], subject mask [H, W] bool) of a reference crop [H, W, 3]."""
    h, w, _ = reference.shape
    centre = reference[h // 2 - 2:h // 2 + 3, w // 2 - 2:w // 2 + 3].reshape(-1, 3)
    colour = np.median(centre, axis=0)
    distance = np.linalg.norm(reference - colour, axis=-1)
    far = distance[distance > _FAR]
    contrast = float(np.percentile(far, 10)) if far.size else float(distance.max())
    return colour, distance < max(contrast, MIN_CONTRAST) / 2


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool [H, W] mask (all False for an empty one)."""
    if not mask.any():
        return mask
    h, w = mask.shape
    inside = torch.from_numpy(mask)[None, None]
    # every pixel starts with its own label; each round a pixel takes its neighbourhood's largest label
    labels = torch.where(inside, torch.arange(1, h * w + 1, dtype=torch.float64).view(1, 1, h, w), 0.0)
    while True:
        grown = torch.where(inside, F.max_pool2d(labels, 3, stride=1, padding=1), 0.0)
        if torch.equal(grown, labels):
            break
        labels = grown
    values, counts = labels[inside].unique(return_counts=True)
    return (labels == values[counts.argmax()])[0, 0].numpy()


def shape_iou(mask: np.ndarray, reference: np.ndarray) -> float:
    """IoU of two bool masks after centring both on their centroids and scaling `reference` to `mask`'s area."""
    if not mask.any() or not reference.any():
        return 0.0
    points, ref_points = np.argwhere(mask), np.argwhere(reference)
    (my, mx), (ry, rx) = points.mean(0), ref_points.mean(0)
    scale = float(np.sqrt(len(ref_points) / len(points)))  # reference pixels per mask pixel, along each axis
    # the window around the mask's centroid that holds both shapes, in mask pixels
    extent = max(np.abs(points - (my, mx)).max(), np.abs(ref_points - (ry, rx)).max() / scale)
    offsets = np.arange(-int(np.ceil(extent)) - 1, int(np.ceil(extent)) + 2)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")

    def sample(m: np.ndarray, cy: float, cx: float, step: float) -> np.ndarray:
        y, x = np.rint(cy + dy * step).astype(int), np.rint(cx + dx * step).astype(int)
        valid = (y >= 0) & (y < m.shape[0]) & (x >= 0) & (x < m.shape[1])
        return valid & m[y.clip(0, m.shape[0] - 1), x.clip(0, m.shape[1] - 1)]

    a, b = sample(mask, my, mx, 1.0), sample(reference, ry, rx, scale)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def subject_pixels(frame: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixels of a frame [H, W, 3] within half of the subject-to-background contrast of the subject
    `colour` (the background is the frame's median colour)."""
    background = np.median(frame.reshape(-1, 3), axis=0)
    contrast = max(float(np.linalg.norm(colour - background)), MIN_CONTRAST)
    return np.linalg.norm(frame - colour, axis=-1) < contrast / 2


def frame_form(frame: np.ndarray, colour: np.ndarray, reference: np.ndarray, *,
               min_area: float = MIN_AREA) -> dict[str, float]:
    """coherence, shape_iou and form of one frame [H, W, 3] for a subject `colour` and its reference mask."""
    subject = subject_pixels(frame, colour)
    if not subject.any():
        return {"coherence": 0.0, "shape_iou": 0.0, "form": 0.0}
    component = largest_component(subject)
    coherence = float(component.sum() / subject.sum())
    iou = shape_iou(component, reference) if component.sum() >= min_area * component.size else 0.0
    return {"coherence": coherence, "shape_iou": iou, "form": coherence * iou}


def form_scores(video: torch.Tensor, reference: torch.Tensor, *, min_area: float = MIN_AREA) -> dict[str, float]:
    """Frame means of coherence, shape_iou and form for one video [3, F, H, W] and its reference picture
    [3, H', W'] (both in [-1, 1])."""
    colour, mask = reference_mask(to_rgb(reference))
    rows = [frame_form(frame, colour, mask, min_area=min_area) for frame in to_rgb(video)]
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
