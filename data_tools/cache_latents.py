"""Encode video shards once with the frozen VAE and text encoder, into latent shards that train with neither in
memory (the DataModule's `kind: latents`).

    python -m data_tools.cache_latents --shards 'data/shard-{000000..000099}.tar' --model Wan2.1-T2V-1.3B \\
        --output latents/ --resolutions 480p --durations 5 --fps 16 [--task i2v] [--num-processes 8]

Each input shard becomes the output shard of the same name (latents at the sample's bucket from THE bucket
table, every caption's text embedding cut to its length, and for --task i2v the mask + conditioning latent `y`
and, for models with a CLIP branch, `clip_fea`). Clips are taken from the centre of the sample, centre-cropped.
Resumable: an output shard is written to a temp file and renamed with a sidecar of its stats; shards that have
both are skipped on the next run. Work is split by shard across processes: `--num-processes N` starts N (one
GPU each when there are GPUs); under torchrun or SLURM (RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS) each
launched process takes its share. Each process loads the encoders once and holds one sample at a time.

--audio also caches each clip's sound (wan_train.data.audio: its exact time span, mono at the autoencoder's rate)
as `audio_latents` [C, L] beside the video latents, with `has_audio`: `--audio mel` encodes with MelSpace (the
weight-free stand-in), `--audio DIR` with the MMAudio autoencoder from DIR's v1-16.pth and best_netG.pt (DIR, or
DIR/MMAudio/ext_weights as Ovi's folder lays them out). A sample without sound gets zeros and has_audio False
(never encoded silence); one whose sound is bad is skipped like a bad video. A shard cached with another --audio
is cached again."""

import argparse
import json
import os
import random
import sys
import tarfile
from collections import Counter
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import save as save_safetensors

from data_tools.common import add_tar_member, atomic_path, console, progress, summary, write_atomic
from wan_train.data.audio import clip_samples
from wan_train.data.buckets import ASPECT_RATIOS, BucketTable
from wan_train.data.decode import video_to_model
from wan_train.data.errors import SampleError
from wan_train.data.latents import EMPTY_PROMPT_FILE
from wan_train.data.shards import expand_urls, read_samples
from wan_train.data.video import VideoSource
from wan_train.inference import i2v_condition
from wan_train.models import load_wan
from wan_train.models.audio import load_audio_space

TASKS = ("t2v", "i2v", "flf2v")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PATCH = 2  # every Wan DiT patchifies latents (1, 2, 2): bucket sides are multiples of 2 x the VAE stride


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data_tools.cache_latents", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, nargs="+", help="input video shards: paths, brace patterns, a folder")
    p.add_argument("--model", required=True, help="Wan checkpoint folder (official or diffusers) with VAE + umT5")
    p.add_argument("--output", required=True, type=Path, help="folder for the latent shards")
    p.add_argument("--resolutions", nargs="+", default=["480p"])
    p.add_argument("--aspect-ratios", nargs="+", default=list(ASPECT_RATIOS))
    p.add_argument("--durations", nargs="+", type=float, default=[5.0], help="frame buckets in seconds at --fps")
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--task", choices=TASKS, default="t2v", help="i2v/flf2v also cache the conditioning y (+ CLIP)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="encoder weights (default: bfloat16 on "
                                                                       "GPU, float32 on CPU)")
    p.add_argument("--save-dtype", choices=list(DTYPES), default="bfloat16", help="dtype of the stored tensors")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--audio", default=None, metavar="mel|DIR",
                   help="also cache the clips' sound as audio latents: mel (MelSpace) or the folder of MMAudio's "
                        "v1-16.pth and best_netG.pt")
    return p.parse_args(argv)


def launched_rank() -> tuple[int, int]:
    """(rank, world size) of a process started by torchrun or srun; (0, 1) otherwise."""
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in os.environ and world in os.environ:
            return int(os.environ[rank]), int(os.environ[world])
    return 0, 1


def local_device(rank: int) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())


