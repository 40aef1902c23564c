"""Does a LoRA step fit a memory cap, how fast is it, and how close is the planner's estimate? One process runs
a LoRA training step (forward, loss, backward, AdamW on the adapter) of a random-weight DiT of the given size
twice: with the planner's fastest setting for the cap, under the cap (the caching allocator limited with
torch.cuda.set_per_process_memory_fraction), and with the fastest setting for the whole device, uncapped.
It reports s/step and the measured peak (torch.cuda.max_memory_allocated) next to the planner's estimate, as a
RESULTS.md table row.

    python benchmarks/memory_fit.py                                   # GPU: Wan 14B-shaped LoRA, 480p x 81, 24 GB cap
    python benchmarks/memory_fit.py --size wan2.1-t2v-1.3b --cap 12GB
    python benchmarks/memory_fit.py --preset cpu-smoke                # CPU: the code path
    python benchmarks/memory_fit.py --preset cpu-check                # CPU: the arithmetic vs CPU allocations

The model is built on the meta device and materialised in bf16 with random weights (N(0, 0.02)), so a 14B-shaped
run needs about 28 GB of host memory and no checkpoint; the weights' values do not change memory or time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dit_step import cpu_peak_bytes  # noqa: E402

from wan_train.lora import add_adapter  # noqa: E402
from wan_train.memory import place_base  # noqa: E402
from wan_train.models import WanDiT, get_size  # noqa: E402
from wan_train.plan import Setting, Workload, choose, estimate, gpu_for  # noqa: E402

GIB = 2**30
PRESETS = {
    "14b-480p-24gb": dict(size="wan2.1-t2v-14b", width=832, height=480, frames=81, cap="24GB", device="cuda"),
    "cpu-smoke": dict(size="tiny", width=64, height=48, frames=9, cap="24GB", device="cpu"),
    # the arithmetic against the CPU's own allocations where activations dominate (2880 tokens); under this cap
    # the planner checkpoints, uncapped (80 GiB) it does not
    "cpu-check": dict(size="tiny", width=384, height=384, frames=17, cap="0.93GB", device="cpu"),
}


def build(workload: Workload, setting: Setting, *, rank: int, device: str, seed: int = 0) -> WanDiT:
    """A random bf16 DiT of the workload's size with a fresh adapter (B random, so gradients reach every block),
    placed as `setting` says and moved to `device` (offloaded blocks stay in host memory)."""
    with torch.device("meta"):
        dit = WanDiT(get_size(workload.size).dit)
    dit.to_dtype(torch.bfloat16)
    dit.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.02, generator=generator)
    add_adapter(dit, target=workload.lora_target, rank=rank, alpha=float(rank))
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02, generator=generator)
    dit.activation_checkpointing = setting.activation_checkpointing
    place_base(dit, setting.placement(), compute_dtype=torch.bfloat16)
    return dit.train().to(device)


def inputs(workload: Workload, device: str, *, prompt_tokens: int = 64):
    config = get_size(workload.size).dit
    frames, height, width = workload.latent_shape
    g = torch.Generator().manual_seed(1)
    x = torch.randn(workload.batch_size, config.in_dim, frames, height, width, generator=g).to(device)
    target = torch.randn(x.shape, generator=g).to(device)
    context = torch.randn(workload.batch_size, prompt_tokens, config.text_dim, generator=g).to(device)
    t = torch.full((workload.batch_size,), 500.0, device=device)
    return x, t, context, target


def measure(workload: Workload, setting: Setting, *, rank: int, device: str, cap: int | None, steps: int,
            warmup: int) -> dict:
    dit = build(workload, setting, rank=rank, device=device)
    trained = [p for p in dit.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4, fused=device == "cuda")
    x, t, context, target = inputs(workload, device)
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total) if cap else 1.0)
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            out = dit(x, t, context)
        (out.float() - target).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # Lightning's default keeps the gradients' memory between steps
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else cpu_peak(step, dit, optimizer)
    dit = optimizer = trained = step = None  # free the model before the next run builds its own
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0)
    return {"s_per_step": statistics.median(times), "peak_bytes": peak}


def cpu_peak(step, dit: WanDiT, optimizer) -> int:
    """On the CPU: what a device would hold at the step's peak, i.e. the resident tensors (parameters that are
    not offloaded, gradients, optimizer state) plus the largest sum of the step's live allocations (profiler
    memory events). CPU kernels save a little differently from CUDA's (e.g. rms_norm), so this checks the
    arithmetic, not a GPU's number."""
    offload = dit.block_offload
    hosted = {t.data_ptr() for ts in offload.host.values() for t in ts} if offload is not None else set()
    resident = sum(t.numel() * t.element_size() for t in dit.parameters() if t.data_ptr() not in hosted)
    resident += sum(p.grad.numel() * p.grad.element_size() for p in dit.parameters() if p.grad is not None)
    resident += sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
                    if isinstance(v, torch.Tensor) and v.ndim)
    return resident + cpu_peak_bytes(step)


