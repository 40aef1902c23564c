"""Phase reconstruction from an STFT magnitude on LogMel's framing: the fast Griffin-Lim algorithm (Griffin & Lim
1984, "Signal estimation from modified short-time Fourier transform"; momentum: Perraudin, Balazs & Sondergaard
2013, "A fast Griffin-Lim algorithm"), deterministic: a fixed number of iterations from a fixed initial phase.

Legend: B batch, F STFT bins, N frames, T samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from wan_train.models.audio.mel import LogMel

MOMENTUM = 0.99  # Perraudin et al.'s alpha
PHASE_SEED = 0


def overlap_add(spectrum_BFN: torch.Tensor, mel: LogMel) -> torch.Tensor:
    """The least-squares inverse of ``mel.spectrum`` (Griffin & Lim's estimate): windowed inverse FFTs, overlap-added
    and divided by the summed squared window; the reflection padding is cropped. [B, F, N] -> [B, N * hop]."""
    c = mel.config
    n = spectrum_BFN.shape[-1]
    window = mel.window.float()
    frames = torch.fft.irfft(spectrum_BFN, n=c.n_fft, dim=1) * window[None, :, None]  # [B, n_fft, N]
    padded = (n - 1) * c.hop_length + c.n_fft

    def fold(columns: torch.Tensor) -> torch.Tensor:
        return F.fold(columns, output_size=(1, padded), kernel_size=(1, c.n_fft),
                      stride=(1, c.hop_length)).flatten(1)

    signal = fold(frames)
    envelope = fold((window ** 2)[None, :, None].expand(1, -1, n))
    # inside the crop every sample lies under n_fft / hop windows, so the envelope is far from 0 there
    return (signal / envelope.clamp(min=1e-8))[:, mel.pad:mel.pad + n * c.hop_length]


def initial_phase(bins: int, frames: int, *, device: torch.device) -> torch.Tensor:
    """Unit phasors [F, N] of uniform random angle from a fixed seed: the same for every call and batch item."""
    g = torch.Generator().manual_seed(PHASE_SEED)
    angle = 2 * math.pi * torch.rand(bins, frames, generator=g)
    return torch.polar(torch.ones_like(angle), angle).to(device)


def griffin_lim(magnitude_BFN: torch.Tensor, mel: LogMel, *, iterations: int) -> torch.Tensor:
    """A wave [B, N * hop] whose STFT magnitude approximates ``magnitude_BFN`` (float32)."""
    magnitude = magnitude_BFN.float()
    phase = initial_phase(magnitude.shape[1], magnitude.shape[2], device=magnitude.device).expand_as(magnitude)
    previous = torch.zeros_like(magnitude, dtype=torch.complex64)
    for _ in range(iterations):
        projected = mel.spectrum(overlap_add(magnitude * phase, mel))  # nearest consistent spectrogram
        accelerated = projected + MOMENTUM * (projected - previous)
        phase = accelerated / (accelerated.abs() + 1e-16)
        previous = projected
    return overlap_add(magnitude * phase, mel)
