"""Hyperparameters of the two Wan VAEs and their latent normalisation constants (wan_arch.md §2).

The block structure (channel multipliers, residual blocks per stage, which stages halve time) is the same for
every released file of a version; the widths and the latent channel count are read from a checkpoint, so the
tiny test files in the same layout load through the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

VERSIONS = ("wan2.1", "wan2.2")

# Per-channel statistics of the posterior mean over the training data: latents are (mu - mean) / std.
# Wan2.1 (W21:vae.py WanVAE.__init__; also the diffusers AutoencoderKLWan defaults).
WAN21_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
# Wan2.2 (W22:vae2_2.py Wan2_2_VAE.__init__; diffusers' convert script vae22_diffusers_config).
WAN22_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    version: str  # "wan2.1": causal 3D convs, 4x8x8; "wan2.2": + pixel shuffle and residual shortcuts, 4x16x16
    base_dim: int  # encoder width at full resolution (96 for 2.1, 160 for 2.2)
    decoder_base_dim: int  # decoder width at full resolution (96 for 2.1, 256 for 2.2)
    z_dim: int  # latent channels
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Which encoder stages halve time; the official constructor call overrides the class default to this.
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latents_mean", "latents_std", "dim_mult", "temporal_downsample"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if self.version not in VERSIONS:
            problems.append(f"version={self.version!r} is not one of {VERSIONS}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            problems.append(f"latents_mean/std need z_dim={self.z_dim} entries, got "
                            f"{len(self.latents_mean)}/{len(self.latents_std)}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            problems.append(f"temporal_downsample={self.temporal_downsample} needs one entry per downsampling "
                            f"stage ({len(self.dim_mult) - 1})")
        if problems:
            raise ValueError("invalid VAEConfig: " + "; ".join(problems))

    @property
    def residual(self) -> bool:
        """Wan2.2 stages carry parameter-free average/duplicate shortcuts around their residual blocks."""
        return self.version == "wan2.2"

    @property
    def patch_size(self) -> int:
        """Pixel (un)shuffle factor applied outside the encoder/decoder (Wan2.2: 2x2 pixels -> 12 channels)."""
        return 2 if self.version == "wan2.2" else 1

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * self.patch_size

    @property
    def io_channels(self) -> int:
        """Channels the encoder reads and the decoder writes (RGB after pixel unshuffle)."""
        return 3 * self.patch_size ** 2

    def replace(self, **changes) -> VAEConfig:
        return dataclasses.replace(self, **changes)


WAN21_VAE = VAEConfig(version="wan2.1", base_dim=96, decoder_base_dim=96, z_dim=16,
                      latents_mean=WAN21_MEAN, latents_std=WAN21_STD)
WAN22_VAE = VAEConfig(version="wan2.2", base_dim=160, decoder_base_dim=256, z_dim=48,
                      latents_mean=WAN22_MEAN, latents_std=WAN22_STD)
VAE_CONFIGS = {"wan2.1": WAN21_VAE, "wan2.2": WAN22_VAE}
# The real block structure and latent channels at toy widths: tests and the zero-download quickstart.
TINY_VAE_CONFIGS = {"wan2.1": WAN21_VAE.replace(base_dim=8, decoder_base_dim=8),
                    "wan2.2": WAN22_VAE.replace(base_dim=8, decoder_base_dim=12)}
