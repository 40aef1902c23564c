"""Encode / decode throughput and peak memory of the Wan VAE, untiled and tiled, optionally side by side with
diffusers' AutoencoderKLWan (identical weights, same process).

    python benchmarks/vae_codec.py                                    # Wan2.1, 480p x 9 frames, CPU, fp32
    python benchmarks/vae_codec.py --frames 81 --device cuda --dtype bf16 --reference
    python benchmarks/vae_codec.py --height 240 --width 416 --frames 5 --reference --modes untiled

Each (operation, tiling) runs in a fresh subprocess so its peak memory is its own: on CUDA the allocator's peak
above the weights, on CPU the process's peak resident set (weights and interpreter included). Weights are
random unless --checkpoint names a real file (the compute does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from wan_train.models import VAE_CONFIGS, WanVAE, load_vae
from wan_train.models.checkpoint.vae_layouts import official_to_diffusers

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(args) -> WanVAE:
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    if args.checkpoint:
        return load_vae(args.checkpoint, dtype=dtype, device=device)
    torch.manual_seed(0)
    return WanVAE(VAE_CONFIGS[args.version]).to(device, dtype).eval()


def build_reference(ours: WanVAE):
    from diffusers import AutoencoderKLWan  # the reference; never imported by wan_train

    c = ours.config
    ref = AutoencoderKLWan(
        base_dim=c.base_dim, decoder_base_dim=c.decoder_base_dim, z_dim=c.z_dim, is_residual=c.residual,
        in_channels=c.io_channels, out_channels=c.io_channels, patch_size=c.patch_size if c.residual else None,
        scale_factor_spatial=c.spatial_compression, latents_mean=list(c.latents_mean),
        latents_std=list(c.latents_std))
    names = official_to_diffusers(ours)
    ref.load_state_dict({names[k]: v for k, v in ours.state_dict().items()})
    return ref.to(ours.conv2.weight.device, ours.dtype).eval()


def run_one(args) -> dict:
    """One measurement in this process: returns seconds and peak memory."""
    vae = build(args)
    device = vae.conv2.weight.device
    g = torch.Generator().manual_seed(0)
    tiled = args.one_tiled == "tiled"
    if args.one_op == "encode":
        data = (torch.rand(1, 3, args.frames, args.height, args.width, generator=g) * 2 - 1).to(device)
    else:
        data = torch.randn(1, *vae.latent_shape(args.frames, args.height, args.width), generator=g).to(device)
    if args.one_impl == "diffusers":
        ref = build_reference(vae)
        if tiled:
            ref.enable_tiling()
        del vae
        fn = ((lambda x: ref.encode(x.to(ref.dtype)).latent_dist.mode()) if args.one_op == "encode"
              else (lambda z: ref.decode(z.to(ref.dtype)).sample))
    else:
        fn = ((lambda x: vae.encode(x, tiled=tiled)) if args.one_op == "encode"
              else (lambda z: vae.decode(z, tiled=tiled)))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with torch.no_grad():
        fn(data)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"seconds": time.perf_counter() - start, "peak_bytes": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", choices=sorted(VAE_CONFIGS), default="wan2.1")
    p.add_argument("--checkpoint", help="a real VAE file or folder (default: random weights)")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--ops", nargs="+", choices=["encode", "decode"], default=["encode", "decode"])
    p.add_argument("--modes", nargs="+", choices=["untiled", "tiled"], default=["untiled", "tiled"])
    p.add_argument("--reference", action="store_true", help="also run diffusers' AutoencoderKLWan")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--one-op", help=argparse.SUPPRESS)
    p.add_argument("--one-tiled", help=argparse.SUPPRESS)
    p.add_argument("--one-impl", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_op:
        print(json.dumps(run_one(args)))
        return
    passthrough = [a for a in sys.argv[1:] if a != "--reference"]  # a measurement's process ignores --json
    rows = []
    impls = ["ours", "diffusers"] if args.reference else ["ours"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU {platform.machine()}"
    print(f"# {args.version} VAE, {args.frames} x {args.height} x {args.width}, {args.dtype}, {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| op | tiling | impl | seconds | frames/s | peak memory |\n|---|---|---|---|---|---|")
    for op in args.ops:
        for mode in args.modes:
            for impl in impls:
                cmd = [sys.executable, __file__, *passthrough, "--one-op", op, "--one-tiled", mode, "--one-impl", impl]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                r = json.loads(out)
                rows.append({"op": op, "tiling": mode, "impl": impl, **r, "frames_per_s": args.frames / r["seconds"]})
                print(f"| {op} | {mode} | {impl} | {r['seconds']:.1f} | {args.frames / r['seconds']:.3f} | "
                      f"{r['peak_bytes'] / 2**30:.2f} GiB |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"version": args.version, "device": device, "dtype": args.dtype,
                                               "shape": [args.frames, args.height, args.width], "rows": rows},
                                              indent=2))


if __name__ == "__main__":
    main()
