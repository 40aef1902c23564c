"""Magnitude-preserving 1D layers of MMAudio's VAE (EDM2: Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models", arXiv:2312.02696), with MMAudio's module names (``autoencoder/vae_modules.py``).

Legend: B batch, C channels, L frames.

Each layer keeps a unit-RMS input unit-RMS, so the network has no normalisation layers and no biases. The convs are
"forced weight normalisation" convs (EDM2 eq. 66): the checkpoint holds raw weights, and MMAudio's
``remove_weight_norm`` scales each output channel to unit norm and divides by sqrt(fan_in) once, in float32, before
inference. ``MPConv1d`` holds that normalised weight (``mp_weight`` computes it: at load, and for a fresh model) and
applies it as a plain convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-4
SILU_RMS = 0.596  # RMS of silu(z), z ~ N(0, 1) (EDM2 eq. 81)
RESIDUAL_T = 0.3  # weight of the residual branch in mp_sum


def normalize(x: torch.Tensor, *, dim: int | tuple[int, ...] | None = None, eps: float = NORM_EPS) -> torch.Tensor:
    """x / (eps + ||x||_dim / sqrt(n)), n the number of elements reduced over: unit RMS along ``dim`` (default all
    but the first). The norm is taken in float32."""
    if dim is None:
        dim = tuple(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 - t) a + t b, rescaled to unit RMS for independent unit-RMS inputs (EDM2 eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


@torch.no_grad()
def mp_weight(raw: torch.Tensor) -> torch.Tensor:
    """The weight MMAudio convolves with, from a raw one [C_out, C_in, k]: each output channel at unit RMS, then
    divided by sqrt(C_in * k); computed in float32, returned in the raw dtype."""
    w = normalize(raw.to(torch.float32))
    return (w / math.sqrt(w[0].numel())).to(raw.dtype)


class MPConv1d(nn.Module):
    """Bias-free 'same' convolution with an already-normalised weight, times an optional gain."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(mp_weight(torch.randn(out_channels, in_channels, kernel_size)))

    def forward(self, x_BCL: torch.Tensor, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
        w = self.weight * gain
        return F.conv1d(x_BCL, w, padding=w.shape[-1] // 2)


class ResnetBlock1D(nn.Module):
    """Pixel norm, then silu -> conv -> silu -> conv, mixed with the (1x1-projected) normalised input."""

    def __init__(self, in_dim: int, out_dim: int, *, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = MPConv1d(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1d(out_dim, out_dim, kernel_size)
        self.nin_shortcut = MPConv1d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        x = normalize(x_BCL, dim=1)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h, RESIDUAL_T)


class AttnBlock1D(nn.Module):
    """Single-head self-attention over frames with unit-RMS (cosine-like) queries, keys and values.

    The qkv conv's output channels interleave q, k, v: channel 3c + j is component j of channel c."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = MPConv1d(dim, 3 * dim, 1)
        self.proj_out = MPConv1d(dim, dim, 1)

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        b, c, n = x_BCL.shape
        qkv = normalize(self.qkv(x_BCL).reshape(b, 1, c, 3, n), dim=2)  # [B, heads=1, C, 3, L]
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(3))  # [B, 1, L, C]
        h = F.scaled_dot_product_attention(q, k, v)
        return mp_sum(x_BCL, self.proj_out(h.transpose(-1, -2).reshape(b, c, n)), RESIDUAL_T)


class Downsample1D(nn.Module):
    """1x1 conv, 2x average pooling over time (an odd last frame is dropped), 1x1 conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = MPConv1d(dim, dim, 1)
        self.conv2 = MPConv1d(dim, dim, 1)

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x_BCL), kernel_size=2, stride=2))


class Upsample1D(nn.Module):
    """2x nearest-exact repetition over time, then a 3-tap conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = MPConv1d(dim, dim, 3)

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCL, scale_factor=2.0, mode="nearest-exact"))
