"""A pixel-space stand-in for the Wan VAE, for the zero-download quickstart and CPU runs: a [B, 3, 1 + 4k, H, W]
video becomes a [B, 3*t*d*d, 1 + k, H/s, W/s] "latent" of its pixels, averaged over (s/d) x (s/d) blocks, with
the d x d block averages of each latent pixel folded into channels (space-to-depth). `detail` d sets how much
is kept: d = s is lossless (z = 768 for s = 8, t = 4), d = 1 keeps the s x s block means (z = 12). It has the
interface of WanVAE (encode / decode / z_dim / strides / latent_shape), so training and inference code cannot
tell. The quickstart uses d = 1: a latent token of 12 x 2 x 2 = 48 numbers is one a tiny DiT (width 256) can
carry through its residual stream, which the velocity target (noise - x0: noise included) needs; 3072 numbers
per token are not.

Time is folded causally like the Wan VAE: frame 0 alone (repeated t times to fill its group), then groups of
t frames. Pixels are scaled by 1 / std with std = 0.5 so the latent's spread is about that of a unit Gaussian's
half, as for the real normalised latents. Decoding repeats each block mean over its block (nearest neighbour)."""

import torch
import torch.nn.functional as F
from torch import nn

PIXEL_STD = 0.5


class PixelSpace(nn.Module):
    def __init__(self, *, spatial_compression: int = 8, temporal_compression: int = 4, detail: int | None = None):
        super().__init__()
        detail = spatial_compression if detail is None else detail
        if detail < 1 or spatial_compression % detail:
            raise ValueError(f"detail={detail} must divide spatial_compression={spatial_compression}")
        self.spatial_compression, self.temporal_compression = spatial_compression, temporal_compression
        self.detail = detail
        self.z_dim = 3 * temporal_compression * detail ** 2
        self.register_buffer("latents_mean", torch.zeros(self.z_dim), persistent=False)
        self.register_buffer("latents_std", torch.full((self.z_dim,), PIXEL_STD), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        s, t = self.spatial_compression, self.temporal_compression
        return self.z_dim, 1 + (frames - 1) // t, height // s, width // s

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, tiled: bool | None = None) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1] -> [B, Z, T, H/s, W/s] float32 (tiled: accepted, irrelevant)."""
        b, c, f, h, w = video.shape
        s, t, d = self.spatial_compression, self.temporal_compression, self.detail
        if c != 3 or (f - 1) % t or h % s or w % s:
            raise ValueError(f"video {tuple(video.shape)}: needs [B, 3, 1 + {t}k, H, W] with H, W multiples of {s}")
        x = torch.cat([video[:, :, :1].expand(-1, -1, t, -1, -1), video[:, :, 1:]], dim=2).float()
        if d < s:  # the mean of each (s/d) x (s/d) block
            x = F.avg_pool3d(x, kernel_size=(1, s // d, s // d))
        x = x.view(b, 3, f // t + 1, t, h // s, d, w // s, d)  # (f - 1) / t + 1 groups of t frames
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, self.z_dim, -1, h // s, w // s)
        return x / PIXEL_STD

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, tiled: bool | None = None) -> torch.Tensor:
        """[B, Z, T, h, w] -> video [B, 3, 1 + t(T - 1), h*s, w*s] clamped to [-1, 1]; frame 0 is the mean of
        its t copies."""
        b, z, n, h, w = latents.shape
        s, t, d = self.spatial_compression, self.temporal_compression, self.detail
        if z != self.z_dim:
            raise ValueError(f"latents have {z} channels; this pixel space has {self.z_dim}")
        x = (latents.float() * PIXEL_STD).view(b, 3, t, d, d, n, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, 3, n * t, h * d, w * d)
        if d < s:
            x = x.repeat_interleave(s // d, dim=3).repeat_interleave(s // d, dim=4)
        video = torch.cat([x[:, :, :t].mean(dim=2, keepdim=True), x[:, :, t:]], dim=2)
        return video.clamp(-1.0, 1.0)
