"""Cross-field checks of a composed config, run before anything is built: each failure names the key, the
value and what is allowed."""

import signal
from collections.abc import Collection
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from wan_train.inference.twin import audio_source, is_twin_run
from wan_train.config.demo import PENDING
from wan_train.data.datamodule import KINDS
from wan_train.data.shards import missing_shards
from wan_train.flow import SAMPLER_KINDS, SIGMA_MODES, WEIGHTINGS, SigmaSampler
from wan_train.inference.outputs import PREVIEWS
from wan_train.inference.presets import fast, official, with_overrides
from wan_train.inference.solvers import SOLVERS
from wan_train.lora import TARGET_PRESETS
from wan_train.lora.registry import NAME
from wan_train.memory import BASE_DTYPES, parse_memory
from wan_train.models.dit.fp8 import GRANULARITIES
from wan_train.models import EXPERTS, SIZES, VAE_CONFIGS, builtin_vae
from wan_train.models.dit.compile import COMPILE_MODES
from wan_train.models.dit.config import MAX_REFERENCES
from wan_train.models.dit.layers import ATTENTION_BACKENDS
from wan_train.parallel.strategy import ENGINES, SHARDING, check_deepspeed_config, deepspeed_config

SCHEDULES = ("constant", "cosine")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
CLUSTERS = ("local", "slurm")
ENCODER_PLACEMENTS = ("device", "swap", "cpu")
LORA_KINDS = ("style", "character")


class ConfigError(ValueError):
    pass


def _allowed(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: expected one of {list(allowed)}")


def validate(cfg: DictConfig, *, pending: Collection[str] = PENDING) -> None:
    """Every check of a train config, before anything is made or loaded. `pending`: shard folders that will be
    made before training, not required to exist yet (the demo data train.py makes on first use)."""
    _allowed("model.size", cfg.model.size, SIZES)
    size = SIZES[cfg.model.size]
    for key in ("model.checkpoint", "model.encoders"):
        value = cfg.model[key.split(".")[1]]
        if value not in (None, "builtin") and not Path(value).exists():
            raise ConfigError(f"{key}={value!r}: no such file or folder")
    if size.is_moe:
        _allowed("expert.name", cfg.expert.name, (*EXPERTS, "both"))
        if cfg.expert.name == "both" and cfg.expert.alternate_every < 1:
            raise ConfigError(f"expert.alternate_every={cfg.expert.alternate_every}: must be >= 1")
    elif cfg.expert.name is not None:
        raise ConfigError(f"expert.name={cfg.expert.name!r}: model.size={size.name!r} has no experts (use expert=none)")
    if size.vae == "pixel" and cfg.model.encoders != "builtin":
        raise ConfigError(f"model.encoders={cfg.model.encoders!r}: model.size={size.name!r} uses the pixel-space "
                          "stand-in, which only the builtin encoders provide (model.encoders=builtin)")
    if cfg.model.checkpoint is None and cfg.model.encoders is None and cfg.data.kind == "video":
        raise ConfigError("model.encoders=None with model.checkpoint=None: raw-video training needs a VAE and text "
                          "encoder (a Wan folder, or 'builtin' for the quickstart stand-ins), or data=latents")
    _validate_data(cfg, stride=vae_stride(size.vae) * size.dit.patch_size[1])
    _validate_shard_paths(cfg, pending=pending)
    _allowed("flow.sampler.kind", cfg.flow.sampler.kind, SAMPLER_KINDS)
    _allowed("flow.weighting", cfg.flow.weighting, WEIGHTINGS)
    SigmaSampler(**cfg.flow.sampler)  # its own range checks
    _allowed("optim.schedule", cfg.optim.schedule, SCHEDULES)
    _allowed("trainer.precision", cfg.trainer.precision, PRECISIONS)
    _validate_strategy(cfg)
    _allowed("cluster.name", cfg.cluster.name, CLUSTERS)
    if cfg.cluster.requeue and not hasattr(signal, str(cfg.cluster.requeue_signal)):
        raise ConfigError(f"cluster.requeue_signal={cfg.cluster.requeue_signal!r}: not a signal name (e.g. SIGUSR1)")
    if cfg.lora.enabled:
        _validate_lora(cfg)
    _validate_memory(cfg)
    _validate_references(cfg)
    _validate_audio(cfg)
    _validate_kernels(cfg)
    for key in ("max_steps", "log_every_n_steps", "val_every_n_steps", "checkpoint_every_n_steps"):
        if cfg.trainer[key] < 1:
            raise ConfigError(f"trainer.{key}={cfg.trainer[key]}: must be >= 1")
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).is_file():
        raise ConfigError(f"resume={cfg.resume!r}: expected 'auto', 'never' or an existing .ckpt file")
    _validate_validation(cfg, stride=vae_stride(size.vae) * size.dit.patch_size[1])


