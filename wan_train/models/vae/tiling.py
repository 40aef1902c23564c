"""Spatial tiling for VAE encode/decode, so memory stays bounded at 720p and above.

A video (or latent video) is cut into overlapping square tiles; each tile goes through the whole causal stream
on its own and the outputs are blended with linear ramps across each overlap, normalised by the summed weights
(a partition of unity, so a pointwise map is reproduced exactly). Tiles never see their neighbours, so results
differ from the untiled pass near tile borders; the overlap hides the seams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class Tiling:
    tile: int = 256  # tile side in pixels (a multiple of the spatial compression)
    overlap: int = 64  # pixels shared by neighbouring tiles
    auto_pixels: int = 1280 * 720  # frame area (pixels) from which encode/decode tile when not told

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"Tiling needs 0 <= overlap < tile; got tile={self.tile}, overlap={self.overlap}")

    def use_for(self, frame_hw: tuple[int, int], requested: bool | None) -> bool:
        if requested is not None:
            return requested
        h, w = frame_hw
        return h * w >= self.auto_pixels and max(h, w) > self.tile


def spans(size: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) of the tiles along one axis; the last tile is moved back to end at the border."""
    if size <= tile:
        return [(0, size)]
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return [(s, s + tile) for s in starts]


def ramps(axis_spans: list[tuple[int, int]], scale: float) -> list[torch.Tensor]:
    """Per-tile blend weights along one axis, in output units: 1 inside, rising across the overlap with the
    previous tile and falling across the overlap with the next one (the two ramps of an overlap sum to 1)."""
    out_spans = [(round(s * scale), round(e * scale)) for s, e in axis_spans]
    weights = []
    for i, (s, e) in enumerate(out_spans):
        w = torch.ones(e - s)
        if i > 0 and (ov := out_spans[i - 1][1] - s) > 0:
            w[:ov] = torch.minimum(w[:ov], (torch.arange(ov) + 0.5) / ov)
        if i + 1 < len(out_spans) and (ov := e - out_spans[i + 1][0]) > 0:
            w[-ov:] = torch.minimum(w[-ov:], (torch.arange(ov - 1, -1, -1) + 0.5) / ov)
        weights.append(w)
    return weights


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile: int, overlap: int,
          scale: float) -> torch.Tensor:
    """Apply ``fn`` ([..., h, w] -> [..., h * scale, w * scale]) tile by tile over the last two axes of ``x``
    and blend; float32 result. ``tile`` and ``overlap`` are in input units."""
    h, w = x.shape[-2:]
    rows, cols = spans(h, tile, tile - overlap), spans(w, tile, tile - overlap)
    row_w, col_w = ramps(rows, scale), ramps(cols, scale)
    out = total = None
    for (r0, r1), wr in zip(rows, row_w, strict=True):
        for (c0, c1), wc in zip(cols, col_w, strict=True):
            y = fn(x[..., r0:r1, c0:c1])
            if out is None:
                out = y.new_zeros((*y.shape[:-2], round(h * scale), round(w * scale)), dtype=torch.float32)
                total = torch.zeros(out.shape[-2:], device=y.device)
            weight = (wr[:, None] * wc[None, :]).to(y.device)
            rs, cs = slice(round(r0 * scale), round(r1 * scale)), slice(round(c0 * scale), round(c1 * scale))
            out[..., rs, cs] += y.float() * weight
            total[rs, cs] += weight
    return out / total
