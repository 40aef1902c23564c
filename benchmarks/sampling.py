"""N denoising steps of wan_train's loop (inference.pipeline.denoise) against diffusers' WanPipeline with
identical weights, initial noise, prompt embeddings and sampler (UniPC, shift, CFG) in one process. Both start
from prompt embeddings and stop at the latents (text encoding and VAE decode are the same work in both and are
timed by their own benchmarks). Prints each one's median time per video, the ratio (ours / diffusers) and how far
the two results are apart.

    python benchmarks/sampling.py                      # CPU: a ~120M-parameter DiT, 10 steps, fp32
    python benchmarks/sampling.py --preset 1.3b-480p   # GPU: Wan2.1 1.3B at 480p x 81 frames, bf16 weights
    python benchmarks/sampling.py --moe                # two experts switching at boundary 0.875

Rounds alternate the two (order flipped every round); the ratio is the median over rounds of ours / diffusers
within a round, with its quartiles.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date

import numpy as np
import torch

from wan_train.inference.pipeline import Conditioning, WanModels, denoise
from wan_train.inference.presets import Sampling
from wan_train.models import DiTConfig, WanDiT, get_size
from wan_train.models.checkpoint.dit_layouts import DIFFUSERS, config_to_json, from_official

PRESETS = {
    "cpu-small": dict(config=DiTConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=2), frames=5, height=64,
                      width=64, device="cpu", dtype=torch.float32),  # the device suite's dry run
    "cpu-100m": dict(config=DiTConfig(dim=768, ffn_dim=3072, num_heads=6, num_layers=12), frames=17, height=128,
                     width=128, device="cpu", dtype=torch.float32),
    "1.3b-480p": dict(config=get_size("wan2.1-t2v-1.3b").dit, frames=81, height=480, width=832, device="cuda",
                      dtype=torch.bfloat16),
}


class OfficialGridUniPC:
    """diffusers' UniPCMultistepScheduler on the official Wan grid (linspace(0.999, 0) then shift, as
    fm_solvers_unipc.py), which is also what our unipc uses; WanPipeline itself asks for linspace(1, 0.001)."""

    @staticmethod
    def make(shift: float):
        from diffusers import UniPCMultistepScheduler

        class Scheduler(UniPCMultistepScheduler):
            def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
                base = np.linspace(0.999, 0.0, num_inference_steps + 1)[:-1]
                super().set_timesteps(device=device, sigmas=base)

        return Scheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                         num_train_timesteps=1000)


def build(cfg: DiTConfig, *, moe: bool, device: str, dtype: torch.dtype, shift: float):
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    experts = ("high_noise", "low_noise") if moe else (None,)
    ours, refs = {}, []
    kwargs = {k: v for k, v in config_to_json(cfg, DIFFUSERS).items() if not k.startswith("_")}
    for i, expert in enumerate(experts):
        torch.manual_seed(i)
        dit = WanDiT(cfg)
        for p in dit.parameters():  # non-zero head etc., so the trajectory is not trivial
            p.data.normal_(0, 0.02)
        ref = WanTransformer3DModel(**kwargs)
        ref.load_state_dict({from_official(k, DIFFUSERS): v for k, v in dit.state_dict().items()})
        ours[expert] = dit.to_dtype(dtype).to(device).eval()
        refs.append(_cast_like_diffusers(ref, dtype).to(device).eval())
    vae = AutoencoderKLWan(base_dim=8, z_dim=cfg.out_dim)  # only its strides are read (output_type="latent")
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=OfficialGridUniPC.make(shift),
                       transformer=refs[0], transformer_2=refs[1] if moe else None,
                       boundary_ratio=0.875 if moe else None)
    pipe.set_progress_bar_config(disable=True)
    models = WanModels(ours, vae=None, text_encoder=None, boundary=0.875 if moe else None)
    return models, pipe


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="cpu-100m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--moe", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    cfg, device, dtype = preset["config"], preset["device"], preset["dtype"]
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"preset {args.preset} needs a CUDA device")

    models, pipe = build(cfg, moe=args.moe, device=device, dtype=dtype, shift=args.shift)
    settings = Sampling(steps=args.steps, shift=args.shift, guidance_scale=args.guidance, width=preset["width"],
                        height=preset["height"], num_frames=preset["frames"])
    g = torch.Generator().manual_seed(0)
    latent = (cfg.out_dim, 1 + (settings.num_frames - 1) // 4, settings.height // 8, settings.width // 8)
    noise = torch.randn(1, *latent, generator=g)
    context = torch.randn(1, 120, cfg.text_dim, generator=g).to(device, dtype)
    negative = torch.randn(1, 120, cfg.text_dim, generator=g).to(device, dtype)
    pad = torch.nn.functional.pad  # diffusers' pipeline pads prompt embeddings to 512 when it encodes them itself

    def run_ours():
        out = denoise(models, noise, context.float(), negative.float(), Conditioning(), settings, device=device)
        _sync(device)
        return out

    def run_diffusers():
        out = pipe(prompt_embeds=pad(context, (0, 0, 0, 392)), negative_prompt_embeds=pad(negative, (0, 0, 0, 392)),
                   height=settings.height, width=settings.width, num_frames=settings.num_frames,
                   num_inference_steps=args.steps, guidance_scale=args.guidance, latents=noise.to(device),
                   output_type="latent", return_dict=False)[0]
        _sync(device)
        return out

    fns = {"wan_train": run_ours, "diffusers": run_diffusers}
    results = {name: fn() for name, fn in fns.items()}  # warm-up, and the results compared below
    diff = (results["wan_train"].float().cpu() - results["diffusers"].float().cpu()).abs().max().item()
    times = {name: [] for name in fns}
    for r in range(args.repeats):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    ratios = [a / b for a, b in zip(times["wan_train"], times["diffusers"], strict=True)]
    q1, q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    result = {
        "preset": args.preset, "date": date.today().isoformat(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": str(dtype), "moe": args.moe, "steps": args.steps, "guidance": args.guidance,
        "latent": list(latent), "repeats": args.repeats, "median_s": median,
        "time_ratio_ours_over_diffusers": q2, "time_ratio_quartiles": [q1, q3], "max_abs_diff_latents": diff,
    }
    print(f"{args.preset}: {args.steps} UniPC steps, CFG {args.guidance}, latent {latent}, {dtype}, "
          f"{'two experts' if args.moe else 'one DiT'}, {result['device']}")
    for name in fns:
        print(f"  {name:10s} median {median[name]:8.3f} s per video ({median[name] / args.steps * 1e3:7.1f} ms/step)")
    print(f"  time ratio (wan_train / diffusers): median {q2:.3f} over {args.repeats} rounds "
          f"(quartiles {q1:.3f}-{q3:.3f})")
    print(f"  max |latents difference|: {diff:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def _cast_like_diffusers(model, dtype: torch.dtype):
    """What from_pretrained(torch_dtype=dtype) does: the modules it lists as float32-only stay float32."""
    keep = tuple(model._keep_in_fp32_modules or ())
    for name, param in model.named_parameters():
        param.data = param.data.to(torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
