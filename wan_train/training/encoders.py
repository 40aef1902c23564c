"""The frozen encoders a run needs to turn raw-video batches into latents and text context: none for cached
latents, the builtin stand-ins for the quickstart, or the VAE + umT5 (+ CLIP) of a Wan folder; for an audio-video
run also the audio autoencoder (model.audio: the mel stand-in or MMAudio's files)."""

from dataclasses import dataclass
from pathlib import Path

import torch

from wan_train.inference.twin import audio_source
from wan_train.models import builtin_text_encoder, builtin_vae, load_wan
from wan_train.models.audio import load_audio_space
from wan_train.models.checkpoint.ovi_folder import WAN_DIR, is_ovi_folder


@dataclass
class Encoders:
    vae: object | None = None
    text_encoder: object | None = None
    clip: object | None = None  # only for DiTs with the CLIP image branch (Wan2.1 I2V / FLF2V)
    audio: object | None = None  # audio-video runs: the audio latent space (wan_train.models.audio)

    def to(self, device: torch.device) -> "Encoders":
        if self.vae is not None:
            self.vae.to(device)
        if self.text_encoder is not None:
            self.text_encoder.to(device)
        if self.clip is not None:
            self.clip.to(device)
        if self.audio is not None:
            self.audio.to(device)
        return self


def build_encoders(cfg, *, text_dim: int, text_len: int = 512, image_branch: bool = False) -> Encoders:
    if cfg.data.kind == "latents" and not cfg.validation.every_n_steps:
        return Encoders()  # cached latents need no encoders; validation videos need the VAE and text encoder
    source = audio_source(cfg)
    audio = None if source is None else load_audio_space(source).eval().requires_grad_(False)
    if cfg.model.encoders == "builtin":
        return Encoders(builtin_vae(), builtin_text_encoder(text_dim=text_dim, seed=cfg.trainer.seed,
                                                             text_len=text_len), audio=audio)
    folder = Path(cfg.model.encoders or cfg.model.checkpoint)
    if is_ovi_folder(folder):  # Ovi's download: the Wan2.2-TI2V-5B VAE and umT5 in their own folder
        folder = folder / WAN_DIR
    wan = load_wan(folder, components=("vae", "text_encoder") + (("clip",) if image_branch else ()))
    for module in (wan.vae, wan.text_encoder.model, wan.clip):
        if module is not None:
            module.eval().requires_grad_(False)
    return Encoders(wan.vae, wan.text_encoder, wan.clip, audio)