def describe(setting: Setting) -> str:
    parts = [setting.base_dtype.replace("float8_e4m3fn", "fp8").replace("bfloat16", "bf16")]
    parts.append("ckpt" if setting.activation_checkpointing else "no ckpt")
    if setting.offload_activations:
        parts.append("act. offload")
    if setting.offload_blocks:
        parts.append(f"{setting.offload_blocks} blocks offloaded")
    return ", ".join(parts)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="14b-480p-24gb")
    p.add_argument("--size", help="a model size (wan_train.models.SIZES); overrides the preset's")
    p.add_argument("--cap", help="the memory cap, e.g. 24GB; overrides the preset's")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    device = preset["device"]
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"preset {args.preset} needs a CUDA device (use --preset cpu-smoke for the code path)")
    workload = Workload(size=args.size or preset["size"], width=preset["width"], height=preset["height"],
                        frames=preset["frames"], lora_rank=args.rank)
    cap = args.cap or preset["cap"]
    capped_gpu = gpu_for(None, cap)
    whole = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 80 * GIB
    whole_gpu = gpu_for(None, whole)
    runs = {"capped": (choose(workload, capped_gpu), capped_gpu.memory),
            "uncapped": (choose(workload, whole_gpu), None)}
    result = {"workload": {"size": workload.size, "tokens": workload.tokens, "width": workload.width,
                           "height": workload.height, "frames": workload.frames, "lora_rank": args.rank},
              "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "cap": cap, "runs": {}}
    for name, (plan, limit) in runs.items():
        measured = measure(workload, plan.setting, rank=args.rank, device=device, cap=limit, steps=args.steps,
                           warmup=args.warmup)
        predicted = estimate(workload, plan.setting, gpu=capped_gpu if limit else whole_gpu)
        result["runs"][name] = {"setting": describe(plan.setting), "estimated_peak_bytes": predicted.peak,
                                "estimated_s_per_step": predicted.step_seconds, **measured}
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def print_table(result: dict) -> None:
    w = result["workload"]
    print(f"\n{w['size']} LoRA r{w['lora_rank']}, {w['width']}x{w['height']} x {w['frames']} frames "
          f"({w['tokens']} tokens), {result['device']}\n")
    print("| run | setting | s/step | peak GiB (measured) | peak GiB (planner) | planner / measured |")
    print("|---|---|---|---|---|---|")
    for name, r in result["runs"].items():
        label = f"{name} ({result['cap']})" if name == "capped" else name
        measured = f"{r['peak_bytes'] / GIB:.2f}"
        ratio = f"{r['estimated_peak_bytes'] / r['peak_bytes']:.3f}"
        print(f"| {label} | {r['setting']} | {r['s_per_step']:.3f} | {measured} | "
              f"{r['estimated_peak_bytes'] / GIB:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
