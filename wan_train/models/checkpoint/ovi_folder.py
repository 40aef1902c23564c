"""Ovi's checkpoint folder as its ``download_weights.py`` lays it out (ovi_facts.md §1), and ``load_ovi``:

    CKPT_DIR/Ovi/model.safetensors                         the twin-tower DiT (720x720 5 s; model_960x960.safetensors,
                                                           model_960x960_10s.safetensors for the others)
    CKPT_DIR/Wan2.2-TI2V-5B/Wan2.2_VAE.pth                 the video VAE
    CKPT_DIR/Wan2.2-TI2V-5B/models_t5_umt5-xxl-enc-bf16.pth + google/umt5-xxl/   the text encoder
    CKPT_DIR/MMAudio/ext_weights/v1-16.pth, best_netG.pt   the audio VAE and vocoder

The DiT may also be given on its own (an Ovi .safetensors file or a wan_train OviDiT folder) with the folder that
holds the rest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wan_train.models.audio import load_audio_autoencoder
from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.ovi_io import CLASS_NAME, load_ovi_dit
from wan_train.models.checkpoint.safetensors_io import read_header
from wan_train.models.checkpoint.wan_folder import load_wan
from wan_train.models.dit.fusion import OviDiT

DIT_FILE = Path("Ovi") / "model.safetensors"
WAN_DIR = Path("Wan2.2-TI2V-5B")
AUDIO_VAE_FILE = Path("MMAudio") / "ext_weights" / "v1-16.pth"
VOCODER_FILE = Path("MMAudio") / "ext_weights" / "best_netG.pt"


def is_ovi_folder(path: Path) -> bool:
    return path.is_dir() and (path / "Ovi").is_dir() and (path / WAN_DIR).is_dir()


def is_ovi_dit(path: Path) -> bool:
    """An Ovi DiT on its own: a .safetensors file of twin-tower keys, or a wan_train OviDiT folder."""
    if path.is_file() and path.suffix == ".safetensors":
        try:
            entries, _ = read_header(path)
        except CheckpointError:
            return False
        return any(k.startswith("audio_model.") for k in entries) and any(k.startswith("video_model.") for k in entries)
    config = path / "config.json"
    try:
        return path.is_dir() and config.is_file() and json.loads(config.read_text()).get("_class_name") == CLASS_NAME
    except json.JSONDecodeError:
        return False


@dataclass
class OviComponents:
    dit: OviDiT
    vae: nn.Module
    text_encoder: object
    audio_vae: nn.Module
    files: dict[str, str]  # what came from where


def load_ovi(path: str | Path, *, root: str | Path | None = None, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> OviComponents:
    """Everything Ovi generates with. path: the checkpoint folder, or the DiT alone (then `root` is the folder
    with Wan2.2-TI2V-5B/ and MMAudio/). dtype casts the DiT, the video VAE and the text encoder; the audio
    autoencoder stays float32 (its files are float32, and it is small)."""
    path = Path(path)
    if root is None:
        if not is_ovi_folder(path):
            raise CheckpointError(f"{path}: not an Ovi checkpoint folder (expected {DIT_FILE}, {WAN_DIR}/ and "
                                  f"{AUDIO_VAE_FILE.parent}/ inside)")
        root, dit_path = path, path / DIT_FILE
    else:
        root, dit_path = Path(root), path
    for needed in (dit_path, root / WAN_DIR, root / AUDIO_VAE_FILE, root / VOCODER_FILE):
        if not needed.exists():
            raise CheckpointError(f"{needed}: not found (an Ovi checkpoint needs {DIT_FILE}, {WAN_DIR}/, "
                                  f"{AUDIO_VAE_FILE} and {VOCODER_FILE})")
    dit = load_ovi_dit(dit_path, dtype=dtype, device=device)
    wan = load_wan(root / WAN_DIR, dtype=dtype, device=device, components=("vae", "text_encoder"))
    audio_vae = load_audio_autoencoder(vae=root / AUDIO_VAE_FILE, vocoder=root / VOCODER_FILE, device=device)
    files = {"dit": str(dit_path), "encoders": str(root / WAN_DIR), "audio_vae": str(root / AUDIO_VAE_FILE),
             "vocoder": str(root / VOCODER_FILE)}
    return OviComponents(dit, wan.vae, wan.text_encoder, audio_vae, files)
