"""python -m wan_train.plan [gpu=NAME] [gpu_mem=24GB] [resolution=480p|720p|WxH] [frames=81] [batch_size=N]
[--all] TRAIN_OVERRIDES...

Prints each memory setting's estimated peak, host memory and step time for the run that ``python train.py
TRAIN_OVERRIDES`` would start (largest bucket of its data unless resolution / frames are given), and the train.py
overrides of the fastest setting that fits. gpu_mem defaults to memory.budget (memory=24gb). Without a recipe or
data group the run reads data=video (480p x 81 frames, batch 1), not the quickstart demo. Exit code 0 when a
setting fits, 1 when none does, 2 on a bad argument.

    python -m wan_train.plan model=wan2_2_t2v_a14b resolution=480p frames=81 gpu_mem=24GB lora.rank=32
    python -m wan_train.plan recipe=lora_character gpu=rtx4090
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from wan_train.config.compose import compose_config
from wan_train.data.buckets import SIZES
from wan_train.models import get_size
from wan_train.plan.choose import (RESERVED_BYTES, SPEED_TOLERANCE, USABLE_FRACTION, NoFit, Plan, choose, describe,
                                   fits, usable_bytes, workload_of)
from wan_train.memory import GIB
from wan_train.plan.estimate import MFU_ASSUMED, Estimate, Setting, Workload, vae_compression
from wan_train.plan.gpus import Gpu, gpu_for

OPTIONS = ("gpu", "gpu_mem", "resolution", "frames", "batch_size")


@dataclass
class Arguments:
    gpu: str | None = None
    gpu_mem: str | None = None
    resolution: str | None = None
    frames: int | None = None
    batch_size: int | None = None
    show_all: bool = False
    overrides: list[str] = field(default_factory=list)  # for compose_config, as train.py takes them


def parse(argv: list[str]) -> Arguments:
    args = Arguments()
    for arg in argv:
        key, eq, value = arg.partition("=")
        if arg == "--all":
            args.show_all = True
        elif key in OPTIONS and eq:
            setattr(args, key, _integer(key, value) if key in ("frames", "batch_size") else value)
        elif eq and not key.startswith("-"):
            args.overrides.append(arg)
        else:
            raise ValueError(f"argument {arg!r}: expected KEY=VALUE (gpu=, gpu_mem=, resolution=, frames=, "
                             "batch_size=, or a train.py override) or --all")
    keys = [o.partition("=")[0].lstrip("+~") for o in args.overrides]
    if any(k.startswith("lora.") for k in keys) and "lora" not in keys:
        args.overrides.append("lora=default")  # lora.rank=32 alone asks for a LoRA run
    if not {"data", "recipe"} & set(keys):
        args.overrides.append("data=video")  # a real model's data (480p x 81, batch 1), not the quickstart demo's
    if args.batch_size is not None:
        args.overrides.append(f"data.batch_size={args.batch_size}")
    return args


def _integer(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{key}={value!r}: expected a whole number") from None
    if number < 1:
        raise ValueError(f"{key}={number}: must be >= 1")
    return number


def resolution_size(resolution: str, *, size: str) -> tuple[int, int]:
    """"480p" (the 16:9 bucket size of wan_train.data.buckets, snapped to the model's stride) or "WxH"."""
    if resolution in SIZES:
        model = get_size(size)
        stride = vae_compression(model.vae)[1] * model.dit.patch_size[1]
        width, height = SIZES[resolution]["16:9"]
        return width // stride * stride, height // stride * stride
    width, x, height = resolution.lower().partition("x")
    if not (x and width.isdigit() and height.isdigit()):
        raise ValueError(f"resolution={resolution!r}: expected one of {list(SIZES)} or WIDTHxHEIGHT (832x480)")
    return int(width), int(height)


def setup(args: Arguments) -> tuple[Workload, Gpu, int]:
    """The workload, GPU and prefetch depth of the composed run (ValueError / Hydra errors on bad arguments)."""
    cfg = compose_config(args.overrides)
    width = height = None
    if args.resolution is not None:
        width, height = resolution_size(args.resolution, size=cfg.model.size)
    memory = args.gpu_mem if args.gpu_mem is not None or args.gpu is not None else cfg.memory.budget
    gpu = gpu_for(args.gpu, memory)
    return workload_of(cfg, width=width, height=height, frames=args.frames), gpu, cfg.memory.prefetch_blocks


# ------------------------------------------------------------------------------------------------------ output
def shown_rows(table: list[tuple[Setting, Estimate]], gpu: Gpu, chosen: Setting | None) -> list[int]:
    """Per (dtype, checkpointing, activation offload): no offload, the fewest offloaded blocks that fit (or, if
    none fits, the most), and the chosen row."""
    groups: dict[tuple, list[int]] = {}
    for index, (setting, _) in enumerate(table):
        key = (setting.base_dtype, setting.activation_checkpointing, setting.offload_activations)
        groups.setdefault(key, []).append(index)
    shown = set()
    for rows in groups.values():
        shown.add(rows[0])
        fitting = [i for i in rows if fits(table[i][1], gpu)]
        shown.add(fitting[0] if fitting else rows[-1])
    shown |= {i for i, (s, _) in enumerate(table) if s == chosen}
    return sorted(shown)


def format_table(table: list[tuple[Setting, Estimate]], rows: list[int], *, gpu: Gpu, layers: int) -> list[str]:
    parts = {i: ", ".join(f"{name} {size / GIB:.1f}" for name, size in table[i][1].biggest()) for i in rows}
    width = max(len("biggest parts (GiB)"), *(len(p) for p in parts.values()))
    header = (f"{'base dtype':<14} {'ckpt':<4} {'act-offload':<11} {'offload':>7}  {'peak GiB':>8}  "
              f"{'biggest parts (GiB)':<{width}}  {'host GiB':>8}  {'est. s/step':>11}  fits")
    lines = [header, "-" * len(header)]
    for i in rows:
        s, e = table[i]
        lines.append(f"{s.base_dtype:<14} {_yes(s.activation_checkpointing):<4} {_yes(s.offload_activations):<11} "
                     f"{f'{s.offload_blocks}/{layers}':>7}  {e.peak / GIB:8.1f}  {parts[i]:<{width}}  "
                     f"{e.host_bytes / GIB:8.1f}  {e.step_seconds:11.1f}  {_yes(fits(e, gpu))}")
    return lines


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def report(workload: Workload, gpu: Gpu, table: list[tuple[Setting, Estimate]], plan: Plan | None, *,
           show_all: bool) -> list[str]:
    layers = workload.model.dit.num_layers
    lines = [f"plan for {workload.describe()}",
             f"gpu: {gpu.name} ({gpu.note}); fits if the estimated peak <= {usable_bytes(gpu) / GIB:.2f} GiB = "
             f"{USABLE_FRACTION} x {gpu.memory / GIB:.2f} GiB - {RESERVED_BYTES / GIB:.2f} GiB (CUDA context and "
             "allocator fragmentation)",
             f"peak: estimated torch.cuda.max_memory_allocated of one bf16-mixed step; s/step: estimated at "
             f"{MFU_ASSUMED:.0%} of {gpu.bf16_tflops:g} TFLOP/s bf16 plus exposed transfers, for ranking only",
             ""]
    rows = list(range(len(table))) if show_all else shown_rows(table, gpu, plan and plan.setting)
    lines += format_table(table, rows, gpu=gpu, layers=layers)
    if not show_all:
        lines.append(f"({len(rows)} of {len(table)} settings shown; --all lists every one)")
    if plan is not None:
        e = plan.estimate
        lines += ["", f"fastest that fits: {' '.join(plan.setting.overrides())}",
                  f"  ({describe(plan.setting)}: estimated peak {e.peak / GIB:.1f} GiB, host {e.host_bytes / GIB:.1f}"
                  f" GiB, {e.step_seconds:.1f} s/step; settings within {SPEED_TOLERANCE:.0%} of the fastest count "
                  "as equally fast and the one pinning the least host memory wins)"]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        args = parse(argv)
        workload, gpu, prefetch = setup(args)
    except (ValueError, HydraException, OmegaConfBaseException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        plan = choose(workload, gpu, prefetch_blocks=prefetch)
    except NoFit as error:
        print("\n".join(report(workload, gpu, error.table, None, show_all=args.show_all) + ["", str(error)]))
        return 1
    print("\n".join(report(workload, gpu, plan.table, plan, show_all=args.show_all)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
