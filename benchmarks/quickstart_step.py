"""The quickstart DiT's CPU training step (text encoding, forward, backward) as it is now (4 blocks, the prompt
padded to 64 tokens) against the earlier quickstart DiT (2 blocks, padded to Wan's 512), in one process, on
recipe=quickstart_base's clips (96p x 17 frames: 5 x 12 x 22 latents, batch 2) and a demo caption.

    python benchmarks/quickstart_step.py --repeats 30

Timing alternates the variants step by step (order flipped every round, as benchmarks/dit_step.py); each ratio is
the median over rounds of variant / earlier within a round, with its quartiles. Also timed: 2 blocks at 64 and 4
blocks at 512, which split the two changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dit_step import time_steps  # noqa: E402

from wan_train.models import WanDiT, builtin_text_encoder, get_size  # noqa: E402

CAPTION = "a large red circle moves from left to right on a black background"
VARIANTS = {"earlier: 2 blocks, 512": (2, 512), "2 blocks, 64": (2, 64), "4 blocks, 512": (4, 512),
            "now: 4 blocks, 64": (4, 64)}


def make_step(layers: int, text_len: int, batch: int):
    cfg = dataclasses.replace(get_size("quickstart").dit, num_layers=layers, text_len=text_len)
    torch.manual_seed(0)
    dit = WanDiT(cfg).train()
    encoder = builtin_text_encoder(text_dim=cfg.text_dim, text_len=text_len)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_dim, 5, 12, 22, generator=g)
    t = torch.full((batch,), 700.0)

    def step():
        dit.zero_grad(set_to_none=True)
        context, lengths = encoder.encode([CAPTION] * batch)
        context = context[:, : int(lengths.max())]  # as shot_context: the tokens, the DiT pads to its text_len
        dit(x, t, context).square().mean().backward()
    return step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args(argv)
    steps = {name: make_step(layers, text_len, args.batch) for name, (layers, text_len) in VARIANTS.items()}
    times = time_steps(steps, warmup=args.warmup, repeats=args.repeats)
    earlier = times["earlier: 2 blocks, 512"]
    print(f"{date.today()}  CPU, {torch.get_num_threads()} threads ({platform.machine()})  torch {torch.__version__}"
          f"  batch {args.batch}, {args.repeats} rounds")
    print("| variant | median step | ratio to earlier (quartiles) |\n|---|---|---|")
    for name, ts in times.items():
        ratios = sorted(a / b for a, b in zip(ts, earlier, strict=True))
        q = statistics.quantiles(ratios, n=4)
        print(f"| {name} | {statistics.median(ts):.3f} s | **{statistics.median(ratios):.3f}** "
              f"({q[0]:.3f}-{q[2]:.3f}) |")


if __name__ == "__main__":
    main()
