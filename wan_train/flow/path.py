"""The rectified-flow path and its velocity (wan_arch.md §4.1; Liu et al. 2022; Esser et al. 2024 §2-3).

x_sigma = (1 - sigma) x0 + sigma * noise, so d x_sigma / d sigma = noise - x0: the velocity the DiT predicts.
Both are computed in at least float32 (bf16 latents are promoted), so the target is not rounded to bf16 before
the loss sees it.
"""

from __future__ import annotations

import torch


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _per_sample(sigma, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sigma: float, 0-dim or [B] -> a tensor that broadcasts over like's trailing dims ([B, 1, ..., 1])."""
    sigma = torch.as_tensor(sigma, dtype=dtype, device=like.device)
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim != 1 or sigma.shape[0] != like.shape[0]:
        raise ValueError(f"sigma must be a scalar or [B] with B = {like.shape[0]}, got shape {tuple(sigma.shape)}")
    return sigma.view(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma * noise; exact at both ends (sigma 0 -> x0, 1 -> noise).
    x0, noise: same shape [B, ...]; sigma: float, 0-dim or [B]."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    dtype = _compute_dtype(x0, noise)
    s = _per_sample(sigma, x0, dtype)
    return (1 - s) * x0.to(dtype) + s * noise.to(dtype)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = noise - x0, the sigma-derivative of interpolate (constant along the straight path)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    dtype = _compute_dtype(x0, noise)
    return noise.to(dtype) - x0.to(dtype)
