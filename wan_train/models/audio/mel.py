"""The log-mel front end of MMAudio's 16 kHz VAE (``mmaudio/ext/mel_converter.py``, mode '16k').

Legend: B batch, T samples, F STFT bins (n_fft / 2 + 1), M mel bins, N mel frames.

    mel = log10(max(S @ |STFT(reflect_pad(clamp(wave, -1, 1)))|, 1e-5))

The wave is reflect-padded by (n_fft - hop) / 2 on both sides and framed without centring, so frame n covers
samples [n * hop - 384, n * hop + 640) and a clip of T samples gives N = floor(T / hop) frames (T > 384, as
reflection needs). |.| is sqrt(re^2 + im^2 + 1e-9). S is librosa's default mel filterbank (Slaney mel scale,
Slaney area normalisation), computed here the way librosa computes it: in float64, rounded to float32 before the
area normalisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wan_train.models.audio.config import MelConfig

MAGNITUDE_EPS = 1e-9  # added to re^2 + im^2 under the square root

# Slaney's mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above (27 mel per factor 6.4).
_HZ_PER_MEL = 200.0 / 3
_LOG_FROM_HZ = 1000.0
_LOG_FROM_MEL = _LOG_FROM_HZ / _HZ_PER_MEL
_MEL_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _LOG_FROM_MEL + np.log(np.maximum(hz, _LOG_FROM_HZ) / _LOG_FROM_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _LOG_FROM_HZ, log_part, hz / _HZ_PER_MEL)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _LOG_FROM_HZ * np.exp(_MEL_LOG_STEP * (np.maximum(mel, _LOG_FROM_MEL) - _LOG_FROM_MEL))
    return np.where(mel >= _LOG_FROM_MEL, log_part, mel * _HZ_PER_MEL)


def slaney_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """[M, F] float32 triangles between M + 2 mel-spaced edge frequencies, each scaled by 2 / (its width in Hz)
    so every filter has unit area (``librosa.filters.mel(norm='slaney', htk=False)``)."""
    bins_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(edges_hz)
    offsets = edges_hz[:, None] - bins_hz[None, :]  # [M + 2, F]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles * area[:, None]).astype(np.float32)  # float64 product, rounded once (librosa's in-place *=)


class LogMel(nn.Module):
    """wave [B, T] in [-1, 1] -> log10 mel [B, M, floor(T / hop)], float32 whatever the module's dtype.

    The filterbank and window are non-persistent buffers: they are no checkpoint's and follow ``.to(device)``."""

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        c = config
        if c.win_length != c.n_fft:
            raise ValueError(f"MelConfig: win_length={c.win_length} must equal n_fft={c.n_fft} (as MMAudio's)")
        self.config = c
        self.pad = (c.n_fft - c.hop_length) // 2
        bank = slaney_filterbank(sample_rate=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, f_min=c.f_min,
                                 f_max=c.f_max)
        self.register_buffer("filterbank", torch.from_numpy(bank), persistent=False)  # [M, F]
        self.register_buffer("window", torch.hann_window(c.win_length), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return (num_samples + 2 * self.pad - self.config.n_fft) // self.config.hop_length + 1

    def spectrum(self, wave_BT: torch.Tensor) -> torch.Tensor:
        """Complex STFT [B, F, N] of the reflect-padded wave (not clamped), in float32."""
        t = wave_BT.shape[-1]
        if t <= self.pad:
            raise ValueError(f"audio of {t} samples is too short for the mel front end: it needs more than "
                             f"{self.pad} (the reflection padding)")
        x = wave_BT.to(self.window.device, torch.float32)
        x = F.pad(x.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
        c = self.config
        return torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
                          window=self.window.float(), center=False, normalized=False, onesided=True,
                          return_complex=True)

    def magnitude(self, spectrum_BFN: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.view_as_real(spectrum_BFN).pow(2).sum(-1) + MAGNITUDE_EPS)

    def from_magnitude(self, magnitude_BFN: torch.Tensor) -> torch.Tensor:
        """log10 mel [B, M, N] of linear STFT magnitudes."""
        mel = torch.matmul(self.filterbank.float(), magnitude_BFN)
        return torch.log10(mel.clamp(min=self.config.floor))

    def forward(self, wave_BT: torch.Tensor) -> torch.Tensor:
        return self.from_magnitude(self.magnitude(self.spectrum(wave_BT.clamp(-1.0, 1.0))))
