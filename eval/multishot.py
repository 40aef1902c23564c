"""Multi-shot outputs: do the cuts land where the prompt asked, and do the shots keep their subject? For every
prompt of a file ("Shot 1: ... Shot 2: ..." or plain ones planned into shots), generate the shots jointly and
check that the largest frame-difference peaks are the requested cuts (eval.cuts), and, with an image model, the
cross-shot identity consistency: the mean cosine between the middle frames of consecutive shots.

    python -m eval.multishot runs/multishot --prompts stories.txt --frames 33 --image-model models/random/dinov2
    python -m eval.multishot runs/quickstart_1k --shards data/stories_val --frames 27   # prompts from shot captions

A checkpoint without the shot extension generates each prompt as one text-to-video clip of the same length (the
smallest 1 + 4k frames that hold the shots, cut to their sum): where its peaks fall is the rate to beat."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from eval.cuts import detected_cuts, requested_cuts
from eval.scorers import image_embedder, resolve_device
from wan_train.inference.loading import load
from wan_train.inference.pipeline import generate
from wan_train.inference.presets import official, with_overrides
from wan_train.inference.shots import prompt_shots, shot_frames


def evaluate(ckpt: str, prompts: list[str], *, frames: int, steps: int | None, seed: int, tolerance: int = 0,
             shot_count: int | None = None, image_model: str | None = None, device: str = "auto") -> dict:
    device = resolve_device(device)
    models = load(ckpt, device=device).models
    multishot = any(dit.config.shots for dit in models.dits.values())
    settings = with_overrides(official(models.size), {"steps": steps, "num_frames": frames})
    stride = models.vae.temporal_compression
    embedder = image_embedder(image_model, device) if image_model else None
    rows = []
    for i, prompt in enumerate(prompts):
        lengths = shot_frames(prompt_shots(prompt, shots=shot_count), num_frames=frames, fps=settings.fps,
                              temporal_stride=stride)
        total = sum(lengths)
        if multishot:
            video = generate(models, [prompt], settings=settings, seed=seed + i, multishot=True,
                             shot_count=shot_count, device=device)[0]
        else:  # one clip long enough to hold the shots, cut to their length
            whole = settings.replace(num_frames=1 + stride * -(-(total - 1) // stride))
            video = generate(models, [prompt], settings=whole, seed=seed + i, device=device)[0][:, :total]
        wanted = requested_cuts(lengths)
        found = detected_cuts(video, len(wanted))
        row = {"prompt": prompt, "shot_frames": lengths, "requested_cuts": wanted, "detected_cuts": found,
               "hit": all(abs(f - w) <= tolerance for f, w in zip(found, wanted, strict=True))}
        if embedder is not None and len(lengths) > 1:
            bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
            middles = torch.stack([video[:, (a + b) // 2] for a, b in zip(bounds, bounds[1:], strict=False)])
            features = embedder(middles)
            row["consistency"] = float((features[1:] * features[:-1]).sum(-1).mean())
        rows.append(row)
    out = {"ckpt": ckpt, "multishot": multishot, "tolerance": tolerance, "frames": frames,
           "cut_rate": sum(r["hit"] for r in rows) / len(rows), "prompts": rows}
    if embedder is not None:
        out["consistency"] = sum(r["consistency"] for r in rows) / len(rows)
    return out


def shard_prompts(shards: list[str]) -> list[str]:
    """"GLOBAL. Shot 1: ... Shot 2: ..." for every sample of the shards that records shot captions."""
    from wan_train.data.metadata import parse_meta
    from wan_train.data.shards import expand_urls, read_samples

    prompts = []
    for sample in read_samples(expand_urls(shards), on_error=lambda error: None):
        meta = parse_meta(sample["json"], key=sample["__key__"])
        if meta.shot_captions:
            shots = " ".join(f"Shot {i + 1}: {c.rstrip('.')}." for i, c in enumerate(meta.shot_captions))
            prompts.append(f"{meta.captions[0].rstrip('.')}. {shots}")
    return prompts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.multishot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="a training run folder, a Wan model folder or a DiT file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", type=Path, help="one prompt per line")
    source.add_argument("--shards", nargs="+", help="or the shot captions of these shards' samples, as prompts")
    parser.add_argument("--frames", type=int, default=33, help="frames the shots share (num_frames)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's official)")
    parser.add_argument("--shots", type=int, default=None, help="shots to plan plain prompts into")
    parser.add_argument("--tolerance", type=int, default=0, help="frames a detected cut may be off by")
    parser.add_argument("--image-model", default=None, help="a DINOv2 / CLIP folder: cross-shot consistency too")
    parser.add_argument("--seed", type=int, default=0, help="prompt i gets seed + i")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows here (JSON)")
    args = parser.parse_args(argv)
    prompts = (shard_prompts(args.shards) if args.shards else
               [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()])
    if not prompts:
        parser.error("no prompts: the file is empty, or no sample of the shards records shot_captions")
    result = evaluate(args.ckpt, prompts, frames=args.frames, steps=args.steps, seed=args.seed,
                      tolerance=args.tolerance, shot_count=args.shots, image_model=args.image_model)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
    extra = f", consistency {result['consistency']:.4f}" if "consistency" in result else ""
    print(f"{args.ckpt}: cuts at the requested frame in {result['cut_rate']:.0%} of {len(prompts)} videos{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
