"""Forward + backward of wan_train's WanDiT against diffusers' WanTransformer3DModel with identical weights and
inputs, in one process. Prints each one's median step time, the ratio (ours / diffusers) and peak memory.

    python benchmarks/dit_step.py                       # CPU: a ~120M-parameter DiT on a small latent, fp32
    python benchmarks/dit_step.py --preset 1.3b-480p    # GPU: Wan2.1 1.3B at 480p x 81 frames, bf16 autocast

Timing alternates the two models step by step (order flipped every round) so drift hits both alike; the ratio
is the median over rounds of ours / diffusers within a round, with its quartiles (CPU step times on a shared
machine vary by +-20% from round to round, far more than within a round). Peak memory is measured in a separate,
untimed step with gradients already allocated: on CUDA with the allocator's peak counter, on CPU from the
profiler's allocation events; both report bytes allocated above what was live before the step (weights,
gradients and inputs excluded), i.e. activations and temporaries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from datetime import date

import torch
import torch.nn.functional as F

from wan_train.models import DiTConfig, WanDiT, get_size
from wan_train.models.checkpoint.dit_layouts import DIFFUSERS, config_to_json, from_official

PRESETS = {
    "cpu-100m": dict(config=DiTConfig(dim=768, ffn_dim=3072, num_heads=6, num_layers=12), latent=(5, 16, 16),
                     device="cpu", precision="fp32"),
    "1.3b-480p": dict(config=get_size("wan2.1-t2v-1.3b").dit, latent=(21, 60, 104), device="cuda",
                      precision="bf16-mixed"),
}


def build_models(cfg: DiTConfig, device: str, *, activation_checkpointing: bool):
    from diffusers import WanTransformer3DModel  # the reference; never imported by wan_train

    torch.manual_seed(0)
    with torch.device(device):
        ours = WanDiT(cfg, activation_checkpointing=activation_checkpointing)
        kwargs = {k: v for k, v in config_to_json(cfg, DIFFUSERS).items() if not k.startswith("_")}
        ref = WanTransformer3DModel(**kwargs)
    ref.load_state_dict({from_official(k, DIFFUSERS): v for k, v in ours.state_dict().items()})
    if activation_checkpointing:
        ref.enable_gradient_checkpointing()
    return ours.train(), ref.train()


def make_inputs(cfg: DiTConfig, latent: tuple[int, int, int], device: str, *, prompt_len: int = 120):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_dim, *latent, generator=g).to(device)
    t = torch.tensor([500.0], device=device)
    context = torch.randn(1, prompt_len, cfg.text_dim, generator=g).to(device)
    return x, t, context


def step_fns(ours, ref, inputs, precision: str):
    x, t, context = inputs
    autocast = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if precision == "bf16-mixed" \
        else contextlib.nullcontext

    def run(model, call):
        def step(set_to_none=True):
            model.zero_grad(set_to_none=set_to_none)
            with autocast():
                out = call()
            out.float().square().mean().backward()
            if x.device.type == "cuda":
                torch.cuda.synchronize()
        return step

    return {
        "wan_train": run(ours, lambda: ours(x, t, context)),
        # ours zero-pads the prompt to 512 tokens inside forward; diffusers expects it padded (its pipeline does it)
        "diffusers": run(ref, lambda: ref(x, t, F.pad(context, (0, 0, 0, 512 - context.shape[1])), return_dict=False)[0]),
    }


def time_steps(steps: dict, *, warmup: int, repeats: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for r in range(repeats):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def peak_bytes(step, device: str) -> int:
    step(set_to_none=False)  # allocate the gradients before measuring
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(set_to_none=False)
        return torch.cuda.max_memory_allocated() - base
    return cpu_peak_bytes(lambda: step(set_to_none=False))


def cpu_peak_bytes(run) -> int:
    """The largest sum of live CPU allocations made while ``run()`` runs (profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="cpu-100m")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    cfg, device, precision = preset["config"], preset["device"], preset["precision"]
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"preset {args.preset} needs a CUDA device")

    ours, ref = build_models(cfg, device, activation_checkpointing=args.activation_checkpointing)
    steps = step_fns(ours, ref, make_inputs(cfg, preset["latent"], device), precision)
    times = time_steps(steps, warmup=args.warmup, repeats=args.repeats)
    peaks = {name: peak_bytes(step, device) for name, step in steps.items()}

    median = {name: statistics.median(ts) for name, ts in times.items()}
    ratios = [a / b for a, b in zip(times["wan_train"], times["diffusers"])]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    result = {
        "preset": args.preset, "date": date.today().isoformat(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, "
                                                                         f"{torch.get_num_threads()} threads)",
        "precision": precision, "activation_checkpointing": args.activation_checkpointing,
        "params_M": round(ours.num_parameters() / 1e6, 1), "latent": list(preset["latent"]),
        "repeats": args.repeats, "median_s": median, "peak_MiB": {n: round(b / 2**20, 1) for n, b in peaks.items()},
        "time_ratio_ours_over_diffusers": q2, "time_ratio_quartiles": [q1, q3],
    }
    print(f"{args.preset}: {result['params_M']}M params, latent {preset['latent']}, {precision}, {result['device']}")
    for name in steps:
        print(f"  {name:10s} fwd+bwd median {median[name] * 1e3:9.1f} ms   peak {result['peak_MiB'][name]:9.1f} MiB")
    print(f"  time ratio (wan_train / diffusers): median {q2:.3f} over {args.repeats} rounds (quartiles {q1:.3f}-{q3:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
