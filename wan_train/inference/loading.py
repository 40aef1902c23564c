"""What `generate.py ckpt=PATH` can load, as WanModels: a training run folder (its resolved config.yaml and the
newest weights in checkpoints/, or those of step=N), or a model folder / file in the official or diffusers layout.

A run folder names its model size, base checkpoint and encoders in config.yaml. The DiT weights come from the
newest `checkpoints/step=N.ckpt` (or its EMA shadow, `ema=True`). A run of one Wan2.2 A14B expert takes the
other expert from its base checkpoint; an `expert=both` run has one sub-run per expert."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from wan_train.inference.pipeline import WanModels
from wan_train.inference.presets import size_name, twin_size_name
from wan_train.inference.twin import audio_source, extend, twin_checkpoint, twin_config
from wan_train.lora import add_adapter, merge_adapter
from wan_train.models import (
    EXPERTS, CheckpointError, OviDiT, WanDiT, builtin_text_encoder, builtin_vae, find_wan_files, get_size, load_dit,
    load_ovi_dit, load_wan,
)
from wan_train.models.audio import load_audio_space
from wan_train.models.checkpoint.ovi_folder import WAN_DIR as OVI_WAN_DIR
from wan_train.models.checkpoint.ovi_folder import is_ovi_dit, is_ovi_folder, load_ovi
from wan_train.models.checkpoint.pickles import load_pickled
from wan_train.models.checkpoint.wan_files import OFFICIAL_EXPERT_DIRS

DIT_PREFIX = "dit."  # FlowMatchingModule.dit in a Lightning checkpoint's state_dict
EMA_STATE = "EMA"  # the EMA callback's entry in a Lightning checkpoint's "callbacks"


@dataclass
class Loaded:
    models: WanModels
    source: dict  # what was loaded from where (written beside every video)


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file() and not (path / "model_index.json").exists()


def run_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{step: file} of a run folder's checkpoints/step=N.ckpt."""
    found = {}
    for path in (Path(run_dir) / "checkpoints").glob("*.ckpt"):
        match = re.search(r"step=(\d+)", path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def run_checkpoint(run_dir: Path, step: int | None) -> tuple[int, Path]:
    """(step, file): the checkpoint of `step`, or the newest with step=None; a clear error when there is none."""
    found = run_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir}: no checkpoints/step=N.ckpt yet (the run has not saved a checkpoint)")
    if step is None:
        return max(found.items())
    if step not in found:
        raise CheckpointError(f"{run_dir}: no checkpoint of step={step}; it has steps {sorted(found)}")
    return step, found[step]


def load(ckpt: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
         ema: bool = False, encoders: str | None = None, boundary: float | None = None,
         step: int | None = None) -> Loaded:
    """encoders: a Wan folder with the VAE + umT5 (+ CLIP) when `ckpt` has none (a lone DiT file or folder);
    boundary: overrides the MoE boundary (the named size's, or a diffusers pipeline's boundary_ratio);
    step: a run folder's checkpoint of that training step instead of the newest."""
    path = Path(ckpt)
    if not path.exists():
        raise FileNotFoundError(f"ckpt={path}: no such file or folder (expected a training run folder, a Wan model "
                                "folder or a DiT .safetensors file)")
    if is_ovi_folder(path) or is_ovi_dit(path):
        if step is not None or ema:
            raise ValueError(f"step= and ema= pick from a training run folder; ckpt={path} is an Ovi checkpoint")
        loaded = _load_ovi(path, device=device, dtype=dtype, encoders=encoders)
    elif is_run_folder(path):
        loaded = _load_run(path, device=device, dtype=dtype, ema=ema, step=step)
    elif step is not None:
        raise ValueError(f"step={step} picks a checkpoint of a training run folder; ckpt={path} is not one")
    else:
        loaded = _load_model(path, device=device, dtype=dtype, encoders=encoders, boundary=boundary)
    if boundary is not None:
        loaded.models.boundary = boundary
    return loaded


