"""Shard URLs -> a deterministic stream of raw WebDataset samples for one worker of one rank.

Every epoch has its own permutation of the shard list (from seed and epoch); global worker g of N
(N = world_size x num_workers) reads shards g, g + N, ... of it, so workers never overlap and together cover
every shard. With fewer shards than workers, every worker reads every shard and keeps samples g, g + N, ...
(still disjoint and complete, at N times the reading). A seeded shuffle buffer then mixes samples across the
worker's shards. Local paths, brace patterns, `pipe:`, http(s), gs and hf URLs go through WebDataset's opener;
`s3://` URLs are read with `aws s3 cp URL -` (the WebDataset idiom)."""

import glob
import hashlib
import json
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


def remote(url: str) -> bool:
    """A URL the reader opens (pipe:, http(s)://, s3://, ...), not a local path (a one-letter scheme is a drive)."""
    return len(urlparse(url).scheme) > 1 or url.startswith("pipe:")


def expand_urls(shards: str | Path | Iterable[str | Path]) -> list[str]:
    """Brace patterns ('data/shard-{000000..000099}.tar'), globs, directories (their *.tar) and URLs (pipe:,
    http(s)://, s3://, kept as they are), or a list of these -> shard URLs in order, without duplicates. A plain
    path is kept even if it is missing: reading it reports it."""
    items = [shards] if isinstance(shards, str | Path) else list(shards)
    urls = []
    for item in items:
        for url in braceexpand.braceexpand(str(item)):
            if remote(url) or Path(url).is_file():
                urls.append(url)
            elif Path(url).is_dir():
                urls += sorted(str(p) for p in Path(url).glob("*.tar"))
            elif glob.has_magic(url):
                urls += sorted(glob.glob(url))
            else:
                urls.append(url)
    return list(dict.fromkeys(urls))


def missing_shards(entry: str | Path) -> str | None:
    """Why a local shard entry (a path, folder, glob or brace pattern) names no shard, or None. URLs (pipe:,
    http(s)://, s3://) are left to the reader: only reading them can tell."""
    for url in braceexpand.braceexpand(str(entry)):
        if remote(url):
            continue
        path = Path(url)
        if path.is_file():
            continue
        if path.is_dir():
            if not any(path.glob("*.tar")):
                return f"{url}: a folder with no .tar shards in it"
        elif glob.has_magic(url):
            if not glob.glob(url):
                return f"{url}: matches no file"
        else:
            return f"{url}: no such file or folder"
    return None


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


def stats_path(url: str) -> Path:
    """Where data_tools.make_shards writes a shard's stats ({"samples": N, ...}): `.shard-000000.json` beside
    `shard-000000.tar`."""
    path = Path(url)
    return path.with_name(f".{path.name.split('.')[0]}.json")


