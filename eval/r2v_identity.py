"""Identity of reference-to-video outputs on a reference index: for every usable sample of
`python -m data_tools.reference_index SHARDS --crops DIR --output refs.json`, generate its tagged caption with the
motion reversed (the subject must appear in a motion its reference never showed) from its reference crops, and
score the frames against each reference with CLIP-I / DINO-I (eval.identity.identity_similarity) and, for flat-colour
subjects such as the quickstart's shapes, with the form of eval.form (one solid shape of the reference's outline,
rather than its colour scattered) and the motion of eval.motion (does it move the way the prompt says).

    python -m eval.r2v_identity runs/r2v --index refs.json --image-model models/random/dinov2 --out r2v.json
    python -m eval.r2v_identity runs/quickstart_1k --index refs.json --image-model models/random/dinov2

A checkpoint without the reference extension (the base) generates the same prompts as text-to-video, each tag
replaced by --untagged (it cannot know the subject): the floor that the references must lift. With --named it reads
each tag as its subject's name from the index instead ("a large red circle"): what text alone tells the base. Prints
the means and writes one row per sample."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval.form import MIN_AREA, form_scores
from eval.identity import identity_similarity
from eval.motion import DIRECTIONS, motion_scores, prompted_direction
from eval.scorers import image_embedder, reference_picture, resolve_device
from wan_train.inference.loading import load
from wan_train.inference.outputs import save_video
from wan_train.inference.pipeline import generate
from wan_train.inference.presets import official, with_overrides
from wan_train.inference.references import TAG, read_reference

# each motion phrase of the demo captions -> the phrase of the opposite direction
REVERSED = {phrase: next(other for other, (u, v) in DIRECTIONS.items() if (u, v) == (-x, -y))
            for phrase, (x, y) in DIRECTIONS.items()}


def new_motion(prompt: str) -> str:
    """The prompt with every motion phrase reversed (at once, so two subjects swap theirs)."""
    marks = {phrase: f"\0{i}\0" for i, phrase in enumerate(REVERSED)}
    for phrase, mark in marks.items():
        prompt = prompt.replace(phrase, mark)
    for phrase, mark in marks.items():
        prompt = prompt.replace(mark, REVERSED[phrase])
    return prompt


def samples(index: dict) -> list[dict]:
    usable = [e for e in index["entries"] if e.get("ok") and e.get("crops")]
    if not usable:
        raise ValueError("the index has no usable sample with reference crops: build it with --crops DIR")
    return usable


def subject_names(entry: dict) -> list[str]:
    """The subjects' names in tag order (@Video1 first)."""
    if "names" in entry:
        return entry["names"]
    if len(entry["subjects"]) == 1:
        return entry["subjects"]
    raise ValueError(f"{entry['key']}: the index does not say which of the subjects {entry['subjects']} each tag "
                     "stands for; build it again with this version of data_tools.reference_index")


def untag(prompt: str, entry: dict, *, untagged: str, named: bool) -> str:
    """A tagged prompt as the base reads it: each @VideoN as `untagged`, or with `named` as its subject's name."""
    if not named:
        return TAG.sub(untagged, prompt)
    names = subject_names(entry)
    return TAG.sub(lambda tag: names[int(tag.group(1)) - 1], prompt)


