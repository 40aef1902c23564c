"""Architecture hyperparameters of the Wan DiT (``WanModel``), as in the official ``config.json``.

Values and their meaning: ../shared/reference/wan_arch.md §1.1-1.2. Fields the official config leaves out
(``ignore_for_config``: patch size, text width) default to the values every released model uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v", "t2a")  # t2a: Ovi's audio tower (models/dit/audio.py)
MAX_REFERENCES = 3  # reference-to-video slots, tagged @Video1..@Video3 in prompts


@dataclass(frozen=True, kw_only=True)
class DiTConfig:
    model_type: str = "t2v"  # t2v | i2v | flf2v | ti2v | t2a; the image branch depends on it (has_image_branch),
    # and t2a is a tower over 1-D audio latents [B, C, L] (patch_size (1,): no patchify)
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16  # latent channels + conditioning channels (i2v: 16 noise + 4 mask + 16 image latent = 36)
    out_dim: int = 16
    text_dim: int = 4096  # umT5-XXL width
    text_len: int = 512  # context is zero-padded to this many tokens and attended unmasked
    freq_dim: int = 256  # sinusoidal timestep features
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    image_dim: int | None = None  # CLIP ViT-H/14 width (1280) for Wan2.1 i2v/flf2v; None: no image branch
    image_pos_len: int | None = None  # flf2v: learned position embedding over 2 x 257 CLIP tokens
    rope_theta: float = 10000.0
    rope_max_len: int = 1024  # positions per axis in the RoPE tables
    # t2a only: the temporal RoPE frequencies are multiplied by this, so audio latent i sits at video latent frame
    # i * rope_scale on the shared time axis (Ovi's temporal_rope_scaling_factor, 0.19676 ~ 31 / 157.55)
    rope_scale: float = 1.0
    # the reference-to-video extension (wan_train's, not an official field): this many reference slots, each with
    # a learned embedding added to its reference's tokens; 0: a plain Wan DiT
    references: int = 0
    # the multi-shot extension (wan_train's): a learned shot-index embedding for up to this many shots, and each
    # shot's tokens cross-attend to their own caption and the global one; 0: a plain Wan DiT
    shots: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        problems = []
        if self.model_type not in MODEL_TYPES:
            problems.append(f"model_type={self.model_type!r} is not one of {MODEL_TYPES}")
        if self.dim % self.num_heads:
            problems.append(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        elif self.head_dim % 2 or self.head_dim < 6:
            problems.append(f"head_dim={self.head_dim} must be even and >= 6 for the 3-axis RoPE")
        if not 0 <= self.references <= MAX_REFERENCES:
            problems.append(f"references={self.references} must be in 0..{MAX_REFERENCES} (@Video1..@Video3)")
        if self.references and self.model_type in ("i2v", "flf2v"):
            problems.append(f"references={self.references}: the reference extension builds on T2V / TI2V models, "
                            f"not {self.model_type}")
        if self.shots < 0:
            problems.append(f"shots={self.shots} must be >= 0")
        if self.shots and self.has_image_branch:
            problems.append(f"shots={self.shots}: the multi-shot extension builds on models without the CLIP branch")
        if self.image_pos_len is not None and self.image_dim is None:
            problems.append("image_pos_len needs image_dim (the CLIP branch)")
        if self.is_audio:
            if self.patch_size != (1,):
                problems.append(f"patch_size={self.patch_size}: an audio tower (t2a) takes no patches: (1,)")
            if self.shots or self.has_image_branch:  # references: reference voices (models/dit/fusion.py)
                problems.append("an audio tower (t2a) has no shot or image extension")
        elif len(self.patch_size) != 3:
            problems.append(f"patch_size={self.patch_size} must have 3 entries (t, h, w)")
        if self.rope_scale != 1.0 and not self.is_audio:
            problems.append(f"rope_scale={self.rope_scale} applies to audio towers (t2a) only")
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "text_len"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if problems:
            raise ValueError("invalid DiTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def is_audio(self) -> bool:
        return self.model_type == "t2a"

    @property
    def has_image_branch(self) -> bool:
        return self.image_dim is not None

    @property
    def rope_split(self) -> tuple[int, int, int]:
        # head_dim channels given to the (t, h, w) axes: 44/42/42 for head_dim 128 (wan_arch.md §1.5)
        hw = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * hw, hw, hw

    def replace(self, **changes) -> DiTConfig:
        return dataclasses.replace(self, **changes)