def load_encoders(model: str | Path, *, task: str, dtype: torch.dtype, device: torch.device):
    components = ("vae", "text_encoder") + (("clip",) if task != "t2v" else ())
    return load_wan(model, components=components, dtype=dtype, device=device)


def encode_audio(item: dict, *, model) -> dict[str, torch.Tensor]:
    """audio_latents [C, L] of the clip's sound ([T] samples; zeros where it has none: T from the clip's frames)
    and has_audio (bool, 0-d)."""
    if not item["has_audio"]:
        return {"audio_latents": torch.zeros(model.z_dim, model.latent_length(item["audio_samples"])),
                "has_audio": torch.tensor(False)}
    return {"audio_latents": model.encode(item["audio"][None].to(model.device))[0], "has_audio": torch.tensor(True)}


def encode_sample(item: dict, captions: tuple[str, ...], *, wan, task: str, save_dtype: torch.dtype,
                  audio_model=None) -> dict:
    """Tensors of one cached sample (see wan_train.data.latents for the format)."""
    video = video_to_model(item["video"][None])
    tensors = {"latents": wan.vae.encode(video)[0]}
    context, lengths = wan.text_encoder.encode(list(captions))
    tensors.update({f"context.{i}": context[i, :n] for i, n in enumerate(lengths.tolist())})
    if task != "t2v":
        tensors["y"] = i2v_condition(wan.vae, video, last=task == "flf2v")[0]
        if wan.clip is not None:
            frames = [video[:, :, 0]] + ([video[:, :, -1]] if task == "flf2v" else [])
            tensors["clip_fea"] = torch.cat([wan.clip.encode(f)[0] for f in frames])
    if audio_model is not None:
        tensors.update(encode_audio(item, model=audio_model))
    return {k: v.detach().to("cpu", save_dtype if v.is_floating_point() else v.dtype).contiguous()
            for k, v in tensors.items()}


def cache_shard(url: str, target: Path, *, source: VideoSource, wan, task: str, save_dtype: torch.dtype,
                audio_model=None, audio: str | None = None) -> dict:
    """Write one latent shard; returns its stats (samples, skipped by reason with messages; with audio_model, the
    samples without sound and `audio`, what --audio was)."""
    skipped, errors, samples, silent = Counter(), [], 0, 0

    def count(error: Exception):
        skipped[getattr(error, "reason", "unreadable_shard")] += 1
        errors.append(str(error))

    with atomic_path(target) as tmp, tarfile.open(tmp, "w") as tar:
        for raw in read_samples([url], on_error=count):
            rng = random.Random(f"{url}:{raw['__key__']}")
            try:
                planned = source.plan(raw, rng=rng)
                item = source.load(planned, rng=rng)
            except SampleError as error:
                count(error)
                continue
            meta = planned.choice["meta"]
            if audio_model is not None:
                item["audio_samples"] = clip_samples(planned.bucket.frames, fps=source.table.fps,
                                                     rate=audio_model.sample_rate)
            tensors = encode_sample(item, meta.captions, wan=wan, task=task, save_dtype=save_dtype,
                                    audio_model=audio_model)
            info = {"bucket": planned.bucket.key, "captions": list(meta.captions), "source": meta.source,
                    "start": item["start"], "fps": source.table.fps, "task": task, "vae": wan.vae.config.version}
            if audio_model is not None:
                info["audio"] = {"model": audio, "sample_rate": audio_model.sample_rate,
                                 "samples": item["audio_samples"], "has_audio": bool(item["has_audio"])}
                silent += not item["has_audio"]
            add_tar_member(tar, f"{raw['__key__']}.safetensors", save_safetensors(tensors))
            add_tar_member(tar, f"{raw['__key__']}.json", json.dumps(info).encode())
            samples += 1
    return {"samples": samples, "skipped": dict(skipped), "errors": errors, "audio": audio, "without_audio": silent}


def sidecar(target: Path) -> Path:
    return target.with_name(f".{target.name}.json")


