"""Ovi's audio tower: a Wan DiT over 1-D audio latents (ovi_facts.md §2), ``DiTConfig.model_type == "t2a"``.

Legend: B batch, C latent channels (20 for the MMAudio 16 kHz VAE), L audio latents (= tokens: no patchify),
D model width, K head dim, J = K/2 rotation pairs.

    velocity [B, C, L] = AudioDiT(config)(x [B, C, L], t [B] or [B, L], context [B, S, 4096])

Everything but the input, the positions and the output is the Wan DiT's (blocks, text and time embeddings, head,
float32 islands), with the official parameter names:
- patch embedding (Ovi hard-wires it for MMAudio latents): Conv1d(C -> D, k 7, pad 3, bias), SiLU, then a gated
  conv MLP w2(silu(w1 x) * w3 x) of bias-free k-7 convs with hidden width 256 * ceil(int(8 D / 3) / 256). Ovi
  runs these convs channel-last (a permute around nn.Conv1d); the weights are the same [out, in, k] tensors.
- RoPE over the audio time axis only: the first K - 4 (K // 6) channels of each head (the slice the video
  tower gives its frame axis) rotate with the frame axis's frequencies theta^(-2j / (K - 4 (K // 6))) times
  ``config.rope_scale``; the other channels pass through. So audio latent i has the temporal phase of video
  latent frame i * rope_scale: with Ovi's 0.19676, the 157 latents of 5.04 s span the 31 latent frames of 121
  frames (157.55 * 0.19676 = 31.0). The angles are computed in float64 and applied in float32, as for video.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wan_train.models.dit.config import DiTConfig
from wan_train.models.dit.layers import to_dtype_of
from wan_train.models.dit.model import WanDiT

KERNEL = 7  # Ovi's audio patch embedding convolutions


def conv_mlp_hidden(dim: int, multiple_of: int = 256) -> int:
    """The gated conv MLP's width for a nominal 4 D: int(2/3 of it), rounded up to a multiple of 256."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class ConvMLP(nn.Module):
    """w2(silu(w1 x) * w3 x) with bias-free Conv1d(k 7, pad 3) over x [B, C, L] (official names w1, w2, w3)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Conv1d(dim, hidden, KERNEL, padding=KERNEL // 2, bias=False)
        self.w2 = nn.Conv1d(hidden, dim, KERNEL, padding=KERNEL // 2, bias=False)
        self.w3 = nn.Conv1d(dim, hidden, KERNEL, padding=KERNEL // 2, bias=False)

    def forward(self, x_BCL: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x_BCL)) * self.w3(x_BCL))


class Rope1D:
    """cos/sin tables [L, J] for audio positions 0..L-1: the first J_t pairs rotate, the rest are identity
    (cos 1, sin 0), so the 3-axis video code's apply_rope serves unchanged. Cached per (L, device)."""

    def __init__(self, *, head_dim: int, theta: float, scale: float, max_len: int) -> None:
        rotated = head_dim - 4 * (head_dim // 6)  # the video tower's frame-axis slice: 44 of 128
        self.pairs = head_dim // 2
        self.max_len = max_len
        self.omegas = scale * theta ** -(torch.arange(0, rotated, 2, dtype=torch.float64, device="cpu") / rotated)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def angles(self, positions_L: torch.Tensor) -> torch.Tensor:
        """float64 [L, J] rotation angles (zero on the pass-through pairs)."""
        angles = positions_L.to(torch.float64)[:, None] * self.omegas[None, :]
        return F.pad(angles, (0, self.pairs - self.omegas.numel()))

    def for_grid(self, grid: tuple[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (*grid, str(device))
        if key not in self._cache:
            (length,) = grid
            if length > self.max_len:
                raise ValueError(f"{length} audio latents exceed the RoPE table length {self.max_len}")
            angles_LJ = self.angles(torch.arange(length, device="cpu"))
            self._cache[key] = (angles_LJ.cos().float().to(device), angles_LJ.sin().float().to(device))
        return self._cache[key]


class AudioDiT(WanDiT):
    def __init__(self, config: DiTConfig, *, activation_checkpointing: bool = False) -> None:
        if not config.is_audio:
            raise ValueError(f"AudioDiT needs model_type='t2a', not {config.model_type!r}")
        super().__init__(config, activation_checkpointing=activation_checkpointing)

    def make_patch_embedding(self) -> nn.Module:
        cfg = self.config
        return nn.Sequential(nn.Conv1d(cfg.in_dim, cfg.dim, KERNEL, padding=KERNEL // 2), nn.SiLU(),
                             ConvMLP(cfg.dim, conv_mlp_hidden(cfg.dim)))

    def make_rope(self) -> Rope1D:
        cfg = self.config
        return Rope1D(head_dim=cfg.head_dim, theta=cfg.rope_theta, scale=cfg.rope_scale, max_len=cfg.rope_max_len)

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(to_dtype_of(x, self.patch_embedding[0])).transpose(1, 2).float()

    def init_patch_embedding(self) -> None:
        for conv in (m for m in self.patch_embedding.modules() if isinstance(m, nn.Conv1d)):
            nn.init.xavier_uniform_(conv.weight.flatten(1))

    def grid(self, x: torch.Tensor) -> tuple[int]:
        return (x.shape[2],)

    def unpatchify(self, x_BLP: torch.Tensor, grid: tuple[int]) -> torch.Tensor:
        return x_BLP.transpose(1, 2)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                      clip_fea: torch.Tensor | None) -> None:
        cfg, problems = self.config, []
        if x.ndim != 3 or x.shape[1] != cfg.in_dim:
            problems.append(f"x has shape {tuple(x.shape)}; expected audio latents [B, {cfg.in_dim}, L]")
        elif not (t.shape == (x.shape[0],) or t.shape == (x.shape[0], x.shape[2])):
            problems.append(f"t has shape {tuple(t.shape)}; expected [{x.shape[0]}] or [{x.shape[0]}, {x.shape[2]}]")
        if context.ndim != 3 or context.shape[2] != cfg.text_dim or context.shape[1] > cfg.text_len:
            problems.append(f"context has shape {tuple(context.shape)}; "
                            f"expected [B, S <= {cfg.text_len}, {cfg.text_dim}]")
        if clip_fea is not None:
            problems.append("clip_fea was given, but an audio tower has no image branch")
        if problems:
            raise ValueError("AudioDiT input: " + "; ".join(problems))
