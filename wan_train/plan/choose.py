"""Choosing a memory setting: the grid of candidates, the fit rule, and the fastest setting that fits.

Among the settings that fit, the planner takes the fastest, counting those within SPEED_TOLERANCE of it as
equally fast, and among those prefers the one that pins the least host memory, then a bf16 base over float8
(exact base weights), then the faster. The speed model leaves out costs of the offloads of about that size
(per-block synchronisation, activation and block copies sharing the PCIe link); and when block copies hide
behind compute, offloading more blocks costs no estimated time but pins more host memory, which a workstation
has little of.

A setting fits when its estimated peak is at most USABLE_FRACTION x the GPU's memory minus RESERVED_BYTES:
torch.cuda.max_memory_allocated (what the estimate models) counts neither the CUDA context and kernels (several
hundred MiB) nor the caching allocator's fragmentation, which the activation sizes of a video step (hundreds of
MiB per tensor, freed and reallocated per block) make a few percent of the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from wan_train.memory import GIB
from wan_train.models import EXPERTS
from wan_train.models.checkpoint.dit_io import float8_granularity
from wan_train.plan.estimate import Estimate, Setting, Workload, estimate
from wan_train.plan.gpus import Gpu, gpu_for

USABLE_FRACTION = 0.92
RESERVED_BYTES = int(0.75 * GIB)
SPEED_TOLERANCE = 0.02  # settings this close to the fastest count as equally fast (module docstring)
LORA_BASE_DTYPES = ("bfloat16", "float8_e4m3fn")  # a float32 base is never smaller nor faster under bf16-mixed
FULL_BASE_DTYPE = "float32"  # a full fine-tune trains float32 weights (bf16-mixed); nothing is frozen


class NoFit(ValueError):
    """No candidate fits; ``table`` holds every candidate's estimate."""

    def __init__(self, message: str, *, table: list[tuple[Setting, Estimate]] | None = None) -> None:
        super().__init__(message)
        self.table = table or []


@dataclass
class Plan:
    setting: Setting
    estimate: Estimate
    table: list[tuple[Setting, Estimate]]  # every candidate, in candidates() order
    fits: bool


def usable_bytes(gpu: Gpu) -> int:
    return int(USABLE_FRACTION * gpu.memory) - RESERVED_BYTES


def fits(estimate: Estimate, gpu: Gpu) -> bool:
    return estimate.peak <= usable_bytes(gpu)


def candidates(workload: Workload, *, prefetch_blocks: int = 1) -> list[Setting]:
    """The grid: base dtype x checkpointing x activation offload (only with checkpointing: without it, every
    activation would cross the host link) x offloaded blocks 0..L. A full fine-tune has no frozen base, so no
    float8 and no block offload."""
    layers = workload.model.dit.num_layers
    dtypes, counts = (LORA_BASE_DTYPES, range(layers + 1)) if workload.lora else ((FULL_BASE_DTYPE,), range(1))
    return [Setting(base_dtype=dtype, activation_checkpointing=ckpt, offload_activations=act, offload_blocks=k,
                    prefetch_blocks=prefetch_blocks)
            for dtype in dtypes for ckpt in (False, True) for act in ((False, True) if ckpt else (False,))
            for k in counts]


def evaluate(workload: Workload, gpu: Gpu, *, prefetch_blocks: int = 1) -> list[tuple[Setting, Estimate]]:
    return [(s, estimate(workload, s, gpu=gpu)) for s in candidates(workload, prefetch_blocks=prefetch_blocks)]


def choose(workload: Workload, gpu: Gpu, *, prefetch_blocks: int = 1) -> Plan:
    """The fastest candidate whose estimated peak fits; among those within SPEED_TOLERANCE of the fastest, the one
    with the least host memory, then bf16 over float8, then the fastest, then the smallest peak."""
    table = evaluate(workload, gpu, prefetch_blocks=prefetch_blocks)
    fitting = [(s, e) for s, e in table if fits(e, gpu)]
    if not fitting:
        raise NoFit(no_fit_message(workload, gpu, table), table=table)
    fastest = min(e.step_seconds for _, e in fitting)
    near = [(s, e) for s, e in fitting if e.step_seconds <= fastest * (1 + SPEED_TOLERANCE)]
    setting, best = min(near, key=lambda se: (se[1].host_bytes, se[0].base_dtype == "float8_e4m3fn",
                                                     se[1].step_seconds, se[1].peak))
    return Plan(setting=setting, estimate=best, table=table, fits=True)


