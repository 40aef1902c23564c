"""LoRA adapters written in the layouts other tools load, and read back from any of them.

`write_lora` is the inverse of `load_lora` (adapters.py): what it writes reads back as the same A [r, in], B [out, r]
and scale = alpha / r, bit for bit. Per format (`<m>`: our official module name, e.g. `blocks.0.self_attn.q`):

    peft       folder: adapter_model.safetensors with `base_model.model.<m>.lora_A.weight` / `.lora_B.weight`, and
               adapter_config.json (peft's LoraConfig: r, lora_alpha, rank_pattern, alpha_pattern, target_modules),
               as PeftModel.save_pretrained writes them; PeftModel.from_pretrained loads it.
    comfyui    `diffusion_model.<m>.lora_down.weight` (A) / `.lora_up.weight` (B) / `.alpha` (ComfyUI's Wan keys).
    diffusers  `transformer.<m in diffusers naming>.lora_A.weight` / `.lora_B.weight` (`blocks.0.attn1.to_q`), alpha in
               the `lora_adapter_metadata` JSON with "transformer."-prefixed keys, as WanPipeline.save_lora_weights
               writes it; WanPipeline.load_lora_weights reads it (WanTransformer3DModel.load_lora_adapter only
               with use_safetensors=True: without it diffusers drops the metadata and takes alpha = r everywhere).
    kohya      `lora_unet_<m with '.' -> '_'>.lora_down.weight` / `.lora_up.weight` / `.alpha` plus `ss_network_*`
               metadata (kohya sd-scripts / musubi-tuner's networks.lora_wan).

alpha = scale * r is written as the shortest decimal that divides back to exactly `scale` (8, not 7.999999999999999).
`.alpha` tensors are float32 whatever the factor dtype (a bf16 alpha would round 0.7 to 0.69921875), so the scale
reads back exactly whenever alpha is a float32 number (integers, halves, any bf16 value); JSON (peft, diffusers)
keeps the float64 alpha as is. (For a few arbitrary scales and ranks no float alpha divides back, e.g. 0.1 with
r = 3; those read back one ulp away.)

Which known loaders of each format read a file holding a given set of modules (diffusers reads comfyui and kohya
files only for block Linears): consumers.py.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from wan_train.fileio.durable import atomic_directory, atomic_path
from wan_train.lora.adapters import LoraModule, LoraWeights, load_lora
from wan_train.models import CheckpointError, WanDiT
from wan_train.models.checkpoint.dit_layouts import DIFFUSERS, from_official

FORMATS = ("peft", "comfyui", "diffusers", "kohya")
# what `path` is per format: peft writes a folder (save_pretrained), the others one .safetensors file
SUFFIX = {"peft": "", "comfyui": ".safetensors", "diffusers": ".safetensors", "kohya": ".safetensors"}
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"  # peft's file names in the folder
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
KOHYA_NETWORK_MODULE = "networks.lora_wan"  # musubi-tuner's Wan LoRA module, recorded as ss_network_module


@dataclass(frozen=True)
class _Layout:
    module: Callable[[str], str]  # our module name -> the module path the file uses
    down: str  # key suffix of A [r, in]
    up: str  # key suffix of B [out, r]
    alpha_tensors: bool  # whether alpha is a `.alpha` tensor per module (else in JSON beside / inside the file)


_LAYOUTS = {
    "peft": _Layout(lambda m: f"base_model.model.{m}", ".lora_A.weight", ".lora_B.weight", False),
    "comfyui": _Layout(lambda m: f"diffusion_model.{m}", ".lora_down.weight", ".lora_up.weight", True),
    "diffusers": _Layout(lambda m: f"transformer.{from_official(m, DIFFUSERS)}", ".lora_A.weight", ".lora_B.weight",
                         False),
    "kohya": _Layout(lambda m: "lora_unet_" + m.replace(".", "_"), ".lora_down.weight", ".lora_up.weight", True),
}


def write_lora(path: str | os.PathLike, modules: Mapping[str, LoraModule], *, format: str,
               metadata: Mapping[str, str] | None = None, dtype: torch.dtype | None = None) -> list[Path]:
    """Write `modules` (keys: our official module names such as `blocks.0.self_attn.q`, `blocks.3.ffn.0`) to `path`
    in `format` (module docstring); returns the files written. dtype: the factor dtype (None: as given); alpha
    never takes it. Every file is written atomically (a temp file beside it, fsynced, then renamed); a peft folder
    is assembled beside `path` and replaces it whole (wan_train.fileio.durable.atomic_directory). metadata: extra
    safetensors string metadata (e.g. {"wan_train.base_hash": ...}) stored in every .safetensors written."""
    if format not in FORMATS:
        raise ValueError(f"write_lora: format={format!r}; expected one of {FORMATS}")
    path = Path(path)
    _check_path(path, format)
    _check_modules(modules, dtype)
    layout = _LAYOUTS[format]
    names = {m: layout.module(m) for m in modules}  # our module -> the module path in the file
    _check_distinct(names, format)
    alphas = {m: _alpha(mod.scale, mod.rank) for m, mod in modules.items()}

    tensors: dict[str, torch.Tensor] = {}
    for m, mod in modules.items():
        tensors[names[m] + layout.down] = _factor(mod.A, dtype)
        tensors[names[m] + layout.up] = _factor(mod.B, dtype)
        if layout.alpha_tensors:
            tensors[names[m] + ".alpha"] = torch.tensor(alphas[m], dtype=torch.float32)

    own = _format_metadata(format, modules, alphas, names)
    file_metadata = {**own, **_check_metadata(metadata, own)}

    if format != "peft":
        _atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=file_metadata))
        return [path]
    config_json = _peft_config(modules, alphas)
    with atomic_directory(path) as folder:  # weights and config swapped in together, never one without the other
        save_file(tensors, str(folder / PEFT_WEIGHTS), metadata=file_metadata)
        (folder / PEFT_CONFIG).write_text(json.dumps(config_json, indent=2, sort_keys=True))
    return [path / PEFT_WEIGHTS, path / PEFT_CONFIG]


def read_lora(path: str | os.PathLike, *, model: WanDiT, alpha: float | None = None) -> LoraWeights:
    """load_lora for a file of any format, or a peft save_pretrained folder (its adapter_model.safetensors, with
    alpha from the adapter_config.json beside it)."""
    path = Path(path)
    if path.is_dir():
        if not (path / PEFT_WEIGHTS).is_file():
            raise CheckpointError(f"{path}: a folder without {PEFT_WEIGHTS} (expected a peft save_pretrained folder "
                                  f"or a LoRA .safetensors file)")
        path = path / PEFT_WEIGHTS
    return load_lora(path, model=model, alpha=alpha)


# ------------------------------------------------------------------------------------------------ alpha, config

def _alpha(scale: float, rank: int) -> float:
    """alpha = scale * r, as the shortest decimal with alpha / r == scale exactly (what load_lora computes)."""
    exact = scale * rank
    shortest = (float(f"{exact:.{digits}g}") for digits in range(1, 18))
    neighbours = (math.nextafter(exact, math.inf), math.nextafter(exact, -math.inf))
    for alpha in (*shortest, *neighbours):
        if alpha / rank == scale:
            return alpha
    return exact  # no float divides back to `scale` (0.1 with r=3): it reads back an ulp away


def _lora_config(modules: Mapping[str, LoraModule], alphas: Mapping[str, float], names: Mapping[str, str]) -> dict:
    """peft LoraConfig fields keyed by the module names in `names` (our module -> its name in the config): the most
    common rank and alpha as r / lora_alpha, rank_pattern / alpha_pattern only for modules that differ (as diffusers'
    get_peft_kwargs builds them). Pattern keys are whole module paths: peft matches them as `(.*\\.)?key$`."""
    ranks = {names[m]: mod.rank for m, mod in modules.items()}
    alpha_of = {names[m]: a for m, a in alphas.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    lora_alpha = Counter(alpha_of.values()).most_common(1)[0][0]
    return {
        "r": r, "lora_alpha": _number(lora_alpha),
        "rank_pattern": {n: v for n, v in ranks.items() if v != r},
        "alpha_pattern": {n: _number(v) for n, v in alpha_of.items() if v != lora_alpha},
        "target_modules": sorted(ranks),
    }


def _format_metadata(format: str, modules: Mapping[str, LoraModule], alphas: Mapping[str, float],
                     names: Mapping[str, str]) -> dict[str, str]:
    """The safetensors metadata a format itself writes (user metadata may not override it)."""
    own = {"format": "pt"}  # as peft / diffusers / transformers write it; some loaders check it
    if format == "diffusers":
        # the transformer's LoraConfig with every key prefixed "transformer." (diffusers' _pack_dict_with_prefix),
        # dumped with indent=2, sort_keys=True as diffusers' write_lora_layers does. Only the five fields that
        # matter: diffusers calls LoraConfig(**config), and a newer peft's extra fields would break an older peft.
        diffusers_names = {m: n.removeprefix("transformer.") for m, n in names.items()}
        config = {f"transformer.{k}": v for k, v in _lora_config(modules, alphas, diffusers_names).items()}
        own[DIFFUSERS_METADATA_KEY] = json.dumps(config, indent=2, sort_keys=True)
    elif format == "kohya":
        ranks, alpha_values = {mod.rank for mod in modules.values()}, set(alphas.values())
        own["ss_network_module"] = KOHYA_NETWORK_MODULE
        # "Dynamic" is what kohya's resize_lora writes when modules differ; the .alpha tensors are what loaders use
        own["ss_network_dim"] = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
        own["ss_network_alpha"] = str(alpha_values.pop()) if len(alpha_values) == 1 else "Dynamic"
    return own


def _peft_config(modules: Mapping[str, LoraModule], alphas: Mapping[str, float]) -> dict:
    """adapter_config.json as PeftModel.save_pretrained writes it: LoraConfig.to_dict() with sets as lists,
    inference_mode true, peft_type as its string (an Enum in to_dict())."""
    config = LoraConfig(init_lora_weights=True, **_lora_config(modules, alphas, {m: m for m in modules}))
    config_json = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    return {**config_json, "peft_type": "LORA", "inference_mode": True}


def _number(x: float) -> int | float:
    return int(x) if x.is_integer() else x  # lora_alpha 8, not 8.0, as peft configs carry it


# ------------------------------------------------------------------------------------------------ checks, I/O

def _check_path(path: Path, format: str) -> None:
    if format == "peft":
        if path.exists() and not path.is_dir():
            raise ValueError(f"write_lora: {path} is a file; format='peft' writes a folder (save_pretrained)")
    elif path.suffix != SUFFIX[format]:
        raise ValueError(f"write_lora: {path}: format={format!r} writes a {SUFFIX[format]} file")
    elif path.is_dir():
        raise ValueError(f"write_lora: {path} is a folder; format={format!r} writes a {SUFFIX[format]} file")


def _check_modules(modules: Mapping[str, LoraModule], dtype: torch.dtype | None) -> None:
    if not modules:
        raise ValueError("write_lora: no modules to write")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"write_lora: dtype={dtype} is not a floating dtype")
    for name, m in modules.items():
        A, B = m.A, m.B
        if A.ndim != 2 or B.ndim != 2:
            raise ValueError(f"write_lora: module {name}: A {tuple(A.shape)} and B {tuple(B.shape)} must be 2-D "
                             f"(A [r, in], B [out, r])")
        if A.shape[0] != B.shape[1] or A.shape[0] == 0:
            raise ValueError(f"write_lora: module {name}: rank mismatch, A {tuple(A.shape)} has r={A.shape[0]} rows, "
                             f"B {tuple(B.shape)} has {B.shape[1]} columns (need equal and >= 1)")
        if not (A.is_floating_point() and B.is_floating_point()):
            raise ValueError(f"write_lora: module {name}: factors must be floating ({A.dtype}, {B.dtype})")
        # alpha 0 is read as "alpha = rank" by kohya-style loaders, so a zero scale would not stay zero
        if not math.isfinite(m.scale) or m.scale == 0:
            raise ValueError(f"write_lora: module {name}: scale={m.scale} must be finite and non-zero")


def _check_distinct(names: Mapping[str, str], format: str) -> None:
    """Two modules under one file name (kohya's '.' -> '_' can merge names) would overwrite each other."""
    seen: dict[str, str] = {}
    for ours, theirs in names.items():
        if theirs in seen:
            raise ValueError(f"write_lora: modules {seen[theirs]} and {ours} both become {theirs} in format={format!r}")
        seen[theirs] = ours


def _check_metadata(metadata: Mapping[str, str] | None, own: Mapping[str, str]) -> dict[str, str]:
    metadata = dict(metadata or {})
    bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise ValueError(f"write_lora: metadata keys and values must be strings (safetensors): {bad}")
    clash = sorted(set(metadata) & set(own))
    if clash:
        raise ValueError(f"write_lora: metadata keys {clash} are written by the format itself")
    return metadata


def _factor(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.detach().to("cpu", dtype or t.dtype).contiguous()


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file beside `path`, fsynced and renamed over it only once complete (no reader sees half
    a file, nor after a power cut); the file gets the umask's permissions (wan_train.fileio.durable)."""
    with atomic_path(path) as tmp:
        write(tmp)