# ------------------------------------------------------------------------------------------------ run folders
def _load_run(run_dir: Path, *, device, dtype, ema: bool, step: int | None) -> Loaded:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    size = get_size(cfg.model.size)
    expert = cfg.expert.name
    dits, source = {}, {"run": str(run_dir), "size": size.name}
    if expert == "both":
        for name in EXPERTS:
            dits[name], source[name] = dit_from_run(run_dir / name, cfg, name, dtype=dtype, ema=ema,
                                                     step=step)
    elif expert in EXPERTS:
        dits[expert], source[expert] = dit_from_run(run_dir, cfg, expert, dtype=dtype, ema=ema, step=step)
        other = next(e for e in EXPERTS if e != expert)
        if not cfg.model.checkpoint:
            raise CheckpointError(f"{run_dir}: this run trained the {expert} expert only and has no base "
                                  f"model.checkpoint to take the {other} expert from")
        dits[other] = load_dit(cfg.model.checkpoint, expert=other, dtype=dtype)
        source[other] = str(cfg.model.checkpoint)
    else:
        dits[None], source["dit"] = dit_from_run(run_dir, cfg, None, dtype=dtype, ema=ema, step=step)
    source_of_encoders = cfg.model.encoders or cfg.model.checkpoint
    if source_of_encoders and source_of_encoders != "builtin" and is_ovi_folder(Path(source_of_encoders)):
        source_of_encoders = str(Path(source_of_encoders) / OVI_WAN_DIR)  # Ovi's download: the Wan2.2 VAE, umT5
    vae, text_encoder, clip = _encoders(source_of_encoders, size.dit.text_dim, seed=cfg.trainer.seed,
                                        text_len=size.dit.text_len, image_branch=size.dit.has_image_branch,
                                        where=run_dir)
    audio = audio_source(cfg)
    models = WanModels(dits, vae.to(device), text_encoder.to(device), clip.to(device) if clip is not None else None,
                       boundary=size.boundary if size.is_moe else None,
                       size=size.name if audio is None else _twin_size(dits[None]),
                       audio_vae=None if audio is None else load_audio_space(audio, device=device))
    for dit in dits.values():
        dit.eval().to(device)
    return Loaded(models, source)


def dit_from_run(run_dir: Path, cfg, expert: str | None, *, dtype, ema: bool, step: int | None,
                 merge: bool = True) -> tuple[WanDiT, str]:
    """The DiT of the checkpoint of `step` (None: the newest) of the run folder `run_dir` (an expert's own folder
    in expert=both runs) with the run's config `cfg`; for a LoRA run its base (model.checkpoint) with the adapter
    merged in, or injected and not merged (`merge=False`)."""
    step, path = run_checkpoint(run_dir, step)
    if path.is_dir():  # FSDP / DeepSpeed shards: read their consolidation (python -m wan_train.training.consolidate)
        single = run_dir / "consolidated" / path.name
        if not single.is_file():
            raise CheckpointError(f"{path} is a sharded checkpoint (FSDP / DeepSpeed): run `python -m "
                                  f"wan_train.training.consolidate {run_dir} --step {step}` first")
        path = single
    state = load_pickled(path)  # memory-mapped
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    weights = {k[len(DIT_PREFIX):]: v for k, v in state["state_dict"].items() if k.startswith(DIT_PREFIX)}
    if ema:
        shadow = state.get("callbacks", {}).get(EMA_STATE, {}).get("shadow")
        if not shadow:
            raise CheckpointError(f"{path}: ema=true, but this run kept no EMA (trainer.ema_decay was not set)")
        weights.update(shadow)
    what = f"{path} (step {step}{', EMA' if ema else ''})"
    if cfg.lora.enabled:
        dit = _lora_dit(cfg, expert, weights, path=path)
        return (merge_adapter(dit) if merge else dit).to_dtype(dtype), f"{what}, LoRA on {cfg.model.checkpoint}"
    twin = twin_config(cfg)
    if twin is not None:
        config, dit = twin, OviDiT(twin)
    else:
        config = get_size(cfg.model.size).dit.replace(**_extensions(cfg))
        dit = WanDiT(config)
    missing, unexpected = dit.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: the DiT weights do not match size {config}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return dit.to_dtype(dtype), what


def _lora_dit(cfg, expert: str | None, weights: dict, *, path: Path) -> WanDiT | OviDiT:
    """The run's base with its adapter injected as in training and loaded (folded in by merge_adapter)."""
    lora = cfg.lora
    if not cfg.model.checkpoint or not Path(cfg.model.checkpoint).exists():
        raise CheckpointError(f"{path}: a LoRA run needs its base model.checkpoint={cfg.model.checkpoint!r}, "
                              "which is not there")
    if (twin := twin_checkpoint(cfg)) is not None:  # adapters on the chosen towers (and the fusion projections)
        dit = load_ovi_dit(twin, dtype=torch.float32)
        add_adapter(dit, target=lora.target, rank=lora.rank, alpha=lora.alpha, rslora=lora.rslora, dora=lora.dora,
                    towers=list(lora.towers), fusion=lora.fusion)
    else:
        dit = load_dit(cfg.model.checkpoint, expert=expert, dtype=torch.float32)
        add_adapter(dit, target=lora.target, rank=lora.rank, alpha=lora.alpha, rslora=lora.rslora, dora=lora.dora)
    dit = extend(cfg, dit)  # trained beside the adapter, as wan_train.training.run.prepare adds them
    trained = {n for n, p in dit.named_parameters() if p.requires_grad}
    if set(weights) != trained:
        raise CheckpointError(f"{path}: the adapter in the checkpoint does not match the run's lora settings: "
                              f"missing {sorted(trained - set(weights))[:5]}, "
                              f"unexpected {sorted(set(weights) - trained)[:5]}")
    dit.load_state_dict(weights, strict=False)
    return dit


