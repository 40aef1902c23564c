"""Do a text-to-video model's own videos show what their prompts say? For the quickstart's moving shapes
(data_tools.make_demo: one flat-colour shape on a plain background, "a large red circle moves from left to right on
a black background"): each run generates one video per held-out caption, with the same seeds in every run, and each
video is scored against its caption and the held-out clip that caption describes (only for the colours and the
shape's outline: nothing of the clip goes into the generation).

- background: the generated video's median colour is nearest (among the backgrounds of all the held-out clips) to
  the clip's own background.
- colour: the generated video's regions (each frame's mean colour over REGION x REGION px around every 8 x 8
  block: the colour a viewer sees there, so that noise left in single blocks does not outvote a shape) far from its
  background (FOREGROUND) and within MATCH of one of the held-out clips' shape colours vote for that colour; the
  winner must be the clip's shape colour, with at least MIN_SHARE of the regions (a stray fleck is no shape).
- form: eval.form (one solid shape of the clip's outline: coherence x shape IoU, frame mean).
- along: eval.motion (the shape's displacement along the prompted direction, as a share of the frame, between the
  first and the last quarter of the frames); "moves the prompted way" counts along > 0.

The held-out clips themselves, scored the same way, come first in the table: what drawing each prompt exactly
scores (background and colour 1.00; form about 0.97).

A TI2V model (`model=quickstart_ti2v`) can also be scored from a first frame (`--first-frame`): the held-out clip's
own (`clip`: given where the shape starts, does it move it the prompted way?) or the first frame of the model's
own text-to-video video with the same seed (`generated`: the first frame from the text, then the motion from the
text and that frame, as Emu Video factorizes text-to-video).

    python -m data_tools.make_demo --output data/demo_heldout --seed 1 --num-clips 16
    python -m eval.prompt_match --runs quickstart=runs/quickstart --shards data/demo_heldout --count 16

Prints a Markdown table (one row per run) and, with --output, writes the per-clip scores as JSON; --save DIR also
writes each generated clip (mp4, GIF, settings) under DIR/<label>/.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eval.av_demo import labelled_runs
from eval.caption_swap import held_out_clips
from eval.form import form_scores, to_rgb
from eval.motion import motion_scores, prompted_direction

FOREGROUND = 60.0  # RGB distance from the background beyond which a pixel is the shape's (the demo keeps >= 150)
MIN_SHARE = 0.002  # of the regions: the core of the smallest shape (a small triangle) is 0.3%
SAME_COLOUR = 20.0  # held-out colours closer than this are one palette entry (H.264 moves flat colours a little)
CROP_MARGIN = 4  # px of background around a reference crop
MATCH = 40.0  # a region is a shape colour within this RGB distance (the demo's nearest two are 73 apart)
BLOCK, REGION = 8, 24  # px: the colour of a region is its mean over REGION x REGION px, one region per BLOCK px


def clip_colours(video: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(background [3], shape colour [3], reference crop [3, h, w]) of a held-out clip [3, F, H, W]: from its first
    frame, the background its median colour, the shape the pixels far from it, cropped with a margin."""
    frame = to_rgb(video[:, 0])
    background = np.median(frame.reshape(-1, 3), axis=0)
    shape = np.linalg.norm(frame - background, axis=-1) > FOREGROUND
    if not shape.any():
        raise ValueError("the held-out clip's first frame shows no shape (nothing far from its background)")
    ys, xs = np.nonzero(shape)
    top, bottom = max(ys.min() - CROP_MARGIN, 0), min(ys.max() + CROP_MARGIN + 1, frame.shape[0])
    left, right = max(xs.min() - CROP_MARGIN, 0), min(xs.max() + CROP_MARGIN + 1, frame.shape[1])
    return background, np.median(frame[shape], axis=0), video[:, 0, top:bottom, left:right]


def palette(colours: list[np.ndarray]) -> np.ndarray:
    """[N, 3]: the distinct colours (first of each group closer than SAME_COLOUR)."""
    out: list[np.ndarray] = []
    for colour in colours:
        if all(np.linalg.norm(colour - kept) >= SAME_COLOUR for kept in out):
            out.append(colour)
    return np.stack(out)


def nearest(colour: np.ndarray, entries: np.ndarray) -> int:
    return int(np.linalg.norm(entries - colour, axis=-1).argmin())


