"""The Wan VAEs (Wan2.1: z 16, 4x8x8; Wan2.2: z 48, 4x16x16) with the official module names (wan_arch.md §2).

Legend: B batch, C channels, F frames, H height, W width; T latent frames = 1 + (F - 1) / 4.

``WanVAE.encode`` maps a video in [-1, 1] with F = 1 + 4k frames to the normalised posterior mean, streaming
frame 0 and then 4-frame chunks through the causal encoder; ``decode`` streams one latent frame at a time and
returns a video clamped to [-1, 1]. Both are float32 at the interface whatever the weights' dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from wan_train.models.vae.config import VAEConfig
from wan_train.models.vae.layers import (
    AttentionBlock, AvgDown3D, Causal, CausalConv3d, DupUp3D, Resample, ResidualBlock, RMSNorm, StreamCache, stream,
)
from wan_train.models.vae import tiling as tiles
from wan_train.models.vae.tiling import Tiling


def middle(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout=dropout), AttentionBlock(dim),
                         ResidualBlock(dim, dim, dropout=dropout))


def head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


class DownStage(Causal):
    """Wan2.2 encoder stage: residual blocks and a downsample, around a parameter-free AvgDown3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, *, blocks: int, down: bool, down_time: bool, dropout: float):
        super().__init__()
        layers = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout=dropout) for i in range(blocks)]
        if down:
            layers.append(Resample(out_dim, "downsample3d" if down_time else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, factor_t=2 if down_time else 1, factor_s=2 if down else 1)

    def forward(self, x_BCFHW: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        return stream(self.downsamples, x_BCFHW, cache) + self.avg_shortcut(x_BCFHW)


class UpStage(Causal):
    """Wan2.2 decoder stage: residual blocks and an upsample, around a parameter-free DupUp3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, *, blocks: int, up: bool, up_time: bool, dropout: float):
        super().__init__()
        layers = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim, dropout=dropout) for i in range(blocks)]
        if up:
            layers.append(Resample(out_dim, "upsample3d" if up_time else "upsample2d", up_out_dim=out_dim))
        self.upsamples = nn.Sequential(*layers)
        self.avg_shortcut = DupUp3D(in_dim, out_dim, factor_t=2 if up_time else 1, factor_s=2) if up else None

    def forward(self, x_BCFHW: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        out = stream(self.upsamples, x_BCFHW, cache)
        return out if self.avg_shortcut is None else out + self.avg_shortcut(x_BCFHW, cache)


class Encoder(Causal):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c = config
        dims = [c.base_dim * m for m in (1, *c.dim_mult)]
        self.conv1 = CausalConv3d(c.io_channels, dims[0], 3, padding=1)
        stages = len(c.dim_mult)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            down, down_time = i < stages - 1, i < stages - 1 and c.temporal_downsample[i]
            if c.residual:
                layers.append(DownStage(in_dim, out_dim, blocks=c.num_res_blocks, down=down, down_time=down_time,
                                        dropout=c.dropout))
                continue
            # Wan2.1: one flat list (encoder.downsamples.{k} in the official files)
            layers += [ResidualBlock(in_dim if j == 0 else out_dim, out_dim, dropout=c.dropout)
                       for j in range(c.num_res_blocks)]
            if down:
                layers.append(Resample(out_dim, "downsample3d" if down_time else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = middle(dims[-1], c.dropout)
        self.head = head(dims[-1], 2 * c.z_dim)  # mu and log-variance

    def forward(self, x_BCFHW: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.conv1(x_BCFHW, cache)
        x = stream(self.downsamples, x, cache)
        return stream(self.head, stream(self.middle, x, cache), cache)


class Decoder(Causal):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c = config
        dims = [c.decoder_base_dim * m for m in (c.dim_mult[-1], *reversed(c.dim_mult))]
        up_time = tuple(reversed(c.temporal_downsample))
        self.conv1 = CausalConv3d(c.z_dim, dims[0], 3, padding=1)
        self.middle = middle(dims[0], c.dropout)
        stages = len(c.dim_mult)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            up, time = i < stages - 1, i < stages - 1 and up_time[i]
            if c.residual:
                layers.append(UpStage(in_dim, out_dim, blocks=c.num_res_blocks + 1, up=up, up_time=time,
                                      dropout=c.dropout))
                continue
            # Wan2.1: a flat list; each upsample halves the channels, so later stages start at half width
            in_dim = in_dim if i == 0 else in_dim // 2
            layers += [ResidualBlock(in_dim if j == 0 else out_dim, out_dim, dropout=c.dropout)
                       for j in range(c.num_res_blocks + 1)]
            if up:
                layers.append(Resample(out_dim, "upsample3d" if time else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = head(dims[-1], c.io_channels)

    def forward(self, z_BCTHW: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = stream(self.middle, self.conv1(z_BCTHW, cache), cache)
        return stream(self.head, stream(self.upsamples, x, cache), cache)


def patchify(x_BCFHW: torch.Tensor, p: int) -> torch.Tensor:
    """Pixel unshuffle to channels in the official Wan2.2 order (c, w-offset, h-offset)."""
    if p == 1:
        return x_BCFHW
    b, c, f, h, w = x_BCFHW.shape
    x = x_BCFHW.reshape(b, c, f, h // p, p, w // p, p)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, f, h // p, w // p)


def unpatchify(x_BCFHW: torch.Tensor, p: int) -> torch.Tensor:
    if p == 1:
        return x_BCFHW
    b, cpp, f, h, w = x_BCFHW.shape
    x = x_BCFHW.reshape(b, cpp // (p * p), p, p, f, h, w)  # (c, w-offset, h-offset)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), f, h * p, w * p)


class WanVAE(nn.Module):
    """A Wan VAE. Module names follow the official checkpoints: ``encoder``, ``conv1`` (posterior moments),
    ``conv2`` (before the decoder), ``decoder``.

    Read compression factors, latent channels and normalisation constants from here, never repeat them.
    """

    def __init__(self, config: VAEConfig, *, tiling: Tiling | None = None) -> None:
        super().__init__()
        self.config = config
        self.tiling = tiling or Tiling()
        self.encoder = Encoder(config)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)
        # not in the checkpoints: the official code hard-codes them (float32, [1, Z, 1, 1, 1])
        shape = (1, config.z_dim, 1, 1, 1)
        self.register_buffer("latents_mean", torch.tensor(config.latents_mean).view(shape), persistent=False)
        self.register_buffer("latents_std", torch.tensor(config.latents_std).view(shape), persistent=False)

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """[Z, T, H', W'] of the latents of a ``frames`` x ``height`` x ``width`` video."""
        s, t = self.spatial_compression, self.temporal_compression
        return self.z_dim, 1 + (frames - 1) // t, height // s, width // s

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, tiled: bool | None = None) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1], F = 1 + 4k, H and W multiples of the spatial compression ->
        normalised latents [B, Z, T, H', W'] in float32.

        tiled: force spatial tiling on or off (None: ``self.tiling`` decides by frame area)."""
        self._check_video(video)
        x = video.to(self.latents_mean.device, self.dtype)
        if self._use_tiling(x.shape[-2:], tiled):
            mu = tiles.tiled(self._encode_stream, x, tile=self.tiling.tile, overlap=self.tiling.overlap,
                             scale=1 / self.spatial_compression)
        else:
            mu = self._encode_stream(x)
        return (mu.float() - self.latents_mean) * (1.0 / self.latents_std)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, tiled: bool | None = None) -> torch.Tensor:
        """latents [B, Z, T, H', W'] (normalised) -> video [B, 3, 1 + 4(T - 1), H, W] in [-1, 1], float32."""
        self._check_latents(latents)
        z = latents.to(self.latents_mean.device).float() / (1.0 / self.latents_std) + self.latents_mean
        z = z.to(self.dtype)
        s = self.spatial_compression
        if self._use_tiling((z.shape[-2] * s, z.shape[-1] * s), tiled):
            video = tiles.tiled(self._decode_stream, z, tile=self.tiling.tile // s, overlap=self.tiling.overlap // s,
                                scale=s)
        else:
            video = self._decode_stream(z)
        return video.float().clamp_(-1.0, 1.0)

    def _encode_stream(self, x_BCFHW: torch.Tensor) -> torch.Tensor:
        """Posterior mean of one (tile of a) video: frame 0 alone, then chunks of ``temporal_compression``."""
        x = patchify(x_BCFHW, self.config.patch_size)
        t = self.temporal_compression
        cache = StreamCache()
        chunks = [x[:, :, :1]] + [x[:, :, i:i + t] for i in range(1, x.shape[2], t)]
        out = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)
        return self.conv1(out)[:, :self.z_dim]

    def _decode_stream(self, z_BCTHW: torch.Tensor) -> torch.Tensor:
        x = self.conv2(z_BCTHW)
        cache = StreamCache()
        out = torch.cat([self.decoder(x[:, :, i:i + 1], cache) for i in range(x.shape[2])], dim=2)
        return unpatchify(out, self.config.patch_size)

    def _use_tiling(self, frame_hw: tuple[int, int], requested: bool | None) -> bool:
        if not self.tiling.use_for(frame_hw, requested):
            return False
        s = self.spatial_compression
        if self.tiling.tile % s or self.tiling.overlap % s:  # tiles must start on the latent grid
            raise ValueError(f"tiling tile={self.tiling.tile} and overlap={self.tiling.overlap} must be multiples "
                             f"of this VAE's spatial compression {s}")
        return True

    def _check_video(self, video: torch.Tensor) -> None:
        s, t = self.spatial_compression, self.temporal_compression
        ok = video.ndim == 5 and video.shape[1] == 3 and (video.shape[2] - 1) % t == 0
        if not ok or video.shape[3] % s or video.shape[4] % s:
            raise ValueError(f"VAE encode expects video [B, 3, F, H, W] with F = 1 + {t}k and H, W multiples of "
                             f"{s}; got {tuple(video.shape)}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(f"VAE decode expects latents [B, {self.z_dim}, T, H, W]; got {tuple(latents.shape)}")