def _twin_size(dit: OviDiT) -> str | None:
    return twin_size_name(dit.ovi_config.video, dit.ovi_config.audio)


def _extensions(cfg) -> dict[str, int]:
    """The run's reference slots and shot embeddings; run folders from before these extensions record none."""
    return {key: OmegaConf.select(cfg, f"model.{key}", default=0) for key in ("references", "shots")}


def _encoders(source: str | None, text_dim: int, *, seed: int, text_len: int, image_branch: bool, where: Path):
    if source == "builtin":
        return builtin_vae(), builtin_text_encoder(text_dim=text_dim, seed=seed, text_len=text_len), None
    if not source:
        raise CheckpointError(f"{where}: no encoders to generate with: the run trained on cached latents from a "
                              "random-init DiT; pass encoders=<a Wan folder with the VAE and umT5>")
    wan = load_wan(source, components=("vae", "text_encoder") + (("clip",) if image_branch else ()))
    return wan.vae, wan.text_encoder, wan.clip


# ---------------------------------------------------------------------------------------------- model folders
def _load_ovi(path: Path, *, device, dtype, encoders: str | None) -> Loaded:
    """An Ovi checkpoint folder, or an Ovi DiT (file or wan_train folder) with encoders=<the Ovi folder>."""
    if not is_ovi_folder(path) and encoders is None:
        raise CheckpointError(f"ckpt={path} is an Ovi DiT without its encoders: pass encoders=<the Ovi checkpoint "
                              "folder, with Wan2.2-TI2V-5B/ and MMAudio/>")
    ovi = load_ovi(path, root=None if is_ovi_folder(path) and encoders is None else encoders, dtype=dtype,
                   device=device)
    cfg = ovi.dit.ovi_config
    name = twin_size_name(cfg.video, cfg.audio)
    models = WanModels({None: ovi.dit.eval()}, ovi.vae, ovi.text_encoder, size=name, audio_vae=ovi.audio_vae)
    return Loaded(models, {"model": str(path), **ovi.files, "size": name})


def _load_model(path: Path, *, device, dtype, encoders: str | None, boundary: float | None) -> Loaded:
    experts = _experts_in(path)
    dits = {e: load_dit(path, expert=e, dtype=dtype, device=device).eval() for e in experts}
    config = next(iter(dits.values())).config
    moe = experts != (None,)
    name = size_name(config, moe=moe)
    if moe and boundary is None:
        boundary = _pipeline_boundary(path) or (get_size(name).boundary if name else None)
        if boundary is None:
            raise CheckpointError(f"{path}: two experts but no known boundary; pass boundary=0.875 (T2V) or 0.9 (I2V)")
    folder = encoders or (str(path) if path.is_dir() else None)
    if folder is None:
        raise CheckpointError(f"ckpt={path} is a DiT file without encoders: pass encoders=<a Wan folder>")
    wan = load_wan(folder, dtype=dtype, device=device,
                   components=("vae", "text_encoder") + (("clip",) if config.has_image_branch else ()))
    models = WanModels(dits, wan.vae, wan.text_encoder, wan.clip, boundary=boundary if moe else None, size=name)
    stored = next(iter(dits.values())).quantization  # a quantized file's storage, in every video's settings
    return Loaded(models, {"model": str(path), "encoders": folder, "size": name,
                           **({"quantization": stored} if stored else {})})


def _experts_in(path: Path) -> tuple[str | None, ...]:
    if path.is_dir():
        files = find_wan_files(path)
        if files.layout == "official" and all((path / d).is_dir() for d in OFFICIAL_EXPERT_DIRS):
            return EXPERTS
        if files.layout == "diffusers" and (path / "transformer_2").is_dir():
            return EXPERTS
    return (None,)


def _pipeline_boundary(path: Path) -> float | None:
    index = path / "model_index.json"
    return json.loads(index.read_text()).get("boundary_ratio") if index.is_file() else None
