"""MMAudio's mel VAE (``mmaudio/ext/autoencoder/vae.py``: ``VAE``, ``Encoder1D``, ``Decoder1D``) with its module
names, so v1-16.pth's keys map one to one (the loader normalises its raw conv weights: mp_layers.py).

Legend: B batch, M mel bins, N mel frames, C channels, Z latent channels, L latent frames = floor(N / 2).

    moments = encoder((mel - data_mean) / data_std)     [B, 2Z, L]: posterior mean, then log-variance
    mel     = decoder(z) * data_std + data_mean         [B, M, 2L]

Levels of widths hidden_dim * ch_mult; the encoder halves time after level 0, the decoder doubles it before its
last level; self-attention only in the middle. Activations are clamped to +-clip_act after every residual
block (and the middle), and both output convs carry a learned scalar gain (1 + learnable_gain).
"""

from __future__ import annotations

import torch
from torch import nn

from wan_train.models.audio.config import MelVAEConfig
from wan_train.models.audio.mp_layers import AttnBlock1D, Downsample1D, MPConv1d, ResnetBlock1D, Upsample1D, mp_silu

TIME_COMPRESSION = 2  # mel frames per latent frame (one Downsample1D)


def middle(dim: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock1D(dim, dim)
    mid.attn_1 = AttnBlock1D(dim)
    mid.block_2 = ResnetBlock1D(dim, dim)
    return mid


def run_middle(mid: nn.Module, x_BCL: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(x_BCL)))


def level(blocks: list[ResnetBlock1D]) -> nn.Module:
    """One resolution level, as MMAudio nests it: ``block.{j}`` (its ``attn`` list is empty at every level)."""
    stage = nn.Module()
    stage.block = nn.ModuleList(blocks)
    return stage


class Encoder1D(nn.Module):
    def __init__(self, config: MelVAEConfig) -> None:
        super().__init__()
        c = config
        self.clip_act = c.clip_act
        self.conv_in = MPConv1d(c.mel_bins, c.hidden_dim, 3)
        self.down = nn.ModuleList()
        width = c.hidden_dim
        for i, mult in enumerate(c.ch_mult):
            out = c.hidden_dim * mult
            stage = level([ResnetBlock1D(width if j == 0 else out, out) for j in range(c.num_res_blocks)])
            width = out
            if i == 0:
                stage.downsample = Downsample1D(width)
            self.down.append(stage)
        self.mid = middle(width)
        self.conv_out = MPConv1d(width, 2 * c.z_dim, 3)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x_BML: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_BML)
        for stage in self.down:
            for block in stage.block:
                h = block(h).clamp(-self.clip_act, self.clip_act)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = run_middle(self.mid, h).clamp(-self.clip_act, self.clip_act)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class Decoder1D(nn.Module):
    def __init__(self, config: MelVAEConfig) -> None:
        super().__init__()
        c = config
        self.clip_act = c.clip_act
        width = c.hidden_dim * c.ch_mult[-1]
        self.conv_in = MPConv1d(c.z_dim, width, 3)
        self.mid = middle(width)
        stages = []
        for i in reversed(range(len(c.ch_mult))):  # built deepest first, stored by level index (up.{i})
            out = c.hidden_dim * c.ch_mult[i]
            stage = level([ResnetBlock1D(width if j == 0 else out, out) for j in range(c.num_res_blocks + 1)])
            width = out
            if i == 1:  # mirrors the encoder's downsample after level 0
                stage.upsample = Upsample1D(width)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.conv_out = MPConv1d(width, c.mel_bins, 3)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z_BZL: torch.Tensor) -> torch.Tensor:
        h = run_middle(self.mid, self.conv_in(z_BZL)).clamp(-self.clip_act, self.clip_act)
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h).clamp(-self.clip_act, self.clip_act)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class MelVAE(nn.Module):
    """The VAE over log10 mel frames. ``data_mean`` / ``data_std`` [1, M, 1] are buffers in the checkpoint."""

    def __init__(self, config: MelVAEConfig) -> None:
        super().__init__()
        self.config = config
        shape = (1, config.mel_bins, 1)
        self.register_buffer("data_mean", torch.tensor(config.data_mean, dtype=torch.float32).view(shape))
        self.register_buffer("data_std", torch.tensor(config.data_std, dtype=torch.float32).view(shape))
        self.encoder = Encoder1D(config)
        self.decoder = Decoder1D(config)

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def moments(self, mel_BMN: torch.Tensor) -> torch.Tensor:
        """Posterior mean and log-variance (unclamped) [B, 2Z, L] of log10 mel frames."""
        return self.encoder((mel_BMN - self.data_mean) / self.data_std)

    def encode(self, mel_BMN: torch.Tensor) -> torch.Tensor:
        """Posterior mean [B, Z, L] (what Ovi's ``wrapped_encode`` returns: ``dist.mean``)."""
        return self.moments(mel_BMN)[:, :self.z_dim]

    def decode(self, z_BZL: torch.Tensor) -> torch.Tensor:
        """log10 mel [B, M, 2L]."""
        return self.decoder(z_BZL) * self.data_std + self.data_mean
