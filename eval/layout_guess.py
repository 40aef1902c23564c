"""Where does a model put the prompted shape before it sees anything? Its clean-video estimate from pure noise
(sigma = 1), averaged over many noises, is its expectation of the whole clip given only the caption: for the
make_demo clips, the background with the shape's colour spread over where the shape may be in each frame. If the
model reads the direction words, that spread starts on the side the caption names and moves the prompted way from
the first frame to the last; a model that ignores them (or cannot tell left from right: its DiT's RoPE is relative)
spreads it the same way in every frame and for every direction. It needs no sampling, so it says in seconds
whether a training run has learned the layout its captions fix.

- Estimate: x0 = noise - v(noise, sigma 1, caption), the conditional prediction (no guidance), the mean over
  `noises` noises (seeded, the same for every run), decoded by the model's VAE.
- Coverage: per pixel, how far it lies from the clip's background toward its shape colour (both from the held-out
  clip, as eval.prompt_match takes them), in [0, 1]: the share of the noises whose clip the shape covers there.
- Along: the coverage-weighted centroid, its mean over the last quarter of the frames minus over the first quarter,
  projected on the prompted direction, as a share of the frame (eval.motion's measure); "the prompted way" counts
  along > 0. The held-out clips themselves come first, scored the same way (their own frames as the estimate).

    python -m eval.layout_guess --runs base=runs/quickstart_base --shards data/demo_large_heldout --count 16 \\
        --frames 17
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from eval.av_demo import labelled_runs
from eval.form import to_rgb
from eval.motion import prompted_direction
from eval.prompt_match import add_held_out_arguments, held_out

NOISES = 32


def coverage(video: torch.Tensor, background: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """float [F, H, W] in [0, 1]: each pixel of `video` [3, F, H, W] (in [-1, 1]) projected on the line from
    `background` to `colour` (RGB 0-255): 0 at the background, 1 at the shape's colour."""
    frames = to_rgb(video).astype(np.float64)
    span = np.asarray(colour, np.float64) - np.asarray(background, np.float64)
    share = (frames - np.asarray(background, np.float64)) @ span / max(float(span @ span), 1e-9)
    return np.clip(share, 0.0, 1.0)


def coverage_along(cover: np.ndarray, direction: tuple[int, int]) -> float | None:
    """The coverage-weighted centroid's displacement along `direction` (x right, y down), as a share of the frame:
    mean over the last quarter of the frames minus over the first; None where a quarter holds no coverage."""
    count, height, width = cover.shape
    mass = cover.sum(axis=(1, 2))
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (cover.sum(axis=1) * xs).sum(axis=1) / mass / width
        cy = (cover.sum(axis=2) * ys).sum(axis=1) / mass / height
    quarter = max(1, count // 4)
    first, last = slice(0, quarter), slice(count - quarter, count)
    if not (mass[first] > 0).any() or not (mass[last] > 0).any():
        return None
    dx = np.nanmean(cx[last]) - np.nanmean(cx[first])
    dy = np.nanmean(cy[last]) - np.nanmean(cy[first])
    return float(dx * direction[0] + dy * direction[1])


@torch.no_grad()
def estimate(models, caption: str, *, frames: int, height: int, width: int, noises: int = NOISES, seed: int = 0,
             device: str = "cpu") -> torch.Tensor:
    """[3, F, H, W] in [-1, 1]: the decoded mean clean-video estimate from `noises` pure noises (seed `seed`)."""
    from wan_train.flow.schedule import to_timestep
    from wan_train.inference.pipeline import ExpertSwitch, encode_text

    if "t2v" not in models.tasks:
        raise ValueError(f"layout_guess measures text-to-video models; this one does {list(models.tasks)}")
    _, dit = ExpertSwitch(models, torch.device(device), offload=False)(1.0)
    context, _ = encode_text(models, [caption], None, device=device)
    shape = models.vae.latent_shape(frames, height, width)
    noise = torch.randn(noises, *shape, generator=torch.Generator().manual_seed(seed)).to(device)
    total = torch.zeros(shape, dtype=torch.float32, device=device)
    for chunk in noise.split(8):
        t = to_timestep(torch.ones(len(chunk), device=device))
        v = dit(chunk, t, context.expand(len(chunk), *context.shape[1:])).float()
        total += (chunk - v).sum(0)
    return models.vae.decode((total / noises)[None])[0].float().cpu().clamp(-1, 1)


def score(video: torch.Tensor, clip: dict) -> dict:
    cover = coverage(video, clip["background"], clip["shape"])
    direction = prompted_direction(clip["caption"])
    return {"key": clip["key"], "caption": clip["caption"], "coverage": float(cover.mean()),
            "along": None if direction is None else coverage_along(cover, direction)}


def summarise(rows: list[dict]) -> dict:
    alongs = [r["along"] for r in rows if r["along"] is not None]
    return {"clips": len(rows), "coverage": float(np.mean([r["coverage"] for r in rows])),
            "along": float(np.mean(alongs)) if alongs else None,
            "along_positive": float(np.mean([a > 0 for a in alongs])) if alongs else None, "per_clip": rows}


def table(results: dict[str, dict]) -> str:
    lines = ["| run | along the prompt (mean) | the prompted way | coverage (mean) | clips |", "|---|---|---|---|---|"]
    for label, r in results.items():
        along = "-" if r["along"] is None else f"{r['along']:+.3f}"
        positive = "-" if r["along_positive"] is None else f"{r['along_positive']:.2f}"
        lines.append(f"| {label} | {along} | {positive} | {r['coverage']:.3f} | {r['clips']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.layout_guess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_held_out_arguments(parser)
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (4k + 1)")
    parser.add_argument("--noises", type=int, default=NOISES, help="pure noises averaged per caption")
    parser.add_argument("--seed", type=int, default=0, help="the noises' seed, the same for every run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None, help="write the scores (per clip too) as JSON")
    args = parser.parse_args(argv)
    runs = labelled_runs(parser, args.runs)
    if args.count < 1 or args.noises < 1:
        parser.error(f"--count and --noises must be >= 1, got {args.count} and {args.noises}")
    if args.frames < 1 or (args.frames - 1) % 4:
        parser.error(f"--frames {args.frames}: must be 4k + 1 (1, 5, 9, ...), the VAE's temporal stride")
    from wan_train.inference import load

    loaded = {label: load(path, device=args.device).models for label, path in runs.items()}
    clips = held_out(args.shards, args.count, frames=args.frames, stride=next(iter(loaded.values())).stride[1])
    results = {"held-out clips": summarise([score(c["video"], c) for c in clips])}
    for label, models in loaded.items():
        results[label] = summarise([score(estimate(models, c["caption"], frames=args.frames, height=c["height"],
                                                   width=c["width"], noises=args.noises, seed=args.seed,
                                                   device=args.device), c) for c in clips])
    print(table(results))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
