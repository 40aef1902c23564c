"""The audio-video sync demo's table: runs trained on make_av_demo's flashes and beeps (recipe=av, and its no-fusion
ablation model.fusion=false) each generate one clip per held-out caption, with the same seeds; every clip is scored
against itself, its sound against its own picture (nothing of the held-out clip but its caption is used):

- offset: eval.sync.av_offset of the sound against the picture, in video frames (positive: the sound is late); a
  clip is in sync when |offset| <= 1 frame. A clip whose picture or sound has no event has no offset (counted out
  of sync).
- onset F1: the sound's onsets against the picture's own events (eval.sync.onset_scores, 1 frame tolerance);
  AV-Align (eval.sync.av_align).
- colour -> pitch: at each flash of the picture (a frame where the summed brightening over the shapes peaks), the
  colour that brightened most (its RGB channel; the demo's colours are red, green and blue) and the pitch the sound
  holds from that frame to FLASH_WINDOW frames after it (the strongest of the demo's pitches in its spectrum); right
  when that pitch is the colour's (PITCHES, read from the captions' `events`). Chance: one in three; a flash with
  no sound around it counts as wrong.

    python -m eval.av_demo --runs fusion=runs/av_demo no_fusion=runs/av_demo_nofusion \\
        --prompts data/av_demo_val --count 16 --output runs/av_demo_table.json

Prints a Markdown table (one row per run) and writes the per-clip scores as JSON; --save DIR also writes each
generated clip (mp4 with its sound, a .wav and a contact sheet) under DIR/<run>/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tarfile
from pathlib import Path

import torch

from eval.sync import av_offset, onset_scores
from eval.sync import av_align as av_align_score

IN_SYNC = 1  # frames: |offset| <= this is in sync
FLASH_WINDOW = 3  # frames after a flash's onset in which its beep is looked for
RISE_SHARE = 0.3  # a flash: a frame whose brightening is a local maximum above this share of the clip's largest
BAND = 0.06  # a pitch's band: +-6 % around it (the demo's pitches are an octave apart)


def held_out_captions(folder: str | Path, count: int) -> list[dict]:
    """The first `count` samples of the shards in `folder` (in name order): {"caption", "events"} from each .json."""
    out = []
    for shard in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if member.name.endswith(".json"):
                    record = json.loads(tar.extractfile(member).read())
                    out.append({"caption": record["caption"], "events": record.get("events", [])})
                    if len(out) == count:
                        return out
    if not out:
        raise FileNotFoundError(f"--prompts {folder}: no shards with .json captions (make them with "
                                "python -m data_tools.make_av_demo)")
    return out


def pitches_of(samples: list[dict]) -> dict[str, float]:
    """colour -> pitch (Hz), as the captions' events record it."""
    return {event["colour"]: float(event["pitch"]) for sample in samples for event in sample["events"]}


def flashes(video: torch.Tensor) -> list[tuple[int, int]]:
    """(frame, brightest channel) of each flash: local maxima of the summed per-channel brightening (video
    [3, F, H, W] in [-1, 1]) above RISE_SHARE of its largest value."""
    rise = (video[:, 1:] - video[:, :-1]).clamp_min(0).mean(dim=(2, 3))  # [3, F - 1]: frame i + 1's rise
    total = rise.sum(0)
    if total.numel() < 3 or float(total.max()) <= 1e-3:
        return []
    out = []
    for i in range(total.numel()):
        left = total[i - 1] if i > 0 else -math.inf
        right = total[i + 1] if i + 1 < total.numel() else -math.inf
        if total[i] > left and total[i] >= right and total[i] >= RISE_SHARE * total.max():
            out.append((i + 1, int(rise[:, i].argmax())))
    return out


def pitch_at(audio: torch.Tensor, *, frame: int, fps: float, sample_rate: int, pitches: list[float]) -> float | None:
    """The strongest of `pitches` in the sound from `frame` to FLASH_WINDOW frames after it (None: silence)."""
    start, end = round(frame / fps * sample_rate), round((frame + FLASH_WINDOW) / fps * sample_rate)
    piece = audio[start:end].double()
    if piece.numel() < 64 or float(piece.abs().max()) < 1e-3:
        return None
    spectrum = torch.fft.rfft(piece * torch.hann_window(piece.numel(), dtype=torch.float64)).abs().square()
    freqs = torch.fft.rfftfreq(piece.numel(), d=1.0 / sample_rate)
    energy = [float(spectrum[(freqs > p * (1 - BAND)) & (freqs < p * (1 + BAND))].sum()) for p in pitches]
    return pitches[max(range(len(pitches)), key=energy.__getitem__)] if max(energy) > 0 else None


CHANNELS = ("red", "green", "blue")


def colour_pitch(video: torch.Tensor, audio: torch.Tensor, *, fps: float, sample_rate: int,
                 pitches: dict[str, float]) -> tuple[int, int]:
    """(flashes whose sound has the flashing colour's pitch, flashes) of one clip."""
    right, found = 0, flashes(video)
    for frame, channel in found:
        heard = pitch_at(audio, frame=frame, fps=fps, sample_rate=sample_rate, pitches=sorted(pitches.values()))
        right += heard is not None and heard == pitches.get(CHANNELS[channel])
    return right, len(found)


