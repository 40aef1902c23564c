"""The real side of FVD: clips read from WebDataset video shards (the same shards training reads), their I3D
statistics computed once and cached under a name keyed by the shards' fingerprint and the protocol (a changed
shard or protocol never reads a stale file; eval.fvd.RealStats).

Clips follow the protocol from each video's first frame: non-overlapping windows of `frames` frames taken
`stride` apart (eval.fvd.clips_from_video), at the video's own size; I3D resizes every frame straight to 224.
Videos too short for one window are skipped and counted, like undecodable samples.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

from eval.fvd import FVD, Protocol, RealStats, clips_from_video
from eval.i3d import resize_frames
from wan_train.data.errors import SampleError
from wan_train.data.probe import open_video
from wan_train.data.shards import expand_urls, fingerprint, read_samples
from wan_train.data.metadata import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)


def real_clips(shards, *, protocol: Protocol, limit: int, skipped: Counter) -> Iterator[torch.Tensor]:
    """Up to `limit` clips [3, frames, H, W] in [-1, 1] from the shards in order; `skipped` counts the samples
    left out by reason."""
    span = (protocol.frames - 1) * protocol.stride + 1
    window = protocol.frames * protocol.stride
    left = limit
    for sample in read_samples(expand_urls(shards), on_error=lambda error: _skip(skipped, error)):
        if left <= 0:
            return
        key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        data = next((sample[ext] for ext in VIDEO_EXTENSIONS if ext in sample), None)
        if data is None:
            _skip(skipped, SampleError("missing_field", f"{key}: no video member ({list(VIDEO_EXTENSIONS)})"))
            continue
        try:
            reader = open_video(data, name=key)
            count = len(reader)
            if count < span:
                raise SampleError("too_short", f"{key}: {count} frames, a clip needs {span}")
            windows = min(left, (count - span) // window + 1)
            frames = reader.get_batch(list(range((windows - 1) * window + span))).asnumpy()
        except SampleError as error:
            _skip(skipped, error)
            continue
        except Exception as error:  # decord raises its own DECORDError for bad bytes
            _skip(skipped, SampleError("undecodable", f"{key}: {error}"))
            continue
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, F, H, W]
        for clip in clips_from_video(video, frames=protocol.frames, stride=protocol.stride)[:windows]:
            left -= 1
            yield clip


def _skip(skipped: Counter, error: SampleError) -> None:
    skipped[error.reason] += 1
    log.warning("FVD real clips: skipped %s", error)


def real_statistics(network, *, protocol: Protocol, shards, limit: int, cache_dir: str | Path,
                    batch_size: int = 8, device: str | torch.device = "cpu") -> RealStats:
    """The cached statistics of the shards under `protocol`, computed (and cached) on first use."""
    urls = expand_urls(shards)
    if not urls:
        raise FileNotFoundError(f"FVD real shards {shards!r}: no shard found")
    data = fingerprint(urls)
    path = RealStats.cache_path(cache_dir, fingerprint=data, protocol=protocol)
    if path.is_file():
        log.info("FVD real statistics from %s", path)
        return RealStats.load(path, protocol=protocol, fingerprint=data)
    metric = FVD(network, protocol=protocol).to(device)
    skipped, batch = Counter(), []
    for clip in real_clips(urls, protocol=protocol, limit=limit, skipped=skipped):
        batch.append(resize_frames(clip[None])[0])  # what I3D does first; clips of any size then batch
        if len(batch) == batch_size:
            metric.update(torch.stack(batch).to(device), real=True)
            batch = []
    if batch:
        metric.update(torch.stack(batch).to(device), real=True)
    stats = metric.real_statistics(fingerprint=data)
    if skipped:
        log.warning("FVD real clips: %d samples skipped (%s)", sum(skipped.values()), dict(skipped))
    stats.save(path)
    log.info("FVD real statistics of %d clips cached in %s", stats.count, path)
    return stats
