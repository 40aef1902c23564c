"""Task conditioning built from pixels with the VAE (Wan2.1 I2V / FLF2V, Wan2.2 I2V-A14B: wan_arch.md §5.1).

y = cat(mask [4, T, h, w], VAE(video with only the conditioning frames kept, the rest 0)) -> [4 + Z, T, h, w];
the DiT input is cat(noisy latent, y) along channels (16 + 20 = in_dim 36). The mask marks pixel frames: 1 for
the given ones. Frame 0 is repeated `temporal_compression` times in front so the F = 1 + 4(T - 1) entries become
4T, and entry 4t + c goes to channel c of latent frame t (the official view(T, 4).transpose)."""

import torch

from wan_train.models import WanVAE


def i2v_mask(frames: int, height: int, width: int, *, temporal_compression: int, last: bool = False) -> torch.Tensor:
    """[tc, T, height, width] float32 for a clip of `frames` pixel frames (T latent frames)."""
    m = torch.zeros(frames)
    m[0] = 1.0
    if last:  # FLF2V also gives the last frame
        m[-1] = 1.0
    m = torch.cat([m[:1].repeat(temporal_compression), m[1:]])
    m = m.view(-1, temporal_compression).transpose(0, 1)
    return m[:, :, None, None].expand(-1, -1, height, width).contiguous()


@torch.no_grad()
def i2v_condition(vae: WanVAE, video: torch.Tensor, *, last: bool = False) -> torch.Tensor:
    """video [B, 3, F, H, W] in [-1, 1] (only frame 0, and frame F - 1 if `last`, are used) -> y
    [B, 4 + Z, T, H / s, W / s] float32."""
    keep = torch.zeros_like(video)
    keep[:, :, 0] = video[:, :, 0]
    if last:
        keep[:, :, -1] = video[:, :, -1]
    latent = vae.encode(keep)
    _, _, t, h, w = latent.shape
    mask = i2v_mask(video.shape[2], h, w, temporal_compression=vae.temporal_compression, last=last)
    assert mask.shape[1] == t, (mask.shape, latent.shape)
    return torch.cat([mask.to(latent).expand(latent.shape[0], -1, -1, -1, -1), latent], dim=1)