def expected_samples(url: str) -> int | None:
    """How many samples the shard was written with, from its stats beside it (local shards); None if unknown."""
    try:
        samples = json.loads(stats_path(url).read_text())["samples"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return samples if isinstance(samples, int) and not isinstance(samples, bool) and samples >= 0 else None


def _bad(url: str, key: str, reason: str, message: str) -> dict:
    """A sample that is already known to be bad: the stream counts and names it where a good one would be used."""
    return {"__key__": key, "__url__": url, "__error__": SampleError(reason, message, url=url, key=key)}


def shard_samples(url: str, *, max_member_bytes: int | None = None) -> Iterator[dict]:
    """Samples of one shard as WebDataset groups them: {'__key__', '__url__', ext: bytes, ...}, consecutive members
    `<key>.<ext>` (ext lower-cased) forming one sample, streamed (memory stays flat over a large shard). What makes
    no sample comes as a sample holding `__error__` (a SampleError), in its place: a member whose name has no
    extension or that is not a file or folder (stray_member), a member twice in one sample (duplicate_member), a
    member over `max_member_bytes` (too_large: skipped over, never read into memory). Damage that ends the shard
    (a truncated or corrupt tar) raises SampleError('unreadable_shard') naming the sample being read."""
    current = None
    try:
        with webdataset.gopen(opener_url(url), "rb") as stream:
            tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=StrictTarInfo)
            for info in tar:
                tar.members = []
                if info.isdir():
                    continue
                prefix, ext = tariterators.base_plus_ext(info.name)
                if prefix is None or not info.isreg():
                    what = "is not a regular file" if not info.isreg() else "has no <key>.<ext> name"
                    yield _bad(url, info.name, "stray_member", f"{url}: member {info.name!r} {what}; it is no sample's")
                    continue
                ext = ext.lower()
                if current is None or current["__key__"] != prefix:
                    if current is not None:
                        yield current
                    current = {"__key__": prefix, "__url__": url}
                if "__error__" in current:
                    continue
                if ext in current:
                    current = _bad(url, prefix, "duplicate_member", f"{url}:{prefix}: holds .{ext} twice")
                elif max_member_bytes is not None and info.size > max_member_bytes:
                    current = _bad(url, prefix, "too_large", f"{url}:{prefix}: .{ext} is {info.size / 2**20:.3g} MiB, "
                                                             f"over data.max_sample_mb={max_member_bytes / 2**20:g}")
                else:
                    current[ext] = tar.extractfile(info).read()
    except Exception as error:  # OSError, tarfile.ReadError, a failing pipe: all end this shard only
        key = None if current is None else current["__key__"]
        raise SampleError("unreadable_shard", f"{url}: {error}", url=url, key=key) from None
    if current is not None:
        yield current


def read_samples(urls: list[str], *, on_error=None, max_member_bytes: int | None = None) -> Iterator[dict]:
    """Samples of the shards in order. A shard that cannot be opened or is damaged part-way ends there, after the
    samples before the damage, and the stream goes on; the loss is reported as SampleErrors naming the shard: the
    sample being read when the damage came (if any), and the samples after it where the shard's stats say how many
    there were. on_error: called with each (and samples holding `__error__`, see shard_samples, are dropped);
    None: they come in the stream in their place, as samples holding `__error__`."""
    for url in urls:
        read = 0
        try:
            for sample in shard_samples(url, max_member_bytes=max_member_bytes):
                read += 1
                if "__error__" not in sample:
                    yield sample
                elif on_error is None:
                    yield sample
                else:
                    on_error(sample["__error__"])
        except SampleError as damage:
            for error in _losses(url, damage, read=read):
                if on_error is None:
                    yield {"__key__": error.key or "", "__url__": url, "__error__": error}
                else:
                    on_error(error)


def _losses(url: str, damage: SampleError, *, read: int) -> list[SampleError]:
    """The samples a damaged shard lost: the one cut off (its key known), then the rest (only counted, and only
    where the shard's stats know the total)."""
    expected = expected_samples(url)
    cut = damage.key is not None
    rest = None if expected is None else max(0, expected - read - cut)
    more = "more " if cut or read else ""
    lost = ("the samples after the damage are lost (how many is unknown: no stats beside the shard)"
            if rest is None else f"{rest} {more}sample(s) lost (its stats say {expected}, {read} were read)")
    out = []
    if cut:
        out.append(SampleError("unreadable_shard", f"{damage} (sample {damage.key} cut off; {lost})", url=url,
                               key=damage.key))
    if rest or not cut:
        out.append(SampleError("unreadable_shard", f"{damage} ({lost})", url=url, count=max(rest or 0, 1)))
    return out


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
                  max_member_bytes: int | None = None) -> Iterator[dict]:
    """This worker's samples of one epoch, in their final (shuffled) order; bad ones hold `__error__`
    (read_samples), so that each is counted once, by the worker it falls to."""
    mine, strided = worker_shards(urls, seed=seed, epoch=epoch, slot=slot)
    samples = read_samples(mine, max_member_bytes=max_member_bytes)
    if strided:
        samples = (s for i, s in enumerate(samples) if i % slot.total == slot.index)
    return shuffled(samples, size=shuffle_buffer, rng=epoch_rng(seed, epoch, "buffer", slot.index))
