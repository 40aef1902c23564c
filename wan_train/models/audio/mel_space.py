"""A weight-free stand-in for the audio autoencoder, for the zero-download quickstart and CPU tests (as PixelSpace
is for the video VAE): the same interface, sample rate, latent channels (20) and latent rate (512 samples per
latent) as the MMAudio 16 kHz autoencoder, so training and inference code cannot tell.

Legend: B batch, T samples, F STFT bins, M mel bins (80), N mel frames, Z latent channels (20), L latent frames.

    encode: wave -> MMAudio's log10 mel [B, 80, N] -> standardised per bin with MMAudio's data statistics ->
            mean of frame pairs [B, 80, L] -> first 20 orthonormal DCT-II coefficients over the mel bins
            (mel-cepstral coefficients) [B, 20, L] -> scaled to roughly unit spread
    decode: the inverse of each linear step (missing coefficients are 0; each latent frame is repeated for its
            two mel frames) -> 10^mel -> STFT magnitude by the filterbank's pseudo-inverse (negatives set to 0) ->
            fast Griffin-Lim, ``iterations`` of them from a fixed initial phase.

What it keeps: loudness over time at 32 ms resolution (one latent frame) and the log spectral envelope smoothed
over about 4 mel bands (noise colour, formant-like shapes, where a tone sits: a 440 Hz tone comes back peaking
within ~10 Hz of it, broadband noise within ~15% of its level). What it loses: fine spectral detail (harmonics
closer than ~4 mel bands merge; a pure tone spreads into a band and loses about 20 dB, as its sharp log-domain
peak is smoothed; low tones drift where mel bands are narrowest: 250 Hz peaks at ~225 Hz, 100 Hz at ~35 Hz),
the phase (Griffin-Lim's is plausible, not the original's) and any time detail inside a latent frame. At the mel
level the round trip is a projection: encode_mel(decode_mel(z)) == z up to float rounding. Deterministic: the
same latents give the same wave. A 5 s clip decodes in about 0.3 s on one CPU core (32 Griffin-Lim iterations).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from wan_train.models.audio.autoencoder import AudioLatentSpace
from wan_train.models.audio.config import MEL80_MEAN, MEL80_STD, MelConfig
from wan_train.models.audio.griffin_lim import griffin_lim
from wan_train.models.audio.mel import LogMel

Z_DIM = 20
POOL = 2  # mel frames per latent frame, as the MMAudio VAE's downsample
# Latents are cepstral coefficients of the standardised log-mel divided by these: c0 / sqrt(80) is the mean
# standardised level (-3.4 for silence, about 0 for ordinary audio, +1 for loud noise), the others spread about
# +-1 (rms 0.4-1.0 over tones, chirps, harmonics and noise; at most about 4).
C0_SCALE = math.sqrt(80)
CEPSTRAL_SCALE = 2.0
GRIFFIN_LIM_ITERATIONS = 32


def dct_matrix(size: int) -> torch.Tensor:
    """Orthonormal DCT-II [size, size]: row k is sqrt(2 / size) cos(pi k (m + 1/2) / size), row 0 times 1/sqrt(2)."""
    m = torch.arange(size, dtype=torch.float64)
    k = torch.arange(size, dtype=torch.float64)[:, None]
    basis = math.sqrt(2.0 / size) * torch.cos(math.pi * k * (m[None, :] + 0.5) / size)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


class MelSpace(AudioLatentSpace):
    """The weight-free audio codec with AudioAutoencoder's interface (see the module docstring)."""

    def __init__(self, *, iterations: int = GRIFFIN_LIM_ITERATIONS) -> None:
        super().__init__()
        mel_config = MelConfig()
        self.mel = LogMel(mel_config)
        self.iterations = iterations
        self.sample_rate = mel_config.sample_rate
        self.z_dim = Z_DIM
        self.samples_per_latent = mel_config.hop_length * POOL
        m = mel_config.n_mels
        scale = torch.full((Z_DIM, 1), CEPSTRAL_SCALE)
        scale[0] = C0_SCALE
        self.register_buffer("projection", dct_matrix(m)[:Z_DIM] / scale, persistent=False)  # [Z, M]
        self.register_buffer("lift", (dct_matrix(m)[:Z_DIM] * scale).T.contiguous(), persistent=False)  # [M, Z]
        self.register_buffer("data_mean", torch.tensor(MEL80_MEAN).view(1, m, 1), persistent=False)
        self.register_buffer("data_std", torch.tensor(MEL80_STD).view(1, m, 1), persistent=False)
        pinv = torch.linalg.pinv(self.mel.filterbank.double())  # [F, M]
        self.register_buffer("unmel", pinv.float(), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.projection.device

    @torch.no_grad()
    def wave_to_mel(self, wave_BT: torch.Tensor) -> torch.Tensor:
        return self.mel(wave_BT)

    @torch.no_grad()
    def encode_mel(self, mel_BMN: torch.Tensor) -> torch.Tensor:
        x = (mel_BMN.float() - self.data_mean) / self.data_std
        x = F.avg_pool1d(x, kernel_size=POOL, stride=POOL)  # an odd last frame is dropped, as in the VAE
        return torch.matmul(self.projection, x)

    @torch.no_grad()
    def decode_mel(self, latents_BZL: torch.Tensor) -> torch.Tensor:
        x = torch.matmul(self.lift, latents_BZL.float()).repeat_interleave(POOL, dim=2)
        return x * self.data_std + self.data_mean

    @torch.no_grad()
    def vocode(self, mel_BMN: torch.Tensor) -> torch.Tensor:
        """log10 mel [B, M, N] -> wave [B, N * hop] in [-1, 1]."""
        magnitude = torch.matmul(self.unmel, torch.pow(10.0, mel_BMN.float())).clamp(min=0.0)
        return griffin_lim(magnitude, self.mel, iterations=self.iterations).clamp(-1.0, 1.0)
