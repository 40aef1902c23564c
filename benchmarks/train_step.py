"""A full training step (forward, loss, backward, AdamW step) of wan_train's WanDiT against diffusers'
WanTransformer3DModel with identical weights, inputs and settings, in one process. Reports s/step, tokens/s,
achieved TFLOP/s and MFU for both, the ratio, and peak memory, as a RESULTS.md table row.

    python benchmarks/train_step.py --preset cpu-small                 # CPU smoke size, fp32
    python benchmarks/train_step.py --preset 1.3b-480p                 # GPU: Wan2.1 1.3B, 480p x 81 frames, bf16
    python benchmarks/train_step.py --preset 14b-480p-4blocks          # GPU: 4 real-size Wan 14B blocks
    python benchmarks/train_step.py --preset 1.3b-480p --attention cudnn --compile --checkpointing block
    python benchmarks/train_step.py --preset cpu-small --against eager  # model.compile's blocks vs eager, same weights

Model FLOPs come from wan_train.models.dit_flops (3 x forward per training step); MFU divides the achieved rate
by the peak of a large matmul timed on the same device in the same run (bf16 on CUDA, fp32 on CPU), so it says
how close the step is to what this device actually does, not to a datasheet. Timing alternates the two models
step by step (order flipped every round); the ratio is the median over rounds of ours / diffusers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dit_step import build_models, make_inputs, peak_bytes, time_steps  # noqa: E402

from wan_train.models import DiTConfig, WanDiT, dit_flops, get_size  # noqa: E402
from wan_train.models.dit.compile import compile_blocks as compile_dit  # noqa: E402

_14B = get_size("wan2.1-t2v-14b").dit
PRESETS = {
    "cpu-small": dict(config=DiTConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=2), latent=(3, 8, 8),
                      device="cpu", precision="fp32"),
    "cpu-100m": dict(config=DiTConfig(dim=768, ffn_dim=3072, num_heads=6, num_layers=12), latent=(5, 16, 16),
                     device="cpu", precision="fp32"),
    "1.3b-480p": dict(config=get_size("wan2.1-t2v-1.3b").dit, latent=(21, 60, 104), device="cuda",
                      precision="bf16-mixed"),
    "1.3b-720p": dict(config=get_size("wan2.1-t2v-1.3b").dit, latent=(21, 90, 160), device="cuda",
                      precision="bf16-mixed"),
    # 14B blocks at full width (5120, 40 heads): a stack of 4 fits one GPU; the per-block numbers carry over
    "14b-480p-4blocks": dict(config=_14B.replace(num_layers=4), latent=(21, 60, 104), device="cuda",
                             precision="bf16-mixed"),
}
ATTENTION = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def matmul_peak(device: str, *, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul (bf16 on CUDA, fp32 on CPU): the device's practical ceiling."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device == "cuda" and count % 10:
            continue
        _sync(device)
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_steps(ours, ref, inputs, *, precision: str, attention: str, fused: bool,
                against: str = "diffusers") -> dict:
    """name -> step(): zero_grad, forward under the precision, mean-square loss, backward, AdamW step. `ref` is
    diffusers' model, or with against="eager" an eager copy of `ours` (then compiled)."""
    x, t, context = inputs
    autocast = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if precision == "bf16-mixed" \
        else contextlib.nullcontext
    kernel = (lambda: sdpa_kernel(ATTENTION[attention])) if ATTENTION[attention] is not None \
        else contextlib.nullcontext

    def run(model, call):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused or None)

        def step(set_to_none=True):
            optimizer.zero_grad(set_to_none=set_to_none)
            with autocast(), kernel():
                out = call()
            out.float().square().mean().backward()
            optimizer.step()
            _sync(x.device.type)
        return step

    if against == "eager":
        return {"compiled": run(ours, lambda: ours(x, t, context)), "eager": run(ref, lambda: ref(x, t, context))}
    padded = F.pad(context, (0, 0, 0, 512 - context.shape[1]))  # diffusers expects the pipeline's 512-token padding
    return {"wan_train": run(ours, lambda: ours(x, t, context)),
            "diffusers": run(ref, lambda: ref(x, t, padded, return_dict=False)[0])}


def ratio_key(first: str, second: str) -> str:
    """The result's key of the time ratio of the first model over the second."""
    return "time_ratio_ours_over_diffusers" if first == "wan_train" else f"time_ratio_{first}_over_{second}"