def video_colours(video: torch.Tensor, shapes: np.ndarray) -> tuple[np.ndarray, int | None, float]:
    """(background [3], index of the shape colour in `shapes` or None, that colour's share of the pixels) of a
    generated video [3, F, H, W]."""
    pixels = to_rgb(regions(video)).reshape(-1, 3)
    background = np.median(pixels, axis=0)
    foreground = pixels[np.linalg.norm(pixels - background, axis=-1) > FOREGROUND]
    if not len(foreground):
        return background, None, 0.0
    distances = np.linalg.norm(foreground[:, None] - shapes[None], axis=-1)
    votes = distances.argmin(1)[distances.min(1) < MATCH]  # regions mixing shape and background match no colour
    counts = np.bincount(votes, minlength=len(shapes))
    share = float(counts.max() / len(pixels))
    return background, (int(counts.argmax()) if share >= MIN_SHARE else None), share


def regions(video: torch.Tensor) -> torch.Tensor:
    """[3, F, H / BLOCK, W / BLOCK]: each frame's mean colour over REGION x REGION px around each BLOCK x BLOCK block
    (edges replicated)."""
    blocks = F.avg_pool2d(video.float().transpose(0, 1), BLOCK)  # [F, 3, h, w]
    pad = REGION // BLOCK // 2
    padded = F.pad(blocks, (pad, pad, pad, pad), mode="replicate")
    return F.avg_pool2d(padded, REGION // BLOCK, stride=1).transpose(0, 1)


def score_video(video: torch.Tensor, *, clip: dict, backgrounds: np.ndarray, shapes: np.ndarray) -> dict:
    """The scores of one generated video against its held-out clip's colours, outline and caption."""
    background, colour, share = video_colours(video, shapes)
    direction = prompted_direction(clip["caption"])
    form = form_scores(video, clip["reference"])
    along = motion_scores(video, clip["reference"], direction)["along"] if direction else None
    return {"background": nearest(background, backgrounds) == nearest(clip["background"], backgrounds),
            "colour": colour is not None and colour == nearest(clip["shape"], shapes), "colour_share": share,
            "form": form["form"], "coherence": form["coherence"], "shape_iou": form["shape_iou"], "along": along}


def held_out(shards: list[str], count: int, *, frames: int, stride: int) -> list[dict]:
    """The first `count` held-out clips: caption, size, colours and reference crop."""
    skipped: Counter = Counter()
    out = []
    for key, caption, video in held_out_clips(shards, frames=frames, fps=None, stride=stride, skipped=skipped):
        background, shape, reference = clip_colours(video)
        out.append({"key": key, "caption": caption, "width": video.shape[-1], "height": video.shape[-2],
                    "background": background, "shape": shape, "reference": reference, "video": video})
        if len(out) == count:
            break
    if not out:
        raise ValueError(f"--shards {' '.join(shards)}: no held-out clips (skipped: {dict(skipped) or 'none'})")
    return out


def summarise(clips: list[dict]) -> dict:
    alongs = [c["along"] for c in clips if c["along"] is not None]
    return {"clips": len(clips), "background": float(np.mean([c["background"] for c in clips])),
            "colour": float(np.mean([c["colour"] for c in clips])),
            "both": float(np.mean([c["background"] and c["colour"] for c in clips])),
            "form": float(np.mean([c["form"] for c in clips])),
            "along": float(np.mean(alongs)) if alongs else None,
            "along_positive": float(np.mean([a > 0 for a in alongs])) if alongs else None}


def score_held_out(clips: list[dict]) -> dict:
    """The held-out clips themselves, scored as the generated videos are: what a model that draws its prompts
    exactly would score."""
    backgrounds, shapes = palette([c["background"] for c in clips]), palette([c["shape"] for c in clips])
    rows = [{"key": c["key"], "caption": c["caption"],
             **score_video(c["video"], clip=c, backgrounds=backgrounds, shapes=shapes)} for c in clips]
    return {"run": "held-out clips", **summarise(rows), "per_clip": rows}


def score_run(run_dir: str | Path, clips: list[dict], *, seed: int, overrides: dict, save: Path | None = None,
              label: str = "run", first_frame: str = "none", ema: bool = False) -> dict:
    """first_frame (TI2V models): "none" text-to-video; "clip" each video from its held-out clip's first frame
    (does the model move a given shape the prompted way?); "generated" from the first frame of its own
    text-to-video video with the same seed (the first frame from the text, then the motion from text and frame:
    Emu Video's factorization). ema: the run's EMA weights (trainer.ema_decay)."""
    from wan_train.inference import generate, load, official, save_video, with_overrides

    models = load(run_dir, ema=ema).models
    if first_frame != "none" and "ti2v" not in models.tasks:
        raise ValueError(f"{run_dir}: --first-frame {first_frame} needs a TI2V model (first frame given), this one is "
                         f"{models.config.model_type}")
    backgrounds, shapes = palette([c["background"] for c in clips]), palette([c["shape"] for c in clips])
    rows = []
    for i, clip in enumerate(clips):
        settings = with_overrides(official(models.size), {"width": clip["width"], "height": clip["height"],
                                                           **overrides})
        video = None if first_frame == "clip" else generate(models, clip["caption"], settings=settings,
                                                            seed=seed + i)[0]
        if first_frame != "none":  # the same seed again, from the clip's or that text-to-video's first frame
            image = (clip["video"] if first_frame == "clip" else video)[:, 0].clamp(-1, 1)
            video = generate(models, clip["caption"], settings=settings, seed=seed + i, task="ti2v",
                             images=image[None])[0]
        row = {"key": clip["key"], "caption": clip["caption"], "seed": seed + i,
               **score_video(video, clip=clip, backgrounds=backgrounds, shapes=shapes)}
        rows.append(row)
        if save is not None:
            save_video(save / label / f"clip_{i:02d}.mp4", video, fps=settings.fps, metadata=row)
    return {"run": str(run_dir), **summarise(rows), "per_clip": rows}


def table(results: dict[str, dict]) -> str:
    lines = ["| run | background | shape colour | both | form | along the prompt (mean) | moves the prompted way | "
             "clips |", "|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        along = "-" if r["along"] is None else f"{r['along']:+.2f}"
        positive = "-" if r["along_positive"] is None else f"{r['along_positive']:.2f}"
        lines.append(f"| {label} | {r['background']:.2f} | {r['colour']:.2f} | {r['both']:.2f} | {r['form']:.2f} | "
                     f"{along} | {positive} | {r['clips']} |")
    return "\n".join(lines)


def add_held_out_arguments(parser: argparse.ArgumentParser) -> None:
    """--runs LABEL=RUN_DIR ..., --shards and --count: the runs to score and the held-out clips to score them on."""
    parser.add_argument("--runs", nargs="+", required=True, metavar="LABEL=RUN_DIR",
                        help="training run folders or checkpoints, each with a label")
    parser.add_argument("--shards", nargs="+", required=True, help="the held-out make_demo shards (data/demo_val)")
    parser.add_argument("--count", type=int, default=16, help="held-out captions (one video or estimate each per run)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.prompt_match", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_held_out_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="caption i gets seed + i, the same in every run")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's preset)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the model's preset")
    parser.add_argument("--shift", type=float, default=None, help="sampling shift (default: the model's preset)")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="guide only the steps whose sigma lies in [LOW, HIGH] (default: the model's preset)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: the model's preset)")
    parser.add_argument("--first-frame", choices=("none", "clip", "generated"), default="none",
                        help="TI2V models: generate from the held-out clip's first frame, or from the first frame of "
                             "the model's own text-to-video video (default: text-to-video only)")
    parser.add_argument("--ema", action="store_true", help="score the runs' EMA weights (trainer.ema_decay)")
    parser.add_argument("--output", type=Path, default=None, help="write the scores (per clip too) as JSON")
    parser.add_argument("--save", type=Path, default=None, help="also write the generated clips under DIR/<label>/")
    args = parser.parse_args(argv)
    runs = labelled_runs(parser, args.runs)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    from wan_train.inference import load, official

    first = load(next(iter(runs.values()))).models
    frames = args.frames or official(first.size).num_frames
    clips = held_out(args.shards, args.count, frames=frames, stride=first.stride[1])
    overrides = {"steps": args.steps, "guidance_scale": args.guidance_scale, "shift": args.shift,
                 "guidance_interval": args.guidance_interval, "num_frames": frames}
    results = {"held-out clips": score_held_out(clips)}
    results |= {label: score_run(path, clips, seed=args.seed, overrides=overrides, save=args.save, label=label,
                                 first_frame=args.first_frame, ema=args.ema) for label, path in runs.items()}
    print(table(results))
    if args.output is not None:
        from wan_train.fileio.durable import write_text

        write_text(args.output, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
