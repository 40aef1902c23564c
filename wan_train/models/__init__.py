"""Architecture only: the Wan DiT, the VAEs, the text and image encoders, named sizes, checkpoint I/O and FLOPs
counting."""

from wan_train.models.audio import AUDIO_CONFIGS, AudioAutoencoder, MelSpace, load_audio_autoencoder
from wan_train.models.checkpoint import (
    CheckpointError, WanComponents, WanFiles, find_wan_files, load_dit, load_vae, load_wan, save_dit,
)
from wan_train.models.checkpoint.ovi_io import load_ovi_dit, save_model, save_ovi_dit
from wan_train.models.dit import DiTConfig, ShotLayout, WanBlock, WanDiT
from wan_train.models.dit.audio import AudioDiT
from wan_train.models.dit.fusion import OviConfig, OviDiT
from wan_train.models.dit.flops import DiTFlops, dit_flops
from wan_train.models.encoders import (
    ClipVisionConfig, ClipVisionEncoder, WanTextEncoder, load_clip_vision, load_text_encoder,
)
from wan_train.models.encoders.builtin import builtin_text_encoder, builtin_vae
from wan_train.models.sizes import EXPERTS, SIZES, ModelSize, get_size
from wan_train.models.vae import VAE_CONFIGS, Tiling, VAEConfig, WanVAE

__all__ = [
    "AUDIO_CONFIGS", "EXPERTS", "SIZES", "VAE_CONFIGS", "AudioAutoencoder", "AudioDiT", "CheckpointError",
    "ClipVisionConfig", "ClipVisionEncoder", "DiTConfig", "DiTFlops", "MelSpace", "ModelSize", "OviConfig", "OviDiT",
    "ShotLayout", "Tiling", "VAEConfig", "WanBlock", "WanComponents", "WanDiT", "WanFiles", "WanTextEncoder", "WanVAE",
    "builtin_text_encoder", "builtin_vae", "dit_flops", "find_wan_files", "get_size", "load_audio_autoencoder",
    "load_clip_vision", "load_dit", "load_ovi_dit", "load_text_encoder", "load_vae", "load_wan", "save_dit",
    "save_model", "save_ovi_dit",
]
