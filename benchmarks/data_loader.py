"""Clips per second per worker of the raw-video path against the decode-everything baseline, and samples per
second of the cached-latent path, in one run.

    python benchmarks/data_loader.py                       # 480p sources, 81-frame clips at 16 fps
    python benchmarks/data_loader.py --source-fps 16 --videos 6 --seconds 8

Sources: H.264 854x480 mp4 files (GOP 32, x264 veryfast, crf 23) with moving shapes over a drifting gradient
and mild grain, `--seconds` long at `--source-fps`, in a real shard. Each measurement runs in the benchmark's
own process with one decoder thread (decord num_threads=1, PyAV thread_count=1), i.e. what one loader worker
does on one core:

- ours: wan_train's stream (tar -> metadata -> bucket 832x480x81 -> decord reading only the needed frames,
  scaled in the decoder, random start, crop) -> uint8 [1, 81, 480, 832, 3] batches. Decoding runs in the
  decoding process (wan_train.data.decoder: killable at its deadline, memory-capped), which sends the frames back
  through a pipe.
- ours in-process: the same stream and decoder code called in the loader's own process, as before decoding
  moved to a process of its own: the ratio is the price of that isolation (the pipe and its copies).
- baseline: decode the whole video with PyAV to RGB, then take the same 81 frames, resize (torch bilinear,
  antialias; only if the size needs it) and crop to the same uint8 output: what several peer trainers do.
- latents: cached samples of the same bucket (latents 16x21x60x104 bf16, one ~120-token context 4096-d bf16)
  through the same stream with LatentSource -> batch.
"""

import argparse
import io
import json
import platform
import random
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from wan_train.data import decode as decode_module
from wan_train.data import decoder_child
from wan_train.data.buckets import BucketTable
from wan_train.data.clips import choose_start, frame_indices
from wan_train.data.decode import cover_size
from wan_train.data.latents import LatentSource
from wan_train.data.metadata import ClipMeta, parse_meta
from wan_train.data.stream import BucketedStream
from wan_train.data.video import VideoSource
from wan_train.inference.outputs import encode_mp4