def write_empty_prompt(output: Path, wan, save_dtype: torch.dtype) -> None:
    context, lengths = wan.text_encoder.encode([""])
    data = save_safetensors({"context": context[0, : lengths[0]].to("cpu", save_dtype).contiguous()})
    write_atomic(output / EMPTY_PROMPT_FILE, data)


def cached(target: Path, *, audio: str | None) -> bool:
    """An output shard finished earlier, with the same --audio."""
    try:
        return target.exists() and json.loads(sidecar(target).read_text()).get("audio") == audio
    except (OSError, ValueError):
        return False


def cache_latents(shards, output: Path, *, model, table: BucketTable, task: str = "t2v", dtype=None,
                  save_dtype: torch.dtype = torch.bfloat16, rank: int = 0, world_size: int = 1,
                  audio: str | None = None) -> dict:
    """Cache this rank's share of the shards (i, i + world_size, ...); returns the summary of the whole output.
    audio: also cache the clips' sound ("mel" or a folder, see load_audio_space)."""
    output = Path(output)
    mine = expand_urls(shards)[rank::world_size]
    todo = [u for u in mine if not cached(output / Path(u).name, audio=audio)]
    device = local_device(rank)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if todo or (rank == 0 and not (output / EMPTY_PROMPT_FILE).exists()):
        wan = load_encoders(model, task=task, dtype=dtype, device=device)
        stride = wan.vae.spatial_compression * PATCH
        if table.spatial_stride != stride:
            table = BucketTable(resolutions=table.resolutions, aspect_ratios=table.aspect_ratios,
                                durations=table.durations, fps=table.fps, spatial_stride=stride)
        audio_model = None if audio is None else load_audio_space(audio, device=device)
        source = VideoSource(table, caption_dropout=0.0, clip_start="centre", crop="centre", span="shot",
                             audio_rate=None if audio_model is None else audio_model.sample_rate)
        if rank == 0:
            write_empty_prompt(output, wan, save_dtype)
        with progress() as bar:
            task_id = bar.add_task(f"rank {rank}: shards", total=len(todo))
            for url in todo:
                target = output / Path(url).name
                stats = cache_shard(url, target, source=source, wan=wan, task=task, save_dtype=save_dtype,
                                    audio_model=audio_model, audio=audio)
                write_atomic(sidecar(target), json.dumps(stats).encode())
                bar.advance(task_id)
    return collect_summary(output, kept=len(mine) - len(todo))


def collect_summary(output: Path, *, kept: int) -> dict:
    stats = [json.loads(p.read_text()) for p in sorted(output.glob(".*.tar.json"))]
    skipped = sum((Counter(s["skipped"]) for s in stats), Counter())
    return {"shards": len(stats), "shards_kept": kept, "samples": sum(s["samples"] for s in stats),
            "samples_without_audio": sum(s.get("without_audio", 0) for s in stats),
            "skipped": sum(skipped.values()), "skipped_by_reason": dict(skipped),
            "errors": [e for s in stats for e in s["errors"]]}


def _run(rank: int, args: argparse.Namespace, world_size: int) -> dict:
    table = BucketTable(resolutions=tuple(args.resolutions), aspect_ratios=tuple(args.aspect_ratios),
                        durations=tuple(args.durations), fps=args.fps)
    return cache_latents(args.shards, args.output, model=args.model, table=table, task=args.task,
                         dtype=DTYPES[args.dtype] if args.dtype else None, save_dtype=DTYPES[args.save_dtype],
                         rank=rank, world_size=world_size, audio=args.audio)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.num_processes > 1:
        mp.start_processes(_run, args=(args, args.num_processes), nprocs=args.num_processes, start_method="spawn")
        result, rank = collect_summary(args.output, kept=0), 0
    else:
        rank, world_size = launched_rank()
        result = _run(rank, args, world_size)
    if rank == 0:
        errors = result.pop("errors")
        summary("cache_latents", result)
        for message in errors[:20]:
            console.print(f"[yellow]skipped[/] {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
