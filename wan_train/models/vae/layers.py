"""Building blocks of the Wan VAEs with the official parameter names (wan_arch.md §2.1-2.2).

Legend: B batch, C channels, F frames, H height, W width.

Both VAEs run causally in time, chunk by chunk: the encoder sees frame 0 alone and then 4 frames at a time,
the decoder one latent frame at a time. Every layer that looks back in time keeps what it needs from the
previous chunk in a ``StreamCache`` (one per encode/decode call), so chunked processing gives the same result
as a causal pass over the whole clip while activations stay the size of one chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CACHE_FRAMES = 2  # a temporal kernel of 3 looks back 2 frames


class StreamCache:
    """What each causal layer kept from the previous chunk, keyed by the layer (identity)."""

    def __init__(self) -> None:
        self._kept: dict[nn.Module, torch.Tensor | None] = {}

    def first_chunk(self, layer: nn.Module) -> bool:
        return layer not in self._kept

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self._kept.get(layer)

    def put(self, layer: nn.Module, frames: torch.Tensor | None) -> None:
        self._kept[layer] = frames


def stream(layers: nn.Sequential, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
    """Run a Sequential whose causal members take the cache (official containers mix them with norms/SiLU)."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, Causal) else layer(x)
    return x


class Causal(nn.Module):
    """Marker for layers whose forward takes ``(x_BCFHW, cache)``."""


class CausalConv3d(nn.Conv3d, Causal):
    """3D convolution padded causally in time (2p frames in front, none behind) and symmetrically in space.

    While streaming, the zero padding in front is replaced by the last frames of the previous chunk.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1, padding=0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.front = 2 * pt
        self.spatial_pad = (pw, pw, ph, ph)

    def forward(self, x_BCFHW: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        x = x_BCFHW
        front = self.front
        if front and cache is not None:
            prev = cache.get(self)
            keep = x[:, :, -CACHE_FRAMES:]
            if prev is not None:
                if keep.shape[2] < CACHE_FRAMES:  # a 1-frame chunk: keep the previous chunk's last frame too
                    keep = torch.cat([prev[:, :, -1:], keep], dim=2)
                x = torch.cat([prev, x], dim=2)
                front -= prev.shape[2]
            cache.put(self, keep.clone())
        x = F.pad(x, (*self.spatial_pad, front, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2 normalisation over channels times sqrt(C) and a learned gain (no eps beyond F.normalize's 1e-12).

    gamma is [C, 1, 1, 1] for 5D inputs and [C, 1, 1] for per-frame 4D inputs, as in the official files.
    Normalised in float32 when the input is narrower.
    """

    def __init__(self, dim: int, *, images: bool = False) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * (2 if images else 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.normalize(x.float(), dim=1).to(x.dtype)
        return normed * self.scale * self.gamma


class ResidualBlock(Causal):
    """RMS -> SiLU -> conv3 -> RMS -> SiLU -> dropout -> conv3, plus a 1x1x1 shortcut when C changes."""

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x_BCFHW: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        return stream(self.residual, x_BCFHW, cache) + self.shortcut(x_BCFHW)


def per_frame(x_BCFHW: torch.Tensor) -> torch.Tensor:
    b, c, f, h, w = x_BCFHW.shape
    return x_BCFHW.transpose(1, 2).reshape(b * f, c, h, w)


def from_frames(x_NCHW: torch.Tensor, batch: int) -> torch.Tensor:
    n, c, h, w = x_NCHW.shape
    return x_NCHW.reshape(batch, n // batch, c, h, w).transpose(1, 2)


class AttentionBlock(Causal):
    """Single-head self-attention over the pixels of each frame (middle blocks only)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x_BCFHW: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        b, c, f, h, w = x_BCFHW.shape
        qkv = self.to_qkv(self.norm(per_frame(x_BCFHW)))  # [N=B*F, 3C, H, W]
        q, k, v = qkv.flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)  # [N, 1, HW, C] each
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.squeeze(1).transpose(1, 2).reshape(b * f, c, h, w))
        return from_frames(out, b) + x_BCFHW


class Upsample2x(nn.Upsample):
    """Nearest-exact 2x spatial upsampling, computed in float32 (as the official layer)."""

    def __init__(self) -> None:
        super().__init__(scale_factor=(2.0, 2.0), mode="nearest-exact")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class Resample(Causal):
    """2x spatial down/upsampling per frame, optionally with 2x temporal down/upsampling (``time_conv``).

    Temporal rules of the official chunked inference: the first chunk never goes through ``time_conv``, so the
    first frame stays a single frame (1 pixel frame <-> 1 latent frame); afterwards ``downsample3d`` strides over
    the previous chunk's last frame and the new ones, and ``upsample3d`` turns each frame into two.
    """

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, dim: int, mode: str, *, up_out_dim: int | None = None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r} is not one of {self.MODES}")
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, up_out_dim or dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x_BCFHW: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = x_BCFHW
        if self.mode == "upsample3d":
            if cache.first_chunk(self):
                cache.put(self, None)
            else:
                b, c, f, h, w = x.shape
                x = self.time_conv(x, cache).reshape(b, 2, c, f, h, w)  # two output frames per input frame
                x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * f, h, w)
        x = from_frames(self.resample(per_frame(x)), x.shape[0])
        if self.mode == "downsample3d":
            prev = cache.get(self)
            cache.put(self, x[:, :, -1:].clone())
            if prev is not None:
                x = self.time_conv(torch.cat([prev, x], dim=2))
        return x


def _neighbourhood_ratio(fine_dim: int, coarse_dim: int, factor_t: int, factor_s: int) -> int:
    """How many folded values (fine channels x t x s x s neighbourhood) fall on each coarse channel."""
    folded = fine_dim * factor_t * factor_s ** 2
    if folded % coarse_dim:
        raise ValueError(f"{fine_dim} channels x {factor_t}x{factor_s}x{factor_s} is not a multiple of {coarse_dim}")
    return folded // coarse_dim


class AvgDown3D(nn.Module):
    """Wan2.2 parameter-free shortcut: fold t x s x s neighbourhoods into channels, then average channel groups.

    Time is zero-padded in front to a multiple of the factor (so a 1-frame first chunk gives 1 frame).
    """

    def __init__(self, in_dim: int, out_dim: int, *, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.group = _neighbourhood_ratio(in_dim, out_dim, factor_t, factor_s)

    def forward(self, x_BCFHW: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = F.pad(x_BCFHW, (0, 0, 0, 0, (-x_BCFHW.shape[2]) % ft, 0))
        b, c, f, h, w = x.shape
        x = x.reshape(b, c, f // ft, ft, h // fs, fs, w // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # channel order (c, t-offset, h-offset, w-offset)
        x = x.reshape(b, self.out_dim, self.group, f // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(Causal):
    """Wan2.2 parameter-free shortcut: repeat channels, then unfold them into t x s x s neighbourhoods.

    On the first chunk the first factor_t - 1 frames are dropped (1 latent frame -> 1 frame, as the main path).
    """

    def __init__(self, in_dim: int, out_dim: int, *, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.repeats = _neighbourhood_ratio(out_dim, in_dim, factor_t, factor_s)

    def forward(self, x_BCFHW: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, _, f, h, w = x_BCFHW.shape
        x = x_BCFHW.repeat_interleave(self.repeats, dim=1).reshape(b, self.out_dim, ft, fs, fs, f, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_dim, f * ft, h * fs, w * fs)
        if cache.first_chunk(self):
            cache.put(self, None)
            x = x[:, :, ft - 1:]
        return x
