"""BigVGAN's anti-aliased periodic activation (``mmaudio/ext/bigvgan/activations.py`` and ``alias_free_torch/``),
with its module and buffer names.

Legend: B batch, C channels, T samples.

    y = lowpass_down2(snakebeta(up2(x)))

Snake-beta (Ziyin et al. 2020, arXiv:2006.08195; BigVGAN, Lee et al. 2023, arXiv:2206.04658) is
x + sin^2(a x) / b per channel, with a = exp(alpha) and b = exp(beta) (log-scale parameters, zero at init). It
runs at twice the rate between two windowed-sinc filters (StyleGAN3's alias-free recipe) so its harmonics above
the original Nyquist frequency are removed instead of folding back. Both filters are 12-tap Kaiser-windowed sincs
with cutoff 1/4 and transition half-width 0.3 (in cycles per up-sampled sample), stored as persistent buffers
``filter`` [1, 1, 12] as in the official files.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

RATIO = 2
TAPS = 12
DIV_EPS = 1e-9  # 1 / (b + eps)


def kaiser_sinc(*, cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """[1, 1, taps] low-pass filter of unit DC gain; the window's beta from the stop-band attenuation that Kaiser's
    empirical design formulas give for this length and transition width. Computed on the CPU once (a vocoder has
    230 copies; building one on the meta device would otherwise trace each through meta kernels)."""
    return _kaiser_sinc(cutoff, half_width, taps).clone()


@functools.cache
def _kaiser_sinc(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95  # dB
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, beta=beta, periodic=False, device="cpu")
    t = torch.arange(-half, half, device="cpu") + 0.5 if taps % 2 == 0 else torch.arange(taps, device="cpu") - half
    h = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (h / h.sum()).view(1, 1, taps)


class SnakeBeta(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))  # log a
        self.beta = nn.Parameter(torch.zeros(channels))  # log b

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        a = torch.exp(self.alpha)[None, :, None]
        b = torch.exp(self.beta)[None, :, None]
        return x_BCT + (1.0 / (b + DIV_EPS)) * torch.sin(x_BCT * a).pow(2)


class UpSample1d(nn.Module):
    """2x upsampling: zero-stuffing and the low-pass (a transposed conv, gain 2), edges extended by replication."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = TAPS // RATIO - 1
        self.crop_left = self.pad * RATIO + (TAPS - RATIO) // 2
        self.crop_right = self.pad * RATIO + (TAPS - RATIO + 1) // 2
        self.register_buffer("filter", kaiser_sinc(cutoff=0.5 / RATIO, half_width=0.6 / RATIO, taps=TAPS))

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        c = x_BCT.shape[1]
        x = F.pad(x_BCT, (self.pad, self.pad), mode="replicate")
        x = RATIO * F.conv_transpose1d(x, self.filter.expand(c, -1, -1), stride=RATIO, groups=c)
        return x[..., self.crop_left:-self.crop_right]


class LowPassFilter1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pad_left = TAPS // 2 - (TAPS % 2 == 0)
        self.pad_right = TAPS // 2
        self.register_buffer("filter", kaiser_sinc(cutoff=0.5 / RATIO, half_width=0.6 / RATIO, taps=TAPS))

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        c = x_BCT.shape[1]
        x = F.pad(x_BCT, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(c, -1, -1), stride=RATIO, groups=c)


class DownSample1d(nn.Module):
    """The low-pass, keeping every second sample."""

    def __init__(self) -> None:
        super().__init__()
        self.lowpass = LowPassFilter1d()

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x_BCT)


class Activation1d(nn.Module):
    """Snake-beta at twice the rate; [B, C, T] -> [B, C, T]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample1d()
        self.downsample = DownSample1d()

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x_BCT)))