def synthetic_video(seed: int, *, frames: int, fps: float, width=854, height=480) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((frames, height, width, 3), np.uint8)
    base = rng.uniform(0, 255, 3)
    for i in range(frames):
        img = np.empty((height, width, 3), np.float32)
        for c in range(3):
            img[..., c] = base[c] * 0.5 + 60 * np.sin((x + 3 * i) / (70 + 20 * c)) + 40 * np.cos((y - 2 * i) / 90)
        for k in range(3):  # three discs moving on their own paths
            cx = (width * (0.2 + 0.3 * k) + 4 * i * (1 + k)) % width
            cy = height / 2 + height / 3 * np.sin(i / 20 + k)
            img[(x - cx) ** 2 + (y - cy) ** 2 < (40 + 10 * k) ** 2] = (255 - 80 * k, 60 * k, 40 + 90 * k)
        img += rng.normal(0, 4, img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return encode_mp4(out, fps=fps, gop=32, crf=23)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def video_shard(root: Path, args) -> tuple[Path, list[bytes]]:
    frames = int(args.seconds * args.source_fps)
    videos = [synthetic_video(i, frames=frames, fps=args.source_fps) for i in range(args.videos)]
    members = []
    for i, video in enumerate(videos):
        meta = ClipMeta(captions=("moving discs",), fps=args.source_fps, num_frames=frames, width=854, height=480,
                        duration=frames / args.source_fps, source=f"{i}.mp4")
        members += [(f"{i:06d}.mp4", video), (f"{i:06d}.json", json.dumps(meta.to_json()).encode())]
    return write_tar(root / "videos.tar", members), videos


def latent_shard(root: Path, count: int) -> Path:
    members = []
    for i in range(count):
        tensors = {"latents": torch.randn(16, 21, 60, 104).bfloat16(), "context.0": torch.randn(120, 4096).bfloat16()}
        meta = {"bucket": "832x480x81", "captions": ["moving discs"], "source": f"{i}.mp4"}
        members += [(f"{i:06d}.safetensors", save_safetensors(tensors)), (f"{i:06d}.json", json.dumps(meta).encode())]
    return write_tar(root / "latents.tar", members)


class InProcess:
    """The decoding process's code, called in this process (no deadline can stop it, no cap bounds it)."""

    def decode(self, video: bytes, header: dict, *, timeout: float | None, key: str):
        frames, resize = decoder_child.decode(video, header)
        return {"ok": True, "shape": list(frames.shape), "resize": resize}, frames


def isolation_ratio(shard: Path, table: BucketTable, seconds: float, rounds: int) -> tuple[float, float, float]:
    """Clips/s of our stream with decoding in the decoding process and in this process, alternating rounds of
    `seconds` each; returns (isolated, in-process, median of the per-round ratios)."""
    isolated, inline, ratios = [], [], []
    for _ in range(rounds):
        stream = BucketedStream([str(shard)], VideoSource(table), batch_size=1, seed=0, shuffle_buffer=1)
        isolated.append(rate(iter(stream), seconds))
        real = decode_module.decoder
        decode_module.decoder = InProcess
        try:
            stream = BucketedStream([str(shard)], VideoSource(table), batch_size=1, seed=0, shuffle_buffer=1)
            inline.append(rate(iter(stream), seconds))
        finally:
            decode_module.decoder = real
        ratios.append(isolated[-1] / inline[-1])
    return float(np.median(isolated)), float(np.median(inline)), float(np.median(ratios))


def rate(batches, seconds: float) -> float:
    """Items per second of an endless iterator, after one warm-up item."""
    next(batches)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += len(next(batches)["key"])
    return count / (time.perf_counter() - start)


def baseline(videos: list[bytes], table: BucketTable, seconds: float, fps: float) -> float:
    """PyAV: decode every frame to RGB, take the clip's frames, resize if needed, crop; the same output as ours
    (uint8 [F, H, W, 3] at the bucket's size)."""
    bucket, rng = table.buckets[-1], random.Random(0)  # 832x480x81
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        data = videos[count % len(videos)]
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        meta = parse_meta({"caption": "x", "fps": fps, "num_frames": len(frames), "width": frames.shape[2],
                           "height": frames.shape[1], "duration": len(frames) / fps}, key="baseline")
        t0 = choose_start(meta, frames=bucket.frames, fps=table.fps, mode="random", span="window", rng=rng, key="b")
        clip = torch.from_numpy(frames[frame_indices(meta, start=t0, frames=bucket.frames, fps=table.fps)])
        width, height = cover_size(meta.width, meta.height, bucket)
        if (width, height) != (meta.width, meta.height):
            clip = torch.nn.functional.interpolate(clip.permute(0, 3, 1, 2).float(), size=(height, width),
                                                   mode="bilinear", antialias=True)
            clip = clip.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        top, left = (height - bucket.height) // 2, (width - bucket.width) // 2
        clip = clip[:, top:top + bucket.height, left:left + bucket.width].contiguous()
        count += 1
    return count / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each source video")
    p.add_argument("--source-fps", type=float, default=30.0)
    p.add_argument("--measure", type=float, default=20.0, help="seconds per measurement")
    p.add_argument("--latent-samples", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the isolation comparison")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    table = BucketTable(resolutions=("480p",), aspect_ratios=("16:9",), durations=(5.0,), fps=16.0)
    with tempfile.TemporaryDirectory() as tmp:
        shard, videos = video_shard(Path(tmp), args)
        latents = latent_shard(Path(tmp), args.latent_samples)
        ours = BucketedStream([str(shard)], VideoSource(table), batch_size=1, seed=0, shuffle_buffer=1)
        raw = rate(iter(ours), args.measure)
        base = baseline(videos, table, args.measure, args.source_fps)
        lat = BucketedStream([str(latents)], LatentSource(), batch_size=1, seed=0, shuffle_buffer=1)
        latent_rate = rate(iter(lat), args.measure)
        isolated, inline, ratio = isolation_ratio(shard, table, args.measure, args.rounds)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; sources 854x480 "
          f"{args.source_fps:g} fps H.264 GOP 32; clips 832x480x81 at 16 fps")
    print("| path | per worker (1 core) | vs baseline |")
    print("|---|---|---|")
    print(f"| raw video, ours (decord, needed frames only) | {raw:.2f} clips/s | {raw / base:.2f}x |")
    print(f"| raw video, baseline (PyAV decode all, slice, resize) | {base:.2f} clips/s | 1.00x |")
    print(f"| cached latents (16x21x60x104 bf16 + context) | {latent_rate:.1f} samples/s | |")
    print(f"isolation: decoding process {isolated:.2f} clips/s, in-process {inline:.2f} clips/s, "
          f"ratio {ratio:.3f} (median of {args.rounds} alternating rounds)")


if __name__ == "__main__":
    main()
