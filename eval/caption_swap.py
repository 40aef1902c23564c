"""Which words of its captions does a model read? The held-out flow loss of real clips under their own captions
and under captions with words swapped ("red=blue", "from left to right=from right to left"): a word the model
reads costs loss when it is swapped for another; a word it ignores costs nothing. Reported per noise level, since
the prompt matters most where the noise hides the picture.

- Clips: each held-out sample's first `frames` frames (at `fps`, picked as training picks them; default the
  video's own rate), centre-cropped to the largest size the model's stride divides, and its first caption.
- Swaps: "A=B" replaces every A by B and every B by A at once, whole words only (so "from left to right=from
  right to left" reverses every horizontal motion); a swap counts only the clips whose caption it changes.
- Loss: the training objective, the mean squared error of the predicted velocity against noise - x0 at each
  sigma, with the same noise for a clip's own and swapped captions (wan_train.flow.held_out_noise), averaged
  over the clips. Text-to-video models only: the clips are not conditioned on anything but their captions.

    python -m eval.caption_swap runs/quickstart_12k --shards data/demo_val --swap red=blue \\
        --swap "from left to right=from right to left" --swap "from top to bottom=from bottom to top"
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from wan_train.data.decode import decode_frames
from wan_train.data.errors import SampleError
from wan_train.data.metadata import VIDEO_EXTENSIONS, parse_meta
from wan_train.data.shards import expand_urls, read_samples
from wan_train.flow.held_out import held_out_noise
from wan_train.flow.path import interpolate, velocity_target
from wan_train.flow.schedule import to_timestep
from wan_train.inference.loading import load
from wan_train.inference.pipeline import ExpertSwitch, WanModels, encode_text
from wan_train.inference.references import reference_indices

log = logging.getLogger(__name__)

SIGMAS = (0.3, 0.5, 0.7, 0.9, 1.0)


def parse_swap(text: str) -> tuple[str, str]:
    """ "A=B" -> (A, B), both stripped, non-empty and different."""
    first, sep, second = text.partition("=")
    first, second = first.strip(), second.strip()
    if not sep or not first or not second or first == second:
        raise ValueError(f"--swap {text!r}: expected two different phrases, A=B (e.g. red=blue)")
    return first, second


def swapped(caption: str, first: str, second: str) -> str:
    """The caption with every whole-word `first` replaced by `second` and every `second` by `first`, in one pass.

    >>> swapped("a red circle and a blue square on a reddish background", "red", "blue")
    'a blue circle and a red square on a reddish background'
    """
    pattern = re.compile(rf"\b(?:{re.escape(first)}|{re.escape(second)})\b")
    return pattern.sub(lambda found: second if found.group(0) == first else first, caption)


def held_out_clips(shards: Sequence[str], *, frames: int, fps: float | None, stride: int,
                   skipped: Counter) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(key, caption, video [3, frames, H, W] in [-1, 1]) of each sample of the shards in order; samples without a
    caption, without a video or too short are skipped and counted in `skipped` by reason."""
    for sample in read_samples(expand_urls(list(shards)), on_error=lambda error: _skip(skipped, error)):
        key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        data = next((sample[ext] for ext in VIDEO_EXTENSIONS if ext in sample), None)
        try:
            if data is None or "json" not in sample:
                raise SampleError("missing_field", f"{key}: needs a video member and a .json with its captions")
            meta = parse_meta(sample["json"], key=key)
            if not meta.captions:
                raise SampleError("bad_metadata", f"{key}: no caption")
            rate = fps or meta.fps
            indices = reference_indices(meta.num_frames, meta.fps, frames=frames, fps=rate, start=0.0)
            if indices is None:
                raise SampleError("too_short", f"{key}: {meta.num_frames} frames at {meta.fps:g} fps, a clip "
                                               f"needs {frames} at {rate:g} fps")
            pixels = decode_frames(data, indices, size=(meta.width, meta.height), key=key)
        except SampleError as error:
            _skip(skipped, error)
            continue
        video = torch.from_numpy(pixels).permute(3, 0, 1, 2).float() / 127.5 - 1
        height, width = (side // stride * stride for side in video.shape[-2:])
        top, left = (video.shape[-2] - height) // 2, (video.shape[-1] - width) // 2
        yield key, meta.captions[0], video[:, :, top:top + height, left:left + width]


def _skip(skipped: Counter, error: SampleError) -> None:
    skipped[error.reason] += 1
    log.warning("caption_swap: skipped %s", error)


@torch.no_grad()
def caption_losses(models: WanModels, clips, swaps: Sequence[tuple[str, str]], *,
                   sigmas: Sequence[float] = SIGMAS, seed: int = 0, device: str = "cpu") -> dict:
    """{"clips", "sigmas", "own": [loss per sigma], "swaps": [{"swap", "clips", "own", "swapped", "cost"}]}: the
    mean loss of all clips under their own captions, and per swap the clips it changes, under their own and the
    swapped captions, and the difference (swapped - own) per sigma."""
    if "t2v" not in models.tasks:
        raise ValueError(f"caption_swap measures text-to-video models; this one does {list(models.tasks)}")
    switch = ExpertSwitch(models, torch.device(device), offload=False)
    own_total = torch.zeros(len(sigmas), dtype=torch.float64)
    per_swap = [{"swap": f"{a}={b}", "clips": 0, "own": torch.zeros(len(sigmas), dtype=torch.float64),
                 "swapped": torch.zeros(len(sigmas), dtype=torch.float64)} for a, b in swaps]
    count = 0
    for index, (key, caption, video) in enumerate(clips):
        captions = [caption] + [swapped(caption, a, b) for a, b in swaps]
        changed = [i for i, text in enumerate(captions[1:], 1) if text != caption]
        context, _ = encode_text(models, [captions[0]] + [captions[i] for i in changed], None, device=device)
        x0 = models.vae.encode(video[None].to(device)).float()
        noise = held_out_noise(x0.shape, seed=seed, index=index, device=device)
        target = velocity_target(x0, noise)
        for q, sigma in enumerate(sigmas):
            _, dit = switch(float(sigma))
            x = interpolate(x0, noise, float(sigma)).expand(len(context), *x0.shape[1:])
            t = to_timestep(torch.full((len(context),), float(sigma), device=device))
            losses = (dit(x, t, context).float() - target).pow(2).flatten(1).mean(1).double().cpu()
            own_total[q] += losses[0]
            for row, i in enumerate(changed, 1):
                per_swap[i - 1]["own"][q] += losses[0]
                per_swap[i - 1]["swapped"][q] += losses[row]
        for i in changed:
            per_swap[i - 1]["clips"] += 1
        count += 1
        log.info("%s: %r, %d swaps apply", key, caption, len(changed))
    if not count:
        raise ValueError("no held-out clips to measure (every sample was skipped)")
    out = {"clips": count, "sigmas": [float(s) for s in sigmas], "own": (own_total / count).tolist(), "swaps": []}
    for entry in per_swap:
        n = max(entry["clips"], 1)
        own, other = entry["own"] / n, entry["swapped"] / n
        out["swaps"].append({"swap": entry["swap"], "clips": entry["clips"], "own": own.tolist(),
                             "swapped": other.tolist(), "cost": (other - own).tolist()})
    return out


def table(result: dict) -> str:
    """The result as a text table: the loss under the clips' own captions, then each swap's cost per sigma."""
    sigmas = result["sigmas"]
    head = f"{'':<40}{'clips':>6}" + "".join(f"{f'sigma {s:g}':>12}" for s in sigmas)
    lines = [head, f"{'loss, own captions':<40}{result['clips']:>6}" + "".join(f"{v:>12.4f}" for v in result["own"])]
    for entry in result["swaps"]:
        costs = "".join(f"{v:>+12.4f}" for v in entry["cost"])
        lines.append(f"{'swap ' + entry['swap']:<40.40}{entry['clips']:>6}{costs}")
    lines.append("swap rows: the loss under the swapped captions minus under their own (0: the words are not read)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.caption_swap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="a training run folder or a Wan model folder (as generate.py ckpt=)")
    parser.add_argument("--shards", nargs="+", required=True, help="held-out WebDataset shards (folders or tars)")
    parser.add_argument("--swap", action="append", required=True, type=_swap_arg, metavar="A=B",
                        help="words to swap both ways; repeat for several")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (4k + 1)")
    parser.add_argument("--fps", type=float, default=None, help="the clips' frame rate (default: each video's own)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    parser.add_argument("--limit", type=int, default=None, help="at most this many clips")
    parser.add_argument("--seed", type=int, default=0, help="the held-out noise seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.frames < 1 or (args.frames - 1) % 4:
        parser.error(f"--frames {args.frames}: must be 4k + 1 (1, 5, 9, ...), the VAE's temporal stride")
    if any(not 0 < s <= 1 for s in args.sigmas):
        parser.error(f"--sigmas {args.sigmas}: each must be in (0, 1]")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    models = load(args.ckpt, device=args.device).models
    _, spatial = models.stride
    skipped = Counter()
    clips = held_out_clips(args.shards, frames=args.frames, fps=args.fps, stride=spatial, skipped=skipped)
    if args.limit is not None:
        clips = (clip for _, clip in zip(range(args.limit), clips, strict=False))
    result = caption_losses(models, clips, args.swap, sigmas=args.sigmas, seed=args.seed, device=args.device)
    result.update(ckpt=str(args.ckpt), shards=args.shards, frames=args.frames, skipped=dict(skipped))
    print(table(result))
    if skipped:
        print(f"skipped: {dict(skipped)}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _swap_arg(text: str) -> tuple[str, str]:
    try:
        return parse_swap(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


if __name__ == "__main__":
    sys.exit(main())
