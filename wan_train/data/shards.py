"""Shard URLs -> a deterministic stream of raw WebDataset samples for one worker of one rank.

Every epoch has its own permutation of the shard list (from seed and epoch); global worker g of N
(N = world_size x num_workers) reads shards g, g + N, ... of it, so workers never overlap and together cover
every shard. With fewer shards than workers, every worker reads every shard and keeps samples g, g + N, ...
(still disjoint and complete, at N times the reading). A seeded shuffle buffer then mixes samples across the
worker's shards. Local paths, brace patterns, `pipe:`, http(s), gs and hf URLs go through WebDataset's opener;
`s3://` URLs are read with `aws s3 cp URL -` (the WebDataset idiom)."""

import glob
import hashlib
import random
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import braceexpand
import webdataset
from webdataset import tariterators

from wan_train.data.errors import SampleError


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
    """Brace patterns ('data/shard-{000000..000099}.tar'), globs, directories (their *.tar) and URLs (pipe:,
    http(s)://, s3://, kept as they are), or a list of these -> shard URLs in order, without duplicates. A plain
    path is kept even if it is missing: reading it reports it."""
    items = [shards] if isinstance(shards, str | Path) else list(shards)
    urls = []
    for item in items:
        for url in braceexpand.braceexpand(str(item)):
            if urlparse(url).scheme or url.startswith("pipe:") or Path(url).is_file():
                urls.append(url)
            elif Path(url).is_dir():
                urls += sorted(str(p) for p in Path(url).glob("*.tar"))
            elif glob.has_magic(url):
                urls += sorted(glob.glob(url))
            else:
                urls.append(url)
    return list(dict.fromkeys(urls))


FINGERPRINT_BYTES = 1 << 16  # read from each end of a local shard


def fingerprint(urls: list[str]) -> str:
    """A sha256 naming the training data, for lineage (an adapter's manifest): per shard its name, size and the
    first and last 64 KiB (a tar ends with its last member, so an appended or rewritten shard changes it), without
    reading whole shards; remote URLs contribute their URL only."""
    digest = hashlib.sha256()
    for url in sorted(urls):
        path = Path(url)
        digest.update(f"{path.name if path.is_file() else url}\n".encode())
        if path.is_file():
            size = path.stat().st_size
            digest.update(f"{size}\n".encode())
            with path.open("rb") as handle:
                digest.update(handle.read(FINGERPRINT_BYTES))
                handle.seek(max(0, size - FINGERPRINT_BYTES))
                digest.update(handle.read(FINGERPRINT_BYTES))
    return digest.hexdigest()


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


class StrictTarInfo(tarfile.TarInfo):
    """tarfile ends the member stream silently at a bad, cut-off or missing header after the first member, so a
    shard truncated or overwritten mid-way would just look shorter. Raise instead (a proper end is zero blocks)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError, tarfile.EmptyHeaderError) as error:
            if tar.offset == 0:
                raise  # tarfile turns these into ReadError itself
            what = "the data ends without end-of-archive blocks" if isinstance(
                error, tarfile.EmptyHeaderError) else error
            raise tarfile.ReadError(f"bad tar header at byte {tar.offset} ({what}); the shard is truncated or "
                                    "corrupt from there on") from None


def shard_members(url: str) -> Iterator[dict]:
    """The files of one shard as {'fname', 'data', '__url__'}, streamed (memory stays flat over a large shard)."""
    with webdataset.gopen(opener_url(url), "rb") as stream:
        tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=StrictTarInfo)
        for info in tar:
            if info.isreg():
                yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
            tar.members = []


def shard_samples(url: str) -> Iterator[dict]:
    """Samples of one shard as WebDataset groups them: {'__key__', '__url__', ext: bytes, ...}."""
    return tariterators.group_by_keys(shard_members(url))


def read_samples(urls: list[str], *, on_error) -> Iterator[dict]:
    """Samples of the shards in order. A shard that cannot be opened or is damaged part-way is reported through
    on_error(exception naming the shard) after the samples before the damage; the stream goes on."""
    for url in urls:
        try:
            yield from shard_samples(url)
        except Exception as error:  # OSError, tarfile.ReadError, a failing pipe: all end this shard only
            on_error(SampleError("unreadable_shard", f"{url}: {error}"))


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
