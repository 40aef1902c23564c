"""SyncNet's audio front end: python_speech_features' `mfcc` with its defaults (jameslyons/python_speech_features
`base.py` / `sigproc.py`, the version joonson/syncnet_python calls as `python_speech_features.mfcc(audio, 16000)`),
written again in torch (float64):

1. pre-emphasis y[0] = x[0], y[n] = x[n] - 0.97 x[n - 1];
2. frames of round_half_up(0.025 s) = 400 samples every 0.01 s = 160 (at 16 kHz), no window, the last frame
   zero-padded: 1 + ceil((N - 400) / 160) frames (1 when N <= 400);
3. power spectrum |rfft(frame, 512)|^2 / 512; the frame energy is its sum;
4. 26 triangular filters between 0 Hz and sample_rate / 2, evenly spaced in mel = 2595 log10(1 + hz / 700), their
   corners at the FFT bins floor((512 + 1) * hz / sample_rate);
5. log of the filter energies (exact zeros replaced by float64 eps first), DCT-II (orthonormal), the first 13
   coefficients, lifted by 1 + 11 sin(pi n / 22);
6. coefficient 0 replaced by the log frame energy.

syncnet_python feeds it the int16 samples of a 16 kHz mono .wav as they are (not scaled to [-1, 1]): callers pass
samples in that unit (eval.syncnet does).
"""

from __future__ import annotations

import decimal
import math

import numpy as np
import torch

EPS = float(np.finfo(float).eps)


def round_half_up(value: float) -> int:
    return int(decimal.Decimal(value).quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP))


def hz_to_mel(hz):
    return 2595 * np.log10(1 + hz / 700.0)


def mel_to_hz(mel):
    return 700 * (10 ** (mel / 2595.0) - 1)


def mel_filterbank(*, filters: int = 26, nfft: int = 512, sample_rate: int = 16000, low_hz: float = 0.0,
                   high_hz: float | None = None) -> torch.Tensor:
    """float64 [filters, nfft // 2 + 1]: python_speech_features' get_filterbanks (triangles on floored FFT bins)."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    mels = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), filters + 2)
    corners = torch.from_numpy(np.floor((nfft + 1) * mel_to_hz(mels) / sample_rate))  # [filters + 2]
    bins = torch.arange(nfft // 2 + 1, dtype=torch.float64)[None]  # [1, bins]
    left, centre, right = corners[:-2, None], corners[1:-1, None], corners[2:, None]
    rising = (bins - left) / (centre - left).clamp_min(1)
    falling = (right - bins) / (right - centre).clamp_min(1)
    return torch.where((bins >= left) & (bins < centre), rising,
                       torch.where((bins >= centre) & (bins < right), falling, 0.0))


def dct_matrix(size: int) -> torch.Tensor:
    """The orthonormal DCT-II as a matrix [size, size]: X = C @ x (scipy's dct(type=2, norm='ortho'))."""
    n = torch.arange(size, dtype=torch.float64)
    matrix = torch.cos(math.pi * n[:, None] * (2 * n[None] + 1) / (2 * size)) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix


def mfcc(signal: torch.Tensor, *, sample_rate: int = 16000, winlen: float = 0.025, winstep: float = 0.01,
         numcep: int = 13, nfilt: int = 26, nfft: int = 512, preemph: float = 0.97,
         ceplifter: int = 22) -> torch.Tensor:
    """signal [N] (any float or int unit) -> float64 [frames, numcep]: python_speech_features.mfcc with its defaults
    (appendEnergy=True, no window, lowfreq 0, highfreq sample_rate / 2)."""
    if signal.ndim != 1 or signal.numel() == 0:
        raise ValueError(f"signal must be a non-empty [N], got {tuple(signal.shape)}")
    x = signal.double()
    x = torch.cat([x[:1], x[1:] - preemph * x[:-1]])
    length, step = round_half_up(winlen * sample_rate), round_half_up(winstep * sample_rate)
    count = 1 if x.numel() <= length else 1 + math.ceil((x.numel() - length) / step)
    x = torch.cat([x, x.new_zeros((count - 1) * step + length - x.numel())])
    frames = x.unfold(0, length, step)  # [count, length]
    power = torch.fft.rfft(frames, n=nfft).abs().square() / nfft
    energy = power.sum(1)
    energy = torch.where(energy == 0, EPS, energy)
    banded = power @ mel_filterbank(filters=nfilt, nfft=nfft, sample_rate=sample_rate).T
    banded = torch.where(banded == 0, EPS, banded)
    cepstra = (banded.log() @ dct_matrix(nfilt).T)[:, :numcep]
    if ceplifter > 0:
        cepstra = cepstra * (1 + ceplifter / 2 * torch.sin(math.pi * torch.arange(numcep, dtype=torch.float64) / ceplifter))
    cepstra[:, 0] = energy.log()
    return cepstra
