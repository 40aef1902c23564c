"""3D rotary position embedding of the Wan DiT (wan_arch.md §1.5).

Legend: L tokens, N heads, K head dim, J = K/2 rotation pairs; positions are (t, h, w) on the post-patch grid.

head_dim is split 44/42/42 (for K = 128) between the t, h and w axes; each axis rotates *adjacent* channel
pairs (2i, 2i+1) with frequencies theta^(-2j/d_axis). Angles are computed in float64 on the CPU, as the
official code does, and handed to the device once per grid as float32 cos/sin tables.
"""

from __future__ import annotations

import torch


class Rope3D:
    """Per-grid cos/sin tables, cached by (grid, device). Not an nn.Module: the tables are derived, never saved
    and never cast by ``model.to(dtype)``."""

    def __init__(self, *, split: tuple[int, int, int], theta: float, max_len: int) -> None:
        self.split = split
        self.max_len = max_len
        # omega_j = theta^(-2j / d_axis), j < d_axis / 2, one table per axis (float64)
        self.omegas = [theta ** -(torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d) for d in split]
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def angles(self, positions_L3: torch.Tensor) -> torch.Tensor:
        """float64 [L, J] rotation angles for integer (t, h, w) positions [L, 3]."""
        pos = positions_L3.to(torch.float64)
        return torch.cat([pos[:, a, None] * self.omegas[a][None, :] for a in range(3)], dim=1)

    def for_grid(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (cos, sin) [L, J] for the tokens of an (F, H, W) grid in row-major (f, h, w) order."""
        key = (*grid, str(device))
        if key not in self._cache:
            if max(grid) > self.max_len:
                raise ValueError(f"latent grid {grid} exceeds the RoPE table length {self.max_len} per axis")
            angles_LJ = self.angles(grid_positions(grid))
            self._cache[key] = (angles_LJ.cos().float().to(device), angles_LJ.sin().float().to(device))
        return self._cache[key]


def grid_positions(grid: tuple[int, int, int]) -> torch.Tensor:
    f, h, w = (torch.arange(n, device="cpu") for n in grid)
    return torch.stack(torch.meshgrid(f, h, w, indexing="ij"), dim=-1).reshape(-1, 3)


def apply_rope(x_BLNK: torch.Tensor, cos_LJ: torch.Tensor, sin_LJ: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos), in float32."""
    x1, x2 = x_BLNK.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos_LJ[:, None, :], sin_LJ[:, None, :]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