def _validate_kernels(cfg: DictConfig) -> None:
    """model.compile / compile_mode and model.attention."""
    _allowed("model.compile_mode", cfg.model.compile_mode, COMPILE_MODES)
    _allowed("model.attention", cfg.model.attention, ATTENTION_BACKENDS)
    on_cpu = cfg.trainer.accelerator == "cpu" or (cfg.trainer.accelerator == "auto" and not torch.cuda.is_available())
    if cfg.model.attention in ("flash", "cudnn") and on_cpu:
        raise ConfigError(f"model.attention={cfg.model.attention!r}: a CUDA kernel; on the CPU use sdpa")
    if cfg.model.attention == "flex" and on_cpu:
        raise ConfigError("model.attention='flex': torch's FlexAttention has no backward on the CPU; train with "
                          "sdpa there (flex is for CUDA, best with model.compile=true)")
    if cfg.model.attention != "sdpa" and is_twin_run(cfg):
        raise ConfigError(f"model.attention={cfg.model.attention!r} with an audio-video model: its fusion blocks use "
                          "sdpa only so far")
    if cfg.model.compile and is_twin_run(cfg):
        raise ConfigError("model.compile with an audio-video model: its fusion blocks run both towers' layers "
                          "directly, not as blocks; compile is for Wan DiTs so far")
    if cfg.model.compile and cfg.strategy.sequence_parallel > 1:
        raise ConfigError("model.compile with strategy.sequence_parallel > 1: Ulysses attention's all-to-all inside "
                          "a compiled block is not supported yet; set one of them off")


def _validate_validation(cfg: DictConfig, *, stride: int) -> None:
    """Validation videos: the settings must make a Sampling the model can run (checked here, not at step N)."""
    val = cfg.validation
    if val.every_n_steps is None:
        return
    if val.every_n_steps < 1:
        raise ConfigError(f"validation.every_n_steps={val.every_n_steps}: must be >= 1, or null for no videos")
    if not val.prompts:
        raise ConfigError("validation.prompts is empty: give the prompts of the validation videos")
    _allowed("validation.preview", val.preview, PREVIEWS)
    if val.solver is not None:
        _allowed("validation.solver", val.solver, SOLVERS)
    if cfg.data.kind == "latents" and cfg.model.encoders is None and cfg.model.checkpoint is None:
        raise ConfigError("validation.every_n_steps is set with data=latents and no model.encoders: validation "
                          "videos need the VAE and text encoder (set model.encoders to a Wan folder)")
    try:
        settings = with_overrides(fast(official(cfg.model.size)), val)
    except ValueError as error:
        raise ConfigError(f"validation: {error}") from None
    for key in ("width", "height"):
        if getattr(settings, key) % stride:
            raise ConfigError(f"validation.{key}={getattr(settings, key)}: must be a multiple of {stride} (VAE "
                              f"stride x patch) for model.size={cfg.model.size!r}")
    if (settings.num_frames - 1) % 4:
        raise ConfigError(f"validation.num_frames={settings.num_frames}: must be 1 + 4k")
    for i, metric in enumerate(val.metrics):
        target = metric["_target_"] if isinstance(metric, DictConfig) and "_target_" in metric else None
        if not isinstance(target, str):
            raise ConfigError(f"validation.metrics[{i}]={metric!r}: expected {{_target_: CLASS, ...}}, e.g. "
                              "{_target_: eval.scorers.ClipScore, model: CLIP_FOLDER}")


