"""The audio autoencoder of Ovi: MMAudio's 16 kHz log-mel front end, mel VAE and BigVGAN vocoder in one module
(Ovi ``FeaturesUtils.wrapped_encode`` / ``wrapped_decode``; ovi_facts.md §5-6).

Legend: B batch, T samples, M mel bins, N mel frames, Z latent channels, L latent frames.

    latents [B, 20, L] = posterior mean of VAE(log10 mel(wave))   no scaling factor, as Ovi uses them
    wave [B, 512 L]     = BigVGAN(VAE decode(latents))

One latent frame is 512 samples (mel hop 256 x the VAE's 2x time downsample), 31.25 per second: 157 latents are
80,384 samples (5.024 s). A wave of T samples gives floor(T / 512) latents (trailing samples are dropped).

Audio latents are [B, C, L] everywhere in wan_train. ``MelSpace`` (mel_space.py) is the weight-free stand-in
with the same interface.
"""

from __future__ import annotations

import torch
from torch import nn

from wan_train.models.audio.config import MMAUDIO_16K, AudioAutoencoderConfig
from wan_train.models.audio.mel import LogMel
from wan_train.models.audio.vae import TIME_COMPRESSION, MelVAE
from wan_train.models.audio.vocoder import BigVGAN


class AudioLatentSpace(nn.Module):
    """What AudioAutoencoder and its weight-free stand-in MelSpace share: a wave <-> mel <-> latent codec with
    `sample_rate`, `z_dim` and `samples_per_latent` set by the subclass, which supplies wave_to_mel, encode_mel,
    decode_mel and vocode."""

    sample_rate: int
    z_dim: int
    samples_per_latent: int

    @property
    def latents_per_second(self) -> float:
        return self.sample_rate / self.samples_per_latent

    def latent_length(self, num_samples: int) -> int:
        return num_samples // self.samples_per_latent

    def num_samples(self, latent_length: int) -> int:
        return latent_length * self.samples_per_latent

    @torch.no_grad()
    def encode(self, wave_BT: torch.Tensor) -> torch.Tensor:
        check_wave(wave_BT, self.samples_per_latent)
        return self.encode_mel(self.wave_to_mel(wave_BT))

    @torch.no_grad()
    def decode(self, latents_BZL: torch.Tensor) -> torch.Tensor:
        check_latents(latents_BZL, self.z_dim)
        return self.vocode(self.decode_mel(latents_BZL))


class AudioAutoencoder(AudioLatentSpace):
    """encode: wave [B, T] in [-1, 1] at ``sample_rate`` -> latents [B, z_dim, T // samples_per_latent];
    decode: latents [B, z_dim, L] -> wave [B, L * samples_per_latent] in [-1, 1]. Both float32 at the interface
    whatever the weights' dtype; the mel front end always runs in float32.

    A freshly built one has random weights (tests); ``load_audio_autoencoder`` reads Ovi's files."""

    def __init__(self, config: AudioAutoencoderConfig = MMAUDIO_16K) -> None:
        super().__init__()
        self.config = config
        self.mel = LogMel(config.mel)
        self.vae = MelVAE(config.vae)
        self.vocoder = BigVGAN(config.vocoder)
        self.sample_rate = config.mel.sample_rate
        self.z_dim = config.vae.z_dim
        self.samples_per_latent = config.mel.hop_length * TIME_COMPRESSION

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vae.encoder.conv_in.weight.device

    # the two halves, mel in between (log10 mel [B, M, N], float32): parity tests, and what the VAE alone sees

    @torch.no_grad()
    def wave_to_mel(self, wave_BT: torch.Tensor) -> torch.Tensor:
        return self.mel(wave_BT.to(self.device))

    @torch.no_grad()
    def encode_mel(self, mel_BMN: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(mel_BMN.to(self.device, self.dtype)).float()

    @torch.no_grad()
    def decode_mel(self, latents_BZL: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents_BZL.to(self.device, self.dtype)).float()

    @torch.no_grad()
    def vocode(self, mel_BMN: torch.Tensor) -> torch.Tensor:
        """log10 mel [B, M, N] -> wave [B, N * hop]."""
        weights = self.vocoder.conv_pre.weight
        return self.vocoder(mel_BMN.to(weights.device, weights.dtype)).squeeze(1).float()


def check_wave(wave_BT: torch.Tensor, samples_per_latent: int) -> None:
    if wave_BT.ndim != 2 or wave_BT.shape[1] < samples_per_latent or wave_BT.is_complex():
        raise ValueError(f"audio encode expects a wave [B, T] with T >= {samples_per_latent} samples (one latent); "
                         f"got {tuple(wave_BT.shape)}")


def check_latents(latents_BZL: torch.Tensor, z_dim: int) -> None:
    if latents_BZL.ndim != 3 or latents_BZL.shape[1] != z_dim:
        raise ValueError(f"audio decode expects latents [B, {z_dim}, L]; got {tuple(latents_BZL.shape)}")
