"""How a run's config places the DiT in memory: the memory group resolved against the precision (base dtype,
offloads), the dtype the frozen base is read in, and, with memory.budget, the planner's choice applied to the
config before anything is built."""

import copy
import logging

import torch
from omegaconf import DictConfig

from wan_train.config import ConfigError
from wan_train.memory import GIB, Placement
from wan_train.plan import plan_run

log = logging.getLogger(__name__)


def placement(cfg) -> Placement:
    """The memory group's placement of the frozen base, with base_dtype=auto resolved by the precision."""
    memory = cfg.memory
    base_dtype = memory.base_dtype
    if base_dtype == "auto":
        base_dtype = "bfloat16" if cfg.trainer.precision.startswith("bf16") else "float32"
    return Placement(base_dtype=base_dtype, fp8_granularity=memory.fp8_granularity,
                     offload_blocks=memory.offload_blocks, prefetch_blocks=memory.prefetch_blocks,
                     offload_activations=memory.offload_activations)


def load_dtype(cfg) -> torch.dtype:
    """A LoRA run's frozen base is read straight into its (narrower) storage dtype, tensor by tensor, so a 14B
    expert never sits in host memory in float32 (56 GB); float8 is quantised from bf16. The base identity is the
    same either way (wan_train.lora.identity rounds to bf16)."""
    narrow = cfg.lora.enabled and placement(cfg).base_dtype != "float32"
    return compute_dtype(cfg) if narrow else torch.float32


def keeps_float8(cfg) -> bool:
    """A LoRA run on a float8 base (memory.base_dtype=float8_e4m3fn) keeps a float8 file's block linears as stored,
    with the file's own scales (load_dit(keep_float8=True)): no full-precision copy in host memory and no
    re-quantization error. Not with DoRA, whose magnitude vectors start from the dequantized weights."""
    return bool(cfg.lora.enabled and placement(cfg).base_dtype == "float8_e4m3fn" and not cfg.lora.dora)


def compute_dtype(cfg) -> torch.dtype:
    """What narrow-stored weights compute in: the precision's half type (bf16 unless 16-mixed)."""
    return torch.float16 if cfg.trainer.precision.startswith("16") else torch.bfloat16


def planned(cfg: DictConfig) -> DictConfig:
    """memory.budget set: the planner's fastest setting that fits replaces the memory fields and activation
    checkpointing (logged, and recorded in the run's config.yaml)."""
    try:
        plan = plan_run(cfg)
    except ValueError as error:  # NoFit, or a strategy that places the parameters itself
        raise ConfigError(f"memory.budget={cfg.memory.budget}: {error}") from None
    cfg = copy.deepcopy(cfg)
    setting = plan.setting
    cfg.memory.base_dtype, cfg.memory.offload_blocks = setting.base_dtype, setting.offload_blocks
    cfg.memory.prefetch_blocks, cfg.memory.offload_activations = setting.prefetch_blocks, setting.offload_activations
    cfg.model.activation_checkpointing = setting.activation_checkpointing
    log.info("memory.budget=%s: %s (estimated peak %.1f GiB)", cfg.memory.budget, setting,
             plan.estimate.peak / GIB)
    return cfg