def _validate_strategy(cfg: DictConfig) -> None:
    strategy = cfg.strategy
    _allowed("strategy.name", strategy.name, ENGINES)
    if strategy.name == "deepspeed" and cfg.trainer.accelerator == "cpu":
        raise ConfigError("strategy.name='deepspeed' needs GPUs (trainer=gpu); on the CPU use strategy=ddp or fsdp")
    _validate_sequence_parallel(cfg)
    if strategy.timeout_minutes < 1:
        raise ConfigError(f"strategy.timeout_minutes={strategy.timeout_minutes}: must be >= 1")
    if strategy.name == "fsdp":
        if cfg.expert.name == "both":
            raise ConfigError("expert=both alternates two DiTs in one job, moving the resting one to the host; with "
                              "strategy=fsdp train each expert as its own job (expert=high_noise, expert=low_noise)")
        if strategy.offload_parameters and cfg.trainer.accelerator == "cpu":
            raise ConfigError("strategy.offload_parameters=true keeps FSDP's shards in host memory between uses; on "
                              "the CPU they are there already: drop it")
        if strategy.sharding_strategy == "NO_SHARD":
            raise ConfigError("strategy.sharding_strategy='NO_SHARD' shards nothing: that is strategy=ddp")
        _allowed("strategy.sharding_strategy", strategy.sharding_strategy, SHARDING)
        _allowed("strategy.state_dict_type", strategy.state_dict_type, ("sharded", "full"))
    if strategy.name == "deepspeed":
        _allowed("strategy.stage", strategy.stage, (2, 3))
        if strategy.offload_parameters and strategy.stage != 3:
            raise ConfigError("strategy.offload_parameters=true needs ZeRO stage 3 (strategy=deepspeed_zero3_offload)")
        config = deepspeed_config(strategy, micro_batch=cfg.data.batch_size,
                                  accumulate=cfg.trainer.accumulate_grad_batches, precision=cfg.trainer.precision,
                                  gradient_clip=cfg.optim.gradient_clip_val)
        try:
            check_deepspeed_config(config)
        except Exception as error:  # DeepSpeed's pydantic ValidationError / its own ValueErrors
            raise ConfigError(f"strategy: the generated DeepSpeed config is invalid: {error}") from None


def _validate_sequence_parallel(cfg: DictConfig) -> None:
    size = cfg.strategy.sequence_parallel
    if size < 1:
        raise ConfigError(f"strategy.sequence_parallel={size}: must be >= 1 (1: off)")
    if size == 1:
        return
    heads = SIZES[cfg.model.size].dit.num_heads
    if heads % size:
        raise ConfigError(f"strategy.sequence_parallel={size}: model.size={cfg.model.size!r} has {heads} attention "
                          f"heads, not divisible into {size} groups")
    devices = str(cfg.trainer.devices)
    if devices.isdigit() and (int(devices) * cfg.trainer.num_nodes) % size:
        raise ConfigError(f"strategy.sequence_parallel={size}: trainer.devices x trainer.num_nodes = "
                          f"{int(devices) * cfg.trainer.num_nodes} ranks do not split into groups of {size}")
    if cfg.strategy.name == "deepspeed":
        raise ConfigError("strategy.sequence_parallel > 1 runs with strategy=ddp or fsdp (not yet with DeepSpeed, "
                          "whose engine owns the gradient reduction)")


def _validate_lora(cfg: DictConfig) -> None:
    lora = cfg.lora
    if not cfg.model.checkpoint:
        raise ConfigError("lora.enabled=true with model.checkpoint=None: a LoRA adapts a base model; set "
                          "model.checkpoint to it (a Wan folder, a DiT file, or a run's exported dit/ folder)")
    _allowed("lora.target", lora.target, TARGET_PRESETS)
    _allowed("lora.kind", lora.kind, LORA_KINDS)
    if lora.rank < 1:
        raise ConfigError(f"lora.rank={lora.rank}: must be >= 1")
    if not lora.alpha > 0:
        raise ConfigError(f"lora.alpha={lora.alpha}: must be > 0")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout={lora.dropout}: must be in [0, 1)")
    if (lora.client is None) != (lora.name is None):
        raise ConfigError(f"lora.client={lora.client!r}, lora.name={lora.name!r}: set both to register the adapter "
                          "(or neither: it stays in run_dir/adapter)")
    for key in ("client", "name"):
        if lora[key] is not None and not NAME.fullmatch(lora[key]):
            raise ConfigError(f"lora.{key}={lora[key]!r}: use letters, digits, '.', '_' and '-' (no '/'), starting "
                              "with a letter or digit")
    if lora.dora and lora.client:
        raise ConfigError("lora.dora=true with lora.client: DoRA adapters cannot be written in the registry's plain "
                          "LoRA formats; drop lora.client/name (load the run folder with generate.py ckpt=RUN_DIR)")
    if cfg.model.trainable != "all":
        raise ConfigError(f"model.trainable={cfg.model.trainable!r} with lora.enabled=true: a LoRA run trains the "
                          "adapter only; choose its layers with lora.target")


