"""The BigVGAN v1 vocoder of MMAudio's 16 kHz model (``mmaudio/ext/bigvgan/models.py::BigVGANVocoder`` with
``bigvgan_vocoder.yml``), with its module names: log10 mel [B, M, N] -> wave [B, 1, N * hop] in (-1, 1).

Legend: B batch, M mel bins, N mel frames, C channels, T samples.

conv_pre (k 7) -> per stage i: transposed conv (rate u_i, kernel k_i, C / 2^i -> C / 2^(i+1)), then the mean of
the AMP blocks of kernels (3, 7, 11) -> anti-aliased snake-beta -> conv_post (k 7, one channel, WITH a bias) ->
tanh. An AMP block ("1") is three times x += conv(act(conv_dilated(act(x)))), dilations (1, 3, 5).

The official file stores every conv as a weight-norm pair (g, v), w = g v / ||v|| over all dims but 0 (for the
transposed convs dim 0 is the input channel); the loader fuses them, so these are plain convs.
"""

from __future__ import annotations

import torch
from torch import nn

from wan_train.models.audio.alias_free import Activation1d
from wan_train.models.audio.config import VocoderConfig


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                              padding=same_padding(kernel_size, d)) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=same_padding(kernel_size))
                                    for _ in dilations)
        self.activations = nn.ModuleList(Activation1d(channels) for _ in range(2 * len(dilations)))

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        x = x_BCT
        for i, (dilated, plain) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            x = plain(self.activations[2 * i + 1](dilated(self.activations[2 * i](x)))) + x
        return x


class BigVGAN(nn.Module):
    def __init__(self, config: VocoderConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.num_kernels = len(c.resblock_kernels)
        self.conv_pre = nn.Conv1d(c.mel_bins, c.channels, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        width = c.channels
        for rate, kernel in zip(c.upsample_rates, c.upsample_kernels, strict=True):
            # official nesting: ups.{i}.0 (a list of one)
            self.ups.append(nn.ModuleList([nn.ConvTranspose1d(width, width // 2, kernel, rate,
                                                              padding=(kernel - rate) // 2)]))
            width //= 2
            self.resblocks.extend(AMPBlock1(width, k, d) for k, d in zip(c.resblock_kernels, c.resblock_dilations,
                                                                         strict=True))
        self.activation_post = Activation1d(width)
        self.conv_post = nn.Conv1d(width, 1, 7, padding=3)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def forward(self, mel_BMN: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel_BMN)
        for i, (up,) in enumerate(self.ups):
            x = up(x)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            mixed = blocks[0](x)
            for block in blocks[1:]:
                mixed = mixed + block(x)
            x = mixed / self.num_kernels
        return torch.tanh(self.conv_post(self.activation_post(x)))
