"""Forward FLOPs of the Wan DiT for one CFG branch (wan_arch.md §7), for MFU reporting.

N video tokens, L layers, d width, f FFN width, T text tokens (always text_len: the padding is attended),
I CLIP tokens; 2 FLOPs per multiply-add; attention scores and AV are full (non-causal) matmuls:
  video linears    2 N [L (6 d^2 + 2 d f) + 4 C_in d + 4 C_out d]  (self q k v o, cross q o, FFN; patch, head)
  context linears  2 L 2 d^2 (T + I) + text MLP + CLIP MLP           (cross k v on the context tokens)
  self-attention   4 L N^2 d
  cross-attention  4 L N (T + I) d
A training step (forward + backward) is 3x the forward, not counting activation recomputation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wan_train.models.dit.config import DiTConfig

CLIP_TOKENS = 257


@dataclass(frozen=True)
class DiTFlops:
    video_linear: float
    context_linear: float
    self_attention: float
    cross_attention: float

    @property
    def total(self) -> float:
        return self.video_linear + self.context_linear + self.self_attention + self.cross_attention

    @property
    def attention_share(self) -> float:
        return (self.self_attention + self.cross_attention) / self.total

    @property
    def train_step(self) -> float:
        return 3 * self.total


def dit_flops(config: DiTConfig, latent_shape: tuple[int, int, int], *, batch: int = 1) -> DiTFlops:
    """latent_shape: (F, H, W) of the latent the DiT sees (e.g. (21, 60, 104) for 480p x 81 frames)."""
    c = config
    n = math.prod(s // p for s, p in zip(latent_shape, c.patch_size, strict=True))
    d, f, layers = c.dim, c.ffn_dim, c.num_layers
    text = c.text_len
    image = (c.image_pos_len or CLIP_TOKENS) if c.has_image_branch else 0
    patch = math.prod(c.patch_size)
    video_linear = 2 * n * (layers * (6 * d * d + 2 * d * f) + patch * c.in_dim * d + patch * c.out_dim * d)
    context_linear = 2 * layers * 2 * d * d * (text + image) + 2 * text * (c.text_dim * d + d * d)
    if c.has_image_branch:
        context_linear += 2 * image * (c.image_dim * c.image_dim + c.image_dim * d)
    return DiTFlops(
        video_linear=batch * video_linear,
        context_linear=batch * context_linear,
        self_attention=batch * 4 * layers * n * n * d,
        cross_attention=batch * 4 * layers * n * (text + image) * d,
    )