def no_fit_message(workload: Workload, gpu: Gpu, table: list[tuple[Setting, Estimate]]) -> str:
    setting, smallest = min(table, key=lambda se: se[1].peak)
    parts = ", ".join(f"{name} {size / GIB:.1f}" for name, size in smallest.biggest())
    state = smallest.parts["weights"] + smallest.parts["trainable+optimizer"]
    if state > usable_bytes(gpu):  # no shape fits: the model itself is too big
        change = (f"the weights and trainable state alone need {state / GIB:.1f} GiB: "
                  + ("a smaller LoRA rank or target (lora.rank, lora.target)" if workload.lora
                     else "train a LoRA on a frozen base (lora=default) instead of a full fine-tune"))
    else:
        change = (f"fewer frames (frames=, now {workload.frames}), a lower resolution (resolution=, now "
                  f"{workload.width}x{workload.height})")
        change += f", batch_size=1 (now {workload.batch_size})" if workload.batch_size > 1 else ""
        change += f", a smaller LoRA rank (now {workload.lora_rank})" if workload.lora else ""
    return (f"nothing fits {gpu.name}: usable {usable_bytes(gpu) / GIB:.2f} GiB ({USABLE_FRACTION} x "
            f"{gpu.memory / GIB:.2f} GiB - {RESERVED_BYTES / GIB:.2f} GiB); the smallest estimate is "
            f"{smallest.peak / GIB:.2f} GiB ({describe(setting)}; biggest parts in GiB: {parts}). Try {change}; "
            "or a GPU with more memory")


def describe(setting: Setting) -> str:
    words = [setting.base_dtype, "checkpointing" if setting.activation_checkpointing else "no checkpointing"]
    if setting.offload_activations:
        words.append("activation offload")
    if setting.offload_blocks:
        words.append(f"{setting.offload_blocks} blocks offloaded")
    return ", ".join(words)


# -------------------------------------------------------------------------------------------- from a config
def workload_of(cfg, *, width: int | None = None, height: int | None = None, frames: int | None = None) -> Workload:
    """A composed train config's workload: model.size, lora.*, data.batch_size, the references of an R2V run
    (data.references, the most a sample gets, of data.reference_frames) and the largest bucket of the data's bucket
    table (the step that needs the most memory), unless width / height / frames are given."""
    buckets = OmegaConf.to_object(cfg.data).table().buckets
    largest = max(buckets, key=lambda bk: (bk.width * bk.height * bk.frames, bk.width))  # ties: landscape
    return Workload(size=cfg.model.size, width=width or largest.width, height=height or largest.height,
                    frames=frames or largest.frames, batch_size=cfg.data.batch_size,
                    lora_rank=cfg.lora.rank if cfg.lora.enabled else None, lora_target=cfg.lora.target,
                    references=cfg.data.references if cfg.model.references else 0,
                    reference_frames=cfg.data.reference_frames, fp8_granularity=fp8_granularity_of(cfg))


def fp8_granularity_of(cfg) -> str:
    """The scales a float8 base will have: a LoRA run keeps a float8_e4m3fn file's block weights as stored, with
    the file's scales (wan_train.training.placement.keeps_float8); otherwise memory.fp8_granularity."""
    if cfg.lora.enabled and not cfg.lora.dora and cfg.model.checkpoint:
        expert = {"both": EXPERTS[0], "none": None}.get(cfg.expert.name, cfg.expert.name)
        try:
            stored = float8_granularity(cfg.model.checkpoint, expert=expert)
        except ValueError:  # not a checkpoint this expert setting reads: the run's own load says why
            stored = None
        if stored is not None:
            return stored
    return cfg.memory.fp8_granularity


def plan_run(cfg) -> Plan:
    """The plan for a composed train config under its memory.budget (raises NoFit). It plans one device's step:
    under FSDP / DeepSpeed the strategy shards and places the parameters itself, and the memory group's float8
    storage and offloads are not available (wan_train.config.validate)."""
    if cfg.strategy.name in ("fsdp", "deepspeed"):
        raise ValueError(f"memory.budget plans a single device's step; strategy.name={cfg.strategy.name!r} shards "
                         "and places the parameters itself: use strategy=auto or ddp, or drop memory.budget")
    gpu = gpu_for(None, cfg.memory.budget)
    return choose(workload_of(cfg), gpu, prefetch_blocks=cfg.memory.prefetch_blocks)