def score_clip(video: torch.Tensor, audio: torch.Tensor, *, fps: float, sample_rate: int,
               pitches: dict[str, float]) -> dict:
    offset = av_offset(video, audio, fps=fps, sample_rate=sample_rate)
    onsets = onset_scores(video, audio, fps=fps, sample_rate=sample_rate)
    right, count = colour_pitch(video, audio, fps=fps, sample_rate=sample_rate, pitches=pitches)
    events = bool(flashes(video)) and float(audio.abs().max()) > 1e-3
    return {"offset": offset.frames if events else None, "offset_confidence": offset.confidence,
            "in_sync": events and abs(offset.frames) <= IN_SYNC, "onset_f1": onsets["f1"],
            "av_align": av_align_score(video, audio, fps=fps, sample_rate=sample_rate),
            "colour_pitch_right": right, "flashes": count}


def summarise(clips: list[dict]) -> dict:
    n = len(clips)
    flashes_total = sum(c["flashes"] for c in clips)
    offsets = sorted(abs(c["offset"]) for c in clips if c["offset"] is not None)
    return {"clips": n, "in_sync": sum(c["in_sync"] for c in clips) / n,
            "median_abs_offset": offsets[len(offsets) // 2] if offsets else None,
            "onset_f1": sum(c["onset_f1"] for c in clips) / n, "av_align": sum(c["av_align"] for c in clips) / n,
            "colour_pitch": sum(c["colour_pitch_right"] for c in clips) / flashes_total if flashes_total else 0.0,
            "flashes": flashes_total}


def score_run(run_dir: str | Path, samples: list[dict], *, seed: int, steps: int | None, batch: int,
              save: Path | None = None, label: str = "run", overrides: dict | None = None) -> dict:
    from wan_train.inference import load, official, save_video, with_overrides
    from wan_train.inference.av import generate_av

    models = load(run_dir).models
    settings = with_overrides(official(models.size), {"steps": steps, **(overrides or {})})
    pitches = pitches_of(samples)
    clips = []
    for first in range(0, len(samples), batch):
        chunk = samples[first:first + batch]
        out = generate_av(models, [s["caption"] for s in chunk], settings=settings, seed=seed + first)
        for i, sample in enumerate(chunk):
            video, audio = out.video[i], out.audio[i]
            clip = {"caption": sample["caption"], "seed": seed + first + i,
                    **score_clip(video, audio, fps=settings.fps, sample_rate=out.sample_rate, pitches=pitches)}
            clips.append(clip)
            if save is not None:
                save_video(save / label / f"clip_{first + i:02d}.mp4", video, fps=settings.fps, metadata=clip,
                           sound=(audio, out.sample_rate))
    return {"run": str(run_dir), "settings": {k: getattr(settings, k) for k in SETTINGS_SHOWN}, **summarise(clips),
            "per_clip": clips}


SETTINGS_SHOWN = ("steps", "shift", "guidance_scale", "audio_guidance_scale", "solver")


def table(results: dict[str, dict]) -> str:
    lines = ["| run | in sync (offset within +-1 frame) | median abs offset (frames) | onset F1 | AV-Align | "
             "colour -> pitch (chance 0.33) | clips |", "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        median = "-" if r["median_abs_offset"] is None else f"{r['median_abs_offset']}"
        lines.append(f"| {label} | {r['in_sync']:.2f} | {median} | {r['onset_f1']:.2f} | {r['av_align']:.2f} | "
                     f"{r['colour_pitch']:.2f} ({r['flashes']} flashes) | {r['clips']} |")
    return "\n".join(lines)


def labelled_runs(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """--runs LABEL=RUN_DIR ... as {label: run_dir}; a malformed item exits through parser.error (status 2)."""
    runs = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            parser.error(f"--runs {item!r}: expected LABEL=RUN_DIR")
        runs[label] = path
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.av_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="LABEL=RUN_DIR",
                        help="training run folders (or Ovi-style model folders), each with a label")
    parser.add_argument("--prompts", required=True, help="the held-out make_av_demo shards whose captions to use")
    parser.add_argument("--count", type=int, default=16, help="captions (clips per run)")
    parser.add_argument("--seed", type=int, default=0, help="caption i gets seed + i, the same in every run")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's preset)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="the picture's (default: the preset's)")
    parser.add_argument("--audio-guidance-scale", type=float, default=None, help="the sound's (default: the preset's)")
    parser.add_argument("--batch", type=int, default=4, help="clips generated at once")
    parser.add_argument("--output", type=Path, default=None, help="write the scores (per clip too) as JSON")
    parser.add_argument("--save", type=Path, default=None, help="also write the generated clips under DIR/<label>/")
    args = parser.parse_args(argv)
    runs = labelled_runs(parser, args.runs)
    samples = held_out_captions(args.prompts, args.count)
    overrides = {"guidance_scale": args.guidance_scale, "audio_guidance_scale": args.audio_guidance_scale}
    results = {label: score_run(path, samples, seed=args.seed, steps=args.steps, batch=args.batch, save=args.save,
                                label=label, overrides=overrides) for label, path in runs.items()}
    print(table(results))
    if args.output is not None:
        from wan_train.fileio.durable import write_text

        write_text(args.output, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