def _validate_memory(cfg: DictConfig) -> None:
    memory = cfg.memory
    _allowed("memory.base_dtype", memory.base_dtype, ("auto", *BASE_DTYPES))
    _allowed("memory.fp8_granularity", memory.fp8_granularity, GRANULARITIES)
    _allowed("memory.encoders", memory.encoders, ENCODER_PLACEMENTS)
    layers = SIZES[cfg.model.size].dit.num_layers
    if not 0 <= memory.offload_blocks <= layers:
        raise ConfigError(f"memory.offload_blocks={memory.offload_blocks}: model.size={cfg.model.size!r} has {layers} "
                          f"blocks; offload 0..{layers}")
    if memory.prefetch_blocks < 1:
        raise ConfigError(f"memory.prefetch_blocks={memory.prefetch_blocks}: must be >= 1")
    frozen_only = {"memory.base_dtype=float8_e4m3fn": memory.base_dtype == "float8_e4m3fn",
                   f"memory.offload_blocks={memory.offload_blocks}": memory.offload_blocks > 0}
    for setting in (key for key, used in frozen_only.items() if used):
        if not cfg.lora.enabled:
            raise ConfigError(f"{setting} needs a frozen base: it applies to LoRA runs (lora=default)")
    if (memory.offload_blocks or memory.offload_activations or memory.base_dtype == "float8_e4m3fn"
            or memory.budget is not None):
        if cfg.strategy.name in ("fsdp", "deepspeed"):
            raise ConfigError(f"strategy.name={cfg.strategy.name!r} places the parameters itself: memory.base_dtype="
                              "float8_e4m3fn, memory.offload_blocks, memory.offload_activations and memory.budget "
                              "run with strategy=auto or ddp")
    if memory.budget is not None:
        try:
            parse_memory(memory.budget)
        except ValueError as error:
            raise ConfigError(f"memory.budget={memory.budget!r}: {error}") from None


def _validate_references(cfg: DictConfig) -> None:
    """Reference-to-video: the data's references fill the model's slots."""
    slots, refs = cfg.model.references, cfg.data.references
    if not 0 <= slots <= MAX_REFERENCES:
        raise ConfigError(f"model.references={slots}: must be in 0..{MAX_REFERENCES} (@Video1..@Video{MAX_REFERENCES})")
    if refs > slots:
        raise ConfigError(f"data.references={refs}: the model has model.references={slots} reference slots; set "
                          f"model.references={min(max(refs, 1), MAX_REFERENCES)} (recipe=r2v does)")
    if slots and SIZES[cfg.model.size].dit.model_type in ("i2v", "flf2v"):
        raise ConfigError(f"model.references={slots}: reference-to-video builds on T2V / TI2V models, not "
                          f"{SIZES[cfg.model.size].dit.model_type} ({cfg.model.size})")
    data_shots = cfg.data.shots
    if data_shots > cfg.model.shots:
        raise ConfigError(f"data.shots={data_shots}: the model has model.shots={cfg.model.shots} shot embeddings; "
                          f"set model.shots={data_shots} or more (recipe=multishot does)")
    if cfg.model.shots < 0:
        raise ConfigError(f"model.shots={cfg.model.shots}: must be >= 0 (0: no multi-shot extension)")
    if cfg.model.shots and SIZES[cfg.model.size].dit.has_image_branch:
        raise ConfigError(f"model.shots={cfg.model.shots}: the multi-shot extension builds on models without the "
                          f"CLIP image branch, not {cfg.model.size}")
    if (slots or cfg.model.shots) and cfg.lora.enabled and cfg.lora.client:
        raise ConfigError("model.references / model.shots with lora.client: the registry's LoRA formats cannot carry "
                          "the embeddings trained beside the adapter; drop lora.client/name and load the run folder "
                          "(generate.py ckpt=RUN_DIR ...)")


TOWERS = ("video", "audio")


