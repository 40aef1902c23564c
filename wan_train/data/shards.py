"""Shard URLs -> a deterministic stream of raw WebDataset samples for one worker of one rank.

Every epoch has its own permutation of the shard list (from seed and epoch); global worker g of N
(N = world_size x num_workers) reads shards g, g + N, ... of it, so workers never overlap and together cover
every shard. With fewer shards than workers, every worker reads every shard and keeps samples g, g + N, ...
(still disjoint and complete, at N times the reading). A seeded shuffle buffer then mixes samples across the
worker's shards. Local paths, brace patterns, `pipe:`, http(s), gs and hf URLs go through WebDataset's opener;
`s3://` URLs are read with `aws s3 cp URL -` (the WebDataset idiom)."""

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import braceexpand
from webdataset import tariterators


@dataclass(frozen=True)
class WorkerSlot:
    """Where this iterator sits: rank of world_size processes, worker of num_workers loader workers."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def total(self) -> int:
        return self.world_size * self.num_workers


def expand_urls(shards: str | Path | Iterable[str | Path]) -> list[str]:
    """A brace pattern ('data/shard-{000000..000099}.tar'), a directory (its *.tar), or a list of either."""
    items = [shards] if isinstance(shards, str | Path) else list(shards)
    urls = []
    for item in items:
        item = str(item)
        if "://" not in item and not item.startswith("pipe:") and Path(item).is_dir():
            urls += sorted(str(p) for p in Path(item).glob("*.tar"))
        else:
            urls += list(braceexpand.braceexpand(item))
    if not urls:
        raise ValueError(f"data.shards={shards!r} names no shards")
    return urls


def opener_url(url: str) -> str:
    return f"pipe:aws s3 cp {url} -" if url.startswith("s3://") else url


def epoch_rng(seed: int, epoch: int, *parts) -> random.Random:
    # str seeds hash with SHA-512: stable across processes and Python versions (unlike hash())
    return random.Random(":".join(str(p) for p in (seed, epoch, *parts)))


def worker_shards(urls: list[str], *, seed: int, epoch: int, slot: WorkerSlot) -> tuple[list[str], bool]:
    """This worker's shards for `epoch`, and whether it must also keep only every N-th sample."""
    order = list(urls)
    epoch_rng(seed, epoch, "shards").shuffle(order)
    if len(order) >= slot.total:
        return order[slot.index::slot.total], False
    return order, slot.total > 1


def read_samples(urls: list[str], *, on_error) -> Iterator[dict]:
    """Raw samples ({'__key__', '__url__', ext: bytes}) of the shards in order. A shard that cannot be opened
    or read is reported through on_error(exception) and the stream goes on with the next one."""
    def handler(error: Exception) -> bool:
        on_error(error)
        return True

    yield from tariterators.tarfile_samples(({"url": opener_url(url)} for url in urls), handler=handler)


def shuffled(samples: Iterable[dict], *, size: int, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer of `size` samples (size <= 1: the input order)."""
    if size <= 1:
        yield from samples
        return
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def epoch_samples(urls: list[str], *, seed: int, epoch: int, slot: WorkerSlot, shuffle_buffer: int,
                  on_error) -> Iterator[dict]:
    """This worker's samples of one epoch, in their final (shuffled) order."""
    mine, strided = worker_shards(urls, seed=seed, epoch=epoch, slot=slot)
    samples = read_samples(mine, on_error=on_error)
    if strided:
        samples = (s for i, s in enumerate(samples) if i % slot.total == slot.index)
    return shuffled(samples, size=shuffle_buffer, rng=epoch_rng(seed, epoch, "buffer", slot.index))
