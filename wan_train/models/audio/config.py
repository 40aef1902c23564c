"""Hyperparameters of the MMAudio 16 kHz audio autoencoder that Ovi uses (ovi_facts.md §5-6): the log-mel front
end, the mel VAE and the BigVGAN v1 vocoder, as three frozen dataclasses under one named config.

Numbers: MMAudio ``mmaudio/ext/mel_converter.py::get_mel_converter('16k')``, ``autoencoder/vae.py::VAE_16k`` and
``bigvgan/bigvgan_vocoder.yml``. The widths of a file are read from its tensor shapes by the loader; the block
structure (levels, kernels, upsampling rates) comes from the named config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# Per-bin statistics of the training data's log10 mel, which the VAE standardises with (MMAudio DATA_MEAN_80D /
# DATA_STD_80D; v1-16.pth stores them too, as buffers [1, 80, 1], and the file's values are the ones used).
MEL80_MEAN = (
    -1.6058, -1.3676, -1.2520, -1.2453, -1.2078, -1.2224, -1.2419, -1.2439, -1.2922, -1.2927,
    -1.3170, -1.3543, -1.3401, -1.3836, -1.3907, -1.3912, -1.4313, -1.4152, -1.4527, -1.4728,
    -1.4568, -1.5101, -1.5051, -1.5172, -1.5623, -1.5373, -1.5746, -1.5687, -1.6032, -1.6131,
    -1.6081, -1.6331, -1.6489, -1.6489, -1.6700, -1.6738, -1.6953, -1.6969, -1.7048, -1.7280,
    -1.7361, -1.7495, -1.7658, -1.7814, -1.7889, -1.8064, -1.8221, -1.8377, -1.8417, -1.8643,
    -1.8857, -1.8929, -1.9173, -1.9379, -1.9531, -1.9673, -1.9824, -2.0042, -2.0215, -2.0436,
    -2.0766, -2.1064, -2.1418, -2.1855, -2.2319, -2.2767, -2.3161, -2.3572, -2.3954, -2.4282,
    -2.4659, -2.5072, -2.5552, -2.6074, -2.6584, -2.7107, -2.7634, -2.8266, -2.8981, -2.9673,
)
MEL80_STD = (
    1.0291, 1.0411, 1.0043, 0.9820, 0.9677, 0.9543, 0.9450, 0.9392, 0.9343, 0.9297,
    0.9276, 0.9263, 0.9242, 0.9254, 0.9232, 0.9281, 0.9263, 0.9315, 0.9274, 0.9247,
    0.9277, 0.9199, 0.9188, 0.9194, 0.9160, 0.9161, 0.9146, 0.9161, 0.9100, 0.9095,
    0.9145, 0.9076, 0.9066, 0.9095, 0.9032, 0.9043, 0.9038, 0.9011, 0.9019, 0.9010,
    0.8984, 0.8983, 0.8986, 0.8961, 0.8962, 0.8978, 0.8962, 0.8973, 0.8993, 0.8976,
    0.8995, 0.9016, 0.8982, 0.8972, 0.8974, 0.8949, 0.8940, 0.8947, 0.8936, 0.8939,
    0.8951, 0.8956, 0.9017, 0.9167, 0.9436, 0.9690, 1.0003, 1.0225, 1.0381, 1.0491,
    1.0545, 1.0604, 1.0761, 1.0929, 1.1089, 1.1196, 1.1176, 1.1156, 1.1117, 1.1070,
)


@dataclass(frozen=True, kw_only=True)
class MelConfig:
    """log10 of a Slaney mel filterbank over STFT magnitudes; one mel frame per ``hop_length`` samples."""

    sample_rate: int = 16_000  # Hz
    n_fft: int = 1024
    win_length: int = 1024  # Hann window, periodic
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0  # Hz
    f_max: float = 8_000.0  # Hz
    floor: float = 1e-5  # mel magnitudes are clamped to this before the log: log10 mel >= -5


@dataclass(frozen=True, kw_only=True)
class MelVAEConfig:
    """The 1D EDM2-style (magnitude-preserving) VAE over standardised log-mel frames. Its structure is fixed as in
    MMAudio: one 2x time downsample after level 0, self-attention only in the middle blocks."""

    mel_bins: int = 80
    z_dim: int = 20  # MMAudio embed_dim
    hidden_dim: int = 384
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2  # per encoder level; the decoder has one more per level
    clip_act: float = 256.0  # activations are clamped to +-clip_act after every residual stage
    data_mean: tuple[float, ...] = MEL80_MEAN
    data_std: tuple[float, ...] = MEL80_STD

    def __post_init__(self) -> None:
        for name in ("ch_mult", "data_mean", "data_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.data_mean) != self.mel_bins or len(self.data_std) != self.mel_bins:
            raise ValueError(f"invalid MelVAEConfig: data_mean/std need mel_bins={self.mel_bins} entries, got "
                             f"{len(self.data_mean)}/{len(self.data_std)}")
        if len(self.ch_mult) < 2:
            raise ValueError(f"invalid MelVAEConfig: ch_mult={self.ch_mult} needs at least 2 levels (the time "
                             f"downsample sits after level 0)")


@dataclass(frozen=True, kw_only=True)
class VocoderConfig:
    """BigVGAN v1 (``resblock: '1'``, ``activation: snakebeta``, ``snake_logscale: true``)."""

    mel_bins: int = 80
    channels: int = 1536  # upsample_initial_channel; halved by every upsampling stage
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernels: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    resblock_kernels: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    def __post_init__(self) -> None:
        object.__setattr__(self, "upsample_rates", tuple(self.upsample_rates))
        object.__setattr__(self, "upsample_kernels", tuple(self.upsample_kernels))
        object.__setattr__(self, "resblock_kernels", tuple(self.resblock_kernels))
        object.__setattr__(self, "resblock_dilations", tuple(tuple(d) for d in self.resblock_dilations))
        problems = []
        if len(self.upsample_rates) != len(self.upsample_kernels):
            problems.append(f"upsample_rates={self.upsample_rates} and upsample_kernels={self.upsample_kernels} "
                            f"differ in length")
        if len(self.resblock_kernels) != len(self.resblock_dilations):
            problems.append(f"resblock_kernels={self.resblock_kernels} and resblock_dilations="
                            f"{self.resblock_dilations} differ in length")
        if self.channels >> len(self.upsample_rates) < 1:
            problems.append(f"channels={self.channels} halves to 0 over {len(self.upsample_rates)} stages")
        if problems:
            raise ValueError("invalid VocoderConfig: " + "; ".join(problems))

    @property
    def hop_length(self) -> int:
        """Samples per mel frame."""
        return math.prod(self.upsample_rates)


@dataclass(frozen=True, kw_only=True)
class AudioAutoencoderConfig:
    name: str
    mel: MelConfig = MelConfig()
    vae: MelVAEConfig = MelVAEConfig()
    vocoder: VocoderConfig = VocoderConfig()

    def __post_init__(self) -> None:
        problems = []
        if self.vocoder.hop_length != self.mel.hop_length:
            problems.append(f"the vocoder makes {self.vocoder.hop_length} samples per mel frame, the mel hop is "
                            f"{self.mel.hop_length}")
        if not self.mel.n_mels == self.vae.mel_bins == self.vocoder.mel_bins:
            problems.append(f"mel bins differ: mel {self.mel.n_mels}, vae {self.vae.mel_bins}, vocoder "
                            f"{self.vocoder.mel_bins}")
        if problems:
            raise ValueError(f"invalid AudioAutoencoderConfig {self.name!r}: " + "; ".join(problems))

    def replace(self, **changes) -> AudioAutoencoderConfig:
        return dataclasses.replace(self, **changes)


MMAUDIO_16K = AudioAutoencoderConfig(name="mmaudio-16k")
# The real structure, mel front end and latent channels at toy widths (the vocoder needs 2^6 channels to keep one
# after its six halvings): tests and CPU demos.
TINY_AUDIO = AudioAutoencoderConfig(name="tiny", vae=MelVAEConfig(hidden_dim=32),
                                    vocoder=VocoderConfig(channels=64))
AUDIO_CONFIGS = {c.name: c for c in (MMAUDIO_16K, TINY_AUDIO)}


def get_audio_config(name: str) -> AudioAutoencoderConfig:
    try:
        return AUDIO_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown audio autoencoder config {name!r}; known: {sorted(AUDIO_CONFIGS)}") from None
