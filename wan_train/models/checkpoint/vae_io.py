"""``load_vae``: a Wan2.1 or Wan2.2 VAE from the files users have.

Readable sources:
  - the official ``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth`` (``torch.load(weights_only=True)``, memory-mapped);
  - a single ``.safetensors`` file in the official naming (ComfyUI's ``wan_2.1_vae.safetensors``) or the
    diffusers naming;
  - a diffusers ``AutoencoderKLWan`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), or a
    pipeline folder (``model_index.json``) whose ``vae/`` holds one;
  - an official Wan checkpoint folder holding one of the official VAE files.

The version and widths are read from the config or the tensor shapes; every key and shape is checked before
the model (built on the meta device) takes the tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.state_dict import assign_parameters, check_state_dict, read_state_dict
from wan_train.models.checkpoint.vae_layouts import (
    DIFFUSERS_CLASS, config_from_diffusers, config_from_shapes, detect_layout, official_to_diffusers,
)
from wan_train.models.checkpoint.wan_files import find_vae_file
from wan_train.models.vae.config import VAEConfig
from wan_train.models.vae.model import WanVAE
from wan_train.models.vae.tiling import Tiling

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"


def load_vae(path: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
             tiling: Tiling | None = None) -> WanVAE:
    """Read a Wan VAE (see the module docstring); frozen, in eval mode.

    dtype: cast the weights (None keeps the stored dtype; the official files are float32; bf16 is the GPU
    choice). device: where the weights go (default CPU). tiling: spatial tiling settings for encode/decode.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        path = _vae_in_folder(path)
    if path.is_dir():
        config = config_from_diffusers(_read_diffusers_config(path), str(path / "config.json"))
        tensors, layout, where = _read_diffusers_weights(path), "diffusers", path
    else:
        tensors = read_state_dict(path)
        layout, where = detect_layout(tensors), path
        config = config_from_shapes({k: tuple(v.shape) for k, v in tensors.items()}, layout, str(path))
    return _build(config, tensors, layout, where, dtype=dtype, device=device, tiling=tiling)


def _vae_in_folder(folder: Path) -> Path:
    """The diffusers VAE folder, or the official file, that a folder stands for."""
    if (folder / "model_index.json").is_file():
        folder = folder / "vae"
        if not folder.is_dir():
            raise CheckpointError(f"{folder.parent}: diffusers pipeline folder without a vae/ folder")
    if (folder / "config.json").is_file():
        return folder
    return find_vae_file(folder)


def _read_diffusers_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    try:
        config_json = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from None
    if config_json.get("_class_name") != DIFFUSERS_CLASS:
        raise CheckpointError(f"{config_path}: _class_name={config_json.get('_class_name')!r}; expected "
                              f"{DIFFUSERS_CLASS!r} (a Wan VAE)")
    return config_json


def _read_diffusers_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / f"{DIFFUSERS_WEIGHTS}.safetensors.index.json"
    single = folder / f"{DIFFUSERS_WEIGHTS}.safetensors"
    if index.is_file() or single.is_file():
        return read_state_dict(index if index.is_file() else single)
    raise CheckpointError(f"{folder}: neither {single.name} nor {index.name} (found: "
                          f"{sorted(p.name for p in folder.iterdir())})")


def _build(config: VAEConfig, tensors: dict[str, torch.Tensor], layout: str, where: Path, *,
           dtype: torch.dtype | None, device: torch.device | str | None, tiling: Tiling | None) -> WanVAE:
    with torch.device("meta"):
        model = WanVAE(config, tiling=tiling)
    names = {k: k for k in model.state_dict()} if layout == "official" else official_to_diffusers(model)
    expected = {names[k]: tuple(p.shape) for k, p in model.named_parameters()}
    what = f"a {config.version} VAE (base width {config.base_dim}/{config.decoder_base_dim}, {layout} layout)"
    check_state_dict(expected, {k: tuple(v.shape) for k, v in tensors.items()}, where=str(where), what=what)
    assign_parameters(model, {k: tensors[names[k]] for k in names}, dtype=dtype, device=device)
    model.latents_mean = torch.tensor(config.latents_mean, device=device).view(model.latents_mean.shape)
    model.latents_std = torch.tensor(config.latents_std, device=device).view(model.latents_std.shape)
    return model.eval()
