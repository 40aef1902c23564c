"""Named model sizes: the DiT architecture of each released Wan model, its VAE, and its MoE experts.

Numbers: ../shared/reference/wan_arch.md §1.1, §1.11 and §4.3. ``tiny*`` sizes have the real interfaces
(text width 4096, CLIP width 1280, latent channels 16 / 48) at test scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from wan_train.models.dit.config import DiTConfig

EXPERTS = ("high_noise", "low_noise")


@dataclass(frozen=True, kw_only=True)
class ModelSize:
    name: str
    dit: DiTConfig
    # "wan2.1" (z16, 4x8x8), "wan2.2" (z48, 4x16x16) or "pixel" (the quickstart stand-in: 8x8 pixel-block means,
    # z12, 4x8x8)
    vae: str
    # Wan2.2 A14B: two DiTs of identical architecture. The high-noise expert runs for timesteps at or above
    # boundary * 1000 (the shifted timestep), the low-noise expert below it.
    experts: tuple[str, ...] = ()
    boundary: float | None = None
    # Ovi's twin-tower model (models/dit/fusion.py): `dit` is the video tower, `audio` the audio tower, whose
    # latents come from the audio autoencoder `audio_vae` ("mmaudio-16k", or "mel" for the weight-free stand-in)
    audio: DiTConfig | None = None
    audio_vae: str | None = None

    @property
    def is_moe(self) -> bool:
        return bool(self.experts)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


def _size(name: str, *, vae: str = "wan2.1", experts: tuple[str, ...] = (), boundary: float | None = None,
          **dit) -> ModelSize:
    return ModelSize(name=name, dit=DiTConfig(**dit), vae=vae, experts=experts, boundary=boundary)


def audio_tower(video: DiTConfig) -> DiTConfig:
    """The audio tower Ovi pairs with a video tower: the same widths, over the 20 channels of the MMAudio 16 kHz
    latents (or of the weight-free "mel" stand-in), 1-D RoPE scaled to line up with the video's frames."""
    return DiTConfig(model_type="t2a", in_dim=20, out_dim=20, patch_size=(1,), rope_scale=OVI_ROPE_SCALE,
                     dim=video.dim, ffn_dim=video.ffn_dim, num_heads=video.num_heads, num_layers=video.num_layers,
                     text_dim=video.text_dim, text_len=video.text_len)


def _twin(name: str, *, audio_vae: str, **widths) -> ModelSize:
    """An Ovi-style twin: a TI2V video tower (48 latent channels, Wan2.2 VAE) and an audio tower over the 20
    channels of the MMAudio 16 kHz VAE, of the same widths (ovi/configs/model/dit/{video,audio}.json)."""
    video = DiTConfig(model_type="ti2v", in_dim=48, out_dim=48, **widths)
    return ModelSize(name=name, dit=video, vae="wan2.2", audio=audio_tower(video), audio_vae=audio_vae)


_W14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
_TINY = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2)  # head_dim 128 as in every real size
QUICKSTART = dict(_TINY, num_layers=4, text_len=64)
OVI_ROPE_SCALE = 0.19676  # ovi/configs/model/dit/audio.json temporal_rope_scaling_factor

SIZES: dict[str, ModelSize] = {
    s.name: s
    for s in (
        _size("tiny", **_TINY),
        _size("tiny-i2v", model_type="i2v", in_dim=36, image_dim=1280, **_TINY),
        _size("tiny-ti2v", model_type="ti2v", in_dim=48, out_dim=48, vae="wan2.2", **_TINY),
        _size("tiny-moe", experts=EXPERTS, boundary=0.875, **_TINY),
        # the zero-download quickstart: a tiny DiT on the pixel-space stand-in for the VAE (vae/pixel.py), 4 blocks.
        # It pads the prompt to 64 tokens, not Wan's 512: the padding is attended (as in Wan), and a 15-token
        # caption among 497 identical padding tokens cost the text MLP and cross-attention over half of each CPU
        # step (README, quickstart); the longest demo prompt (multi-shot: a global caption and two shots') is ~55
        _size("quickstart", vae="pixel", in_dim=12, out_dim=12, **QUICKSTART),
        # the same DiT as a TI2V model (the first latent frame given clean on a share of the samples,
        # flow.image_condition_probability): does it read the direction words when the first frame is given?
        _size("quickstart-ti2v", model_type="ti2v", vae="pixel", in_dim=12, out_dim=12, **QUICKSTART),
        _size("wan2.1-t2v-1.3b", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
        _size("wan2.1-t2v-14b", **_W14B),
        _size("wan2.1-i2v-14b", model_type="i2v", in_dim=36, image_dim=1280, **_W14B),
        _size("wan2.1-flf2v-14b", model_type="flf2v", in_dim=36, image_dim=1280, image_pos_len=514, **_W14B),
        _size("wan2.2-ti2v-5b", model_type="ti2v", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30,
              in_dim=48, out_dim=48, vae="wan2.2"),
        _size("wan2.2-t2v-a14b", experts=EXPERTS, boundary=0.875, **_W14B),
        _size("wan2.2-i2v-a14b", model_type="i2v", in_dim=36, experts=EXPERTS, boundary=0.9, **_W14B),
        # Ovi 11B (all three released checkpoints: 720x720 5 s, 960x960 5 s and 10 s)
        _twin("ovi-11b", audio_vae="mmaudio-16k", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30),
        _twin("tiny-ovi", audio_vae="mmaudio-16k", **_TINY),
        # the zero-download twin: the quickstart's video tower (pixel space) and an audio tower on the weight-free
        # mel stand-in of the audio autoencoder (models/audio/mel_space.py); trained from scratch (recipe=av)
        ModelSize(name="quickstart-av", dit=DiTConfig(in_dim=12, out_dim=12, **_TINY), vae="pixel",
                  audio=audio_tower(DiTConfig(**_TINY)), audio_vae="mel"),
    )
}


def get_size(name: str) -> ModelSize:
    try:
        return SIZES[name]
    except KeyError:
        raise ValueError(f"unknown model size {name!r}; known sizes: {', '.join(SIZES)}") from None
