"""Which training runs have a twin-tower (audio-video) model, its architecture and where its audio latents come
from, and the extensions a run adds to its DiT (`extend`): shared by training (what to build) and inference (what
a run folder holds)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from wan_train.models import SIZES, OviConfig, OviDiT, WanDiT
from wan_train.models.checkpoint.ovi_folder import DIT_FILE, is_ovi_dit, is_ovi_folder
from wan_train.models.checkpoint.ovi_io import read_ovi_config
from wan_train.models.sizes import audio_tower


def twin_checkpoint(cfg: DictConfig) -> Path | None:
    """model.checkpoint's twin-tower DiT (an Ovi folder's model file, an Ovi DiT file, or a wan_train OviDiT folder:
    a run's export of a model given a voice with model.audio); None when it is not one."""
    path = cfg.model.checkpoint
    if not path or not Path(path).exists():
        return None
    path = Path(path)
    if is_ovi_folder(path):
        return path / DIT_FILE
    return path if is_ovi_dit(path) else None


def model_audio(cfg: DictConfig) -> str | None:
    """model.audio (run folders from before it record none)."""
    return OmegaConf.select(cfg, "model.audio", default=None)


def is_twin_run(cfg: DictConfig) -> bool:
    return SIZES[cfg.model.size].has_audio or bool(model_audio(cfg)) or twin_checkpoint(cfg) is not None


def audio_source(cfg: DictConfig) -> str | None:
    """The audio latent space of a twin run, for load_audio_space: model.audio, else the size's own ("mel" for
    quickstart-av), else the folder that holds Ovi's MMAudio files (model.encoders, or model.checkpoint). None for
    a video-only run."""
    if not is_twin_run(cfg):
        return None
    if model_audio(cfg):
        return model_audio(cfg)
    if SIZES[cfg.model.size].audio_vae == "mel":
        return "mel"
    return cfg.model.encoders if cfg.model.encoders not in (None, "builtin") else cfg.model.checkpoint


def twin_config(cfg: DictConfig) -> OviConfig | None:
    """The twin-tower architecture a run trains: its checkpoint's, its size's, or its size's video tower given an
    audio tower (model.audio), with its reference-voice slots (model.audio_references); None for a video-only
    run."""
    size = SIZES[cfg.model.size]
    if (path := twin_checkpoint(cfg)) is not None:
        config = read_ovi_config(path)
    elif size.has_audio:
        config = OviConfig(video=size.dit, audio=size.audio)
    elif model_audio(cfg):
        config = OviConfig(video=size.dit, audio=audio_tower(size.dit))
    else:
        return None
    slots = OmegaConf.select(cfg, "model.audio_references", default=0)
    return OviConfig(video=config.video, audio=config.audio.replace(references=slots)) if slots else config


def give_voice(dit: WanDiT, *, seed: int, activation_checkpointing: bool = False) -> OviDiT:
    """model.audio on a Wan DiT: a new audio tower of its widths (seeded by `seed`) and fusion modules; the video
    tower's fusion values start at zero, so the video output is the base's until they train."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        twin = OviDiT.with_audio_tower(dit, audio_tower(dit.config))
    twin.activation_checkpointing = activation_checkpointing
    return twin


def cut_fusion(dit: OviDiT) -> None:
    """model.fusion=false: every fusion value projection at zero and every fusion module frozen, so neither tower
    ever reads the other (the attention over the other modality then adds exactly zero)."""
    for tower in (dit.video_model, dit.audio_model):
        for block in tower.blocks:
            attn = block.cross_attn
            with torch.no_grad():
                attn.v_fusion.weight.zero_()
                attn.v_fusion.bias.zero_()
            for module in (attn.k_fusion, attn.v_fusion, attn.pre_attn_norm_fusion, attn.norm_k_fusion):
                module.requires_grad_(False)


def extend(cfg: DictConfig, dit: WanDiT | OviDiT) -> WanDiT | OviDiT:
    """The extensions a run adds to its DiT, new and trained (with the adapter too in a LoRA run), so the base's
    identity stays its own: reference slots and shot embeddings (zero), an audio tower (model.audio: its video
    fusion values zero), reference-voice slots (zero); and model.fusion=false's cut. Keys a run folder from before
    an extension lacks count as off."""
    def get(key: str, default):
        return OmegaConf.select(cfg, f"model.{key}", default=default)

    if get("references", 0):
        dit.extend_references(get("references", 0))
    if get("shots", 0):
        dit.extend_shots(get("shots", 0))
    if model_audio(cfg) and not isinstance(dit, OviDiT):
        dit = give_voice(dit, seed=cfg.trainer.seed + 1,
                         activation_checkpointing=get("activation_checkpointing", False)).train(dit.training)
    if get("audio_references", 0):
        dit.extend_audio_references(get("audio_references", 0))
    if isinstance(dit, OviDiT) and not get("fusion", True):
        cut_fusion(dit)
    return dit