def compile_blocks(ours, ref, *, backend: str = "inductor") -> None:
    """torch.compile per transformer block (the unit activation checkpointing and FSDP use too): ours as
    model.compile does it, diffusers' blocks the same way."""
    compile_dit(ours, backend=backend)
    for block in ref.blocks:
        block.compile(backend=backend)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="cpu-small")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--attention", choices=ATTENTION, default="default", help="SDPA backend (default: torch picks)")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # aot_eager: the dry run
    p.add_argument("--checkpointing", choices=("none", "block"), default="none", help="activation checkpointing")
    p.add_argument("--fused-adamw", action="store_true", help="the fused AdamW kernel (CUDA)")
    p.add_argument("--against", choices=("diffusers", "eager"), default="diffusers",
                   help="the reference: diffusers' model (identical weights), or eager wan_train against its "
                        "--compile'd self (model.compile's path: wan_train.models.dit.compile)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    cfg, device, precision, latent = preset["config"], preset["device"], preset["precision"], preset["latent"]
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"preset {args.preset} needs a CUDA device")

    checkpointing = args.checkpointing == "block"
    if args.against == "eager":  # the same weights twice: one copy compiled, one eager
        torch.manual_seed(0)
        with torch.device(device):
            ours = WanDiT(cfg, activation_checkpointing=checkpointing).train()
        ref = copy.deepcopy(ours)
        compile_dit(ours, backend=args.compile_backend)
        args.compile = True
    else:
        ours, ref = build_models(cfg, device, activation_checkpointing=checkpointing)
        if args.compile:
            compile_blocks(ours, ref, backend=args.compile_backend)
    steps = train_steps(ours, ref, make_inputs(cfg, latent, device), precision=precision,
                        attention=args.attention, fused=args.fused_adamw, against=args.against)
    times = time_steps(steps, warmup=args.warmup, repeats=args.repeats)
    peaks = {name: peak_bytes(step, device) for name, step in steps.items()}
    peak_flops = matmul_peak(device)

    flops = dit_flops(cfg, latent).train_step
    tokens = math.prod(n // p for n, p in zip(latent, cfg.patch_size, strict=True))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    first, second = list(times)  # ours, then the reference
    ratios = [a / b for a, b in zip(times[first], times[second], strict=True)]
    q1, q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    per_model = {name: {"s_per_step": s, "tokens_per_s": tokens / s, "tflops": flops / s / 1e12,
                        "mfu": flops / s / peak_flops, "peak_GiB": peaks[name] / 2**30}
                 for name, s in median.items()}
    device_name = torch.cuda.get_device_name() if device == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    settings = [precision, f"attention {args.attention}", f"checkpointing {args.checkpointing}",
                "compile" if args.compile else "eager", "fused AdamW" if args.fused_adamw else "AdamW"]
    result = {"preset": args.preset, "date": date.today().isoformat(), "torch": torch.__version__,
              "device": device_name, "settings": settings, "params_M": round(ours.num_parameters() / 1e6, 1),
              "latent": list(latent), "tokens": tokens, "train_step_TFLOP": flops / 1e12,
              "matmul_peak_TFLOPs": peak_flops / 1e12, "repeats": args.repeats, "models": per_model,
              "against": args.against, ratio_key(first, second): q2, "time_ratio_quartiles": [q1, q3]}
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def print_table(r: dict) -> None:
    (first, ours), (second, ref) = r["models"].items()
    print(f"{r['preset']}: {r['params_M']}M params, latent {r['latent']} = {r['tokens']} tokens, "
          f"{r['train_step_TFLOP']:.4g} TFLOP per step; {r['device']}, matmul peak "
          f"{r['matmul_peak_TFLOPs']:.4g} TFLOP/s; {', '.join(r['settings'])}")
    header = "| model | s/step | tokens/s | TFLOP/s | MFU | peak GiB |"
    print(header + "\n|---|---|---|---|---|---|")
    for name, m in r["models"].items():
        print(f"| {name} | {m['s_per_step']:.4g} | {m['tokens_per_s']:.4g} | {m['tflops']:.4g} | "
              f"{100 * m['mfu']:.1f}% | {m['peak_GiB']:.3g} |")
    q1, q3 = r["time_ratio_quartiles"]
    print(f"time ratio {first} / {second}: {r[ratio_key(first, second)]:.3f} (quartiles {q1:.3f}-{q3:.3f}, "
          f"{r['repeats']} rounds); throughput ratio {ref['s_per_step'] / ours['s_per_step']:.3f}x")


if __name__ == "__main__":
    main()