def evaluate(ckpt: str, index: dict, *, image_model: str, steps: int | None, frames: int, seed: int,
             untagged: str = "a subject", named: bool = False, device: str = "auto", videos: Path | None = None,
             min_area: float = MIN_AREA) -> dict:
    device = resolve_device(device)
    models = load(ckpt, device=device).models
    r2v = "r2v" in models.tasks
    settings = with_overrides(official(models.size), {"steps": steps, "num_frames": frames})
    embedder = image_embedder(image_model, device)
    rows = []
    for i, entry in enumerate(samples(index)):
        tagged = new_motion(entry["prompt"])
        prompt = tagged if r2v else untag(tagged, entry, untagged=untagged, named=named)
        references = [read_reference(p, width=settings.width, height=settings.height) for p in entry["crops"]]
        video = generate(models, [prompt], settings=settings, seed=seed + i, task="r2v" if r2v else "t2v",
                         references=references if r2v else (), device=device)
        pictures = [reference_picture(p) for p in entry["crops"]]
        scores = [float(identity_similarity(video, picture, embedder=embedder)[0]) for picture in pictures]
        forms = [form_scores(video[0], picture[0], min_area=min_area) for picture in pictures]
        directions = [prompted_direction(tagged, f"@Video{slot + 1}") for slot in range(len(pictures))]
        motions = [motion_scores(video[0], picture[0], direction) if direction else None
                   for picture, direction in zip(pictures, directions, strict=True)]
        along = [m["along"] for m in motions if m is not None]
        rows.append({"key": entry["key"], "shard": entry["shard"], "prompt": prompt, "refs": entry["crops"],
                     "identity": sum(scores) / len(scores), "per_reference": scores,
                     "form": sum(f["form"] for f in forms) / len(forms), "per_reference_form": forms,
                     "along": sum(along) / len(along) if along else None, "per_reference_motion": motions})
        if videos is not None:
            save_video(videos / f"{i:03d}_{entry['key']}.mp4", video[0], fps=settings.fps,
                       metadata={"ckpt": ckpt, **rows[-1]})
    mean = sum(r["identity"] for r in rows) / len(rows)
    metric = "clip_i" if embedder.kind == "clip" else "dino_i"
    moved = [r["along"] for r in rows if r["along"] is not None]
    return {"ckpt": ckpt, "task": "r2v" if r2v else "t2v",
            "untagged": None if r2v else ("names" if named else untagged), "metric": metric,
            "image_model": image_model,
            "settings": {"steps": settings.steps, "num_frames": settings.num_frames, "seed": seed},
            "min_area": min_area, "mean_identity": mean, "mean_form": sum(r["form"] for r in rows) / len(rows),
            "mean_along": sum(moved) / len(moved) if moved else None,
            "prompted_way": sum(a > 0 for a in moved), "samples": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.r2v_identity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="a training run folder, a Wan model folder or a DiT file")
    parser.add_argument("--index", required=True, type=Path, help="data_tools.reference_index output, with --crops")
    parser.add_argument("--image-model", required=True, help="a DINOv2 / DINO / CLIP folder (dino_i / clip_i)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's official)")
    parser.add_argument("--frames", type=int, default=17, help="frames per video (1 + 4k)")
    parser.add_argument("--seed", type=int, default=0, help="sample i gets seed + i")
    parser.add_argument("--untagged", default="a subject",
                        help="what a checkpoint without references reads in place of each @VideoN tag")
    parser.add_argument("--named", action="store_true",
                        help="a checkpoint without references reads each tag as its subject's name instead")
    parser.add_argument("--min-area", type=float, default=MIN_AREA,
                        help="eval.form: the least share of the frame a drawn shape covers (smaller is a speck)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows here (JSON)")
    parser.add_argument("--videos", type=Path, default=None, metavar="DIR",
                        help="also write each generated video here (mp4, a contact sheet and its scores)")
    args = parser.parse_args(argv)
    result = evaluate(args.ckpt, json.loads(args.index.read_text()), image_model=args.image_model,
                      steps=args.steps, frames=args.frames, seed=args.seed, untagged=args.untagged, named=args.named,
                      videos=args.videos, min_area=args.min_area)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.ckpt} ({result['task']}): mean {result['metric']} {result['mean_identity']:.4f} over "
          f"{len(result['samples'])} samples; mean form {result['mean_form']:.4f}", end="")
    if result["mean_along"] is not None:
        moved = sum(r["along"] is not None for r in result["samples"])
        print(f"; mean motion along the prompt {result['mean_along']:+.3f} of the frame "
              f"({result['prompted_way']} of {moved} the prompted way)", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