def _validate_audio(cfg: DictConfig) -> None:
    """Twin-tower (audio-video) runs: a twin size, or model.audio adding an audio tower to a Wan T2V / TI2V size."""
    size, audio = SIZES[cfg.model.size], cfg.model.audio
    _allowed("flow.audio_sigma", cfg.flow.audio_sigma, SIGMA_MODES)
    if not cfg.flow.audio_weight >= 0:
        raise ConfigError(f"flow.audio_weight={cfg.flow.audio_weight}: must be >= 0")
    if cfg.lora.enabled:
        for tower in cfg.lora.towers:
            _allowed("lora.towers", tower, TOWERS)
    if audio is not None and audio != "mel" and not Path(audio).is_dir():
        raise ConfigError(f"model.audio={audio!r}: expected 'mel' or a folder with MMAudio's v1-16.pth and "
                          "best_netG.pt (or an Ovi checkpoint folder)")
    if not 0 <= cfg.model.audio_references <= MAX_REFERENCES:
        raise ConfigError(f"model.audio_references={cfg.model.audio_references}: must be in 0..{MAX_REFERENCES} "
                          f"(@Video1..@Video{MAX_REFERENCES})")
    voices = OmegaConf.select(cfg, "data.voices", default=0)
    if voices > cfg.model.audio_references:
        raise ConfigError(f"data.voices={voices} with model.audio_references={cfg.model.audio_references}: each "
                          f"voice fills a reference-voice slot of the audio tower; set model.audio_references={voices}")
    if not is_twin_run(cfg):
        if cfg.model.audio_references:
            raise ConfigError(f"model.audio_references={cfg.model.audio_references}: reference voices need an "
                              f"audio-video model; model.size={size.name!r} has no audio tower (model.audio=...)")
        if not cfg.model.fusion:
            raise ConfigError(f"model.fusion=false: model.size={size.name!r} is a video-only model (no fusion)")
        return
    where = (f"model.audio={audio!r}" if audio else f"model.size={size.name!r} (audio-video)" if size.has_audio
             else f"model.checkpoint={cfg.model.checkpoint!r} (audio-video)")
    if audio_source(cfg) is None:
        raise ConfigError(f"{where}: no audio autoencoder: set model.audio=<a folder with MMAudio's v1-16.pth and "
                          "best_netG.pt, or the Ovi folder>")
    if audio and size.has_audio and size.audio_vae == "mel" and audio != "mel":
        raise ConfigError(f"{where}: {size.name} speaks the 'mel' audio latents; leave model.audio unset")
    if not size.has_audio and (size.is_moe or size.dit.model_type not in ("t2v", "ti2v")):
        raise ConfigError(f"{where}: an audio tower joins a Wan T2V / TI2V model, not {size.name}")
    if cfg.model.references or cfg.model.shots:
        raise ConfigError(f"{where} with model.references / model.shots: the twin-tower model has neither")
    if cfg.data.kind == "video" and not cfg.data.audio:
        raise ConfigError(f"{where} with data.audio=false: an audio-video model trains on the clips' sound; set "
                          "data.audio=true (data=av_demo does)")
    if cfg.strategy.sequence_parallel > 1 or cfg.memory.offload_blocks or cfg.memory.base_dtype == "float8_e4m3fn":
        raise ConfigError(f"{where}: strategy.sequence_parallel, memory.offload_blocks and a float8 base are not "
                          "supported for audio-video models yet")
    if not cfg.model.fusion and cfg.lora.enabled and cfg.lora.fusion:
        raise ConfigError("model.fusion=false with lora.fusion=true: an adapter on the fusion projections would "
                          "join the towers again; set lora.fusion=false")
    if cfg.lora.enabled and cfg.lora.client:
        raise ConfigError(f"{where} with lora.client: the registry's LoRA formats are for Wan video models; drop "
                          "lora.client/name and load the run folder (generate.py ckpt=RUN_DIR task=t2av ...)")


def vae_stride(name: str) -> int:
    """Pixels per latent along H and W, read from the VAE (or its pixel-space stand-in)."""
    return builtin_vae().spatial_compression if name == "pixel" else VAE_CONFIGS[name].spatial_compression


def _validate_data(cfg: DictConfig, *, stride: int) -> None:
    data = cfg.data
    _allowed("data.kind", data.kind, KINDS)
    if not data.shards:
        raise ConfigError("data.shards is empty: give shard paths, a brace pattern or a folder")
    if data.spatial_stride % stride:
        raise ConfigError(f"data.spatial_stride={data.spatial_stride}: bucket sides must be multiples of the VAE "
                          f"stride x patch = {stride} for model.size={cfg.model.size!r}; set data.spatial_stride="
                          f"{stride}")
    for name, shards in data.val_sets.items():
        if not NAME.fullmatch(name) or not shards:
            raise ConfigError(f"data.val_sets.{name}={list(shards)}: a set needs a name of letters, digits, '.', '_', "
                              "'-' (it is logged as val/<name>/loss) and at least one shard")
    try:
        OmegaConf.to_object(data).table()
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _validate_shard_paths(cfg: DictConfig, *, pending: Collection[str]) -> None:
    """Local shard paths exist now, not two minutes into the run as an unreadable shard."""
    entries = [("data.shards", e) for e in cfg.data.shards] + [("data.val_shards", e) for e in cfg.data.val_shards]
    entries += [(f"data.val_sets.{name}", e) for name, shards in cfg.data.val_sets.items() for e in shards]
    for key, entry in entries:
        if str(entry) not in pending and (problem := missing_shards(entry)):
            raise ConfigError(f"{key}: {problem}")
