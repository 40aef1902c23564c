"""The iterable both training paths (raw video, cached latents) run on: a worker's shuffled samples ->
buckets -> batches of one bucket each, with the bookkeeping that makes the stream resumable.

A source (video.VideoSource, latents.LatentSource) does the per-sample work in two steps: `plan` (cheap: read
the metadata, pick a caption, apply dropout, pick the bucket) and `load` (decode / deserialise). Buckets hold
planned samples and load them only when they fill, so a waiting sample costs its compressed bytes, not a
decoded clip. A sample that fails either step is skipped and counted under its reason, never fatal.

Resume: sample n of epoch e of a worker is the same sample in every run with the same seed and layout, and all
randomness of a sample comes from (seed, epoch, shard, key). Each batch carries the worker's position after it:
(epoch, next stream index, stream indices still waiting in buckets, skip counts). Restarting from a position
re-reads the stream up to it without decoding, re-plans the waiting samples and continues with the very next
batch the interrupted run would have produced. Epochs end by flushing each bucket as a (smaller) last batch,
so no sample is dropped; with epochs=None the stream runs forever (steps are the trainer's business).

Skips and flags: every skipped sample (and every flagged one, trained anyway) becomes an event {shard, key,
reason, detail, count, skipped, epoch, worker} that rides to the main process with the worker's next batch
(`_events`), where the DataModule names it in the run's skipped.jsonl: only what the model actually consumed is
reported, so a resumed run reports each sample once."""

import itertools
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from wan_train.data.buckets import Bucket
from wan_train.data.errors import FLAGS, SampleError
from wan_train.data.shards import WorkerSlot, epoch_rng, epoch_samples, worker_shards


class EmptyStreamError(RuntimeError):
    """An endless stream met a whole pass that gave no batch (every sample skipped, or no samples)."""


@dataclass
class Planned:
    key: str
    url: str
    bucket: Bucket
    sample: dict
    choice: dict  # what plan decided (caption index, dropout, ...), for load
    position: int = -1
    flags: list[tuple[str, str]] = field(default_factory=list)  # (flag, detail): trained, but reported


@dataclass
class Position:
    epoch: int = 0
    next: int = 0
    pending: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "next": self.next, "pending": list(self.pending), "skipped": dict(self.skipped),
                "flagged": dict(self.flagged)}


@dataclass
class Tally:
    """A worker's skip and flag counts (cumulative, resumed with its position) and the events since its last
    batch."""

    skipped: Counter
    flagged: Counter
    events: list[dict] = field(default_factory=list)

    def note(self, reason: str, detail: str, *, url: str | None, key: str | None, count: int = 1,
             epoch: int | None, worker: int | None) -> None:
        """epoch / worker: None for a sample outside the stream (a held-out clip)."""
        skipped = reason not in FLAGS
        (self.skipped if skipped else self.flagged)[reason] += count
        self.events.append({"shard": url, "key": key or None, "reason": reason, "detail": detail, "count": count,
                            "skipped": skipped, "epoch": epoch, "worker": worker})

    def error(self, error: SampleError, *, url: str | None, key: str | None, epoch: int | None,
              worker: int | None) -> None:
        self.note(error.reason, str(error), url=error.url or url, key=error.key or key, count=error.count,
                  epoch=epoch, worker=worker)

    def position(self, epoch: int, next: int, pending: list[int]) -> Position:
        """The worker's position with its counts as they stand."""
        return Position(epoch, next, pending, dict(self.skipped), dict(self.flagged))

    def take_events(self) -> list[dict]:
        events, self.events = self.events, []
        return events


def sample_rng(seed: int, epoch: int, sample: "Planned | dict") -> random.Random:
    url, key = (sample.url, sample.key) if isinstance(sample, Planned) else (sample["__url__"], sample["__key__"])
    return epoch_rng(seed, epoch, "sample", url, key)


class BucketedStream(IterableDataset):
    """Yields collated batches (dicts) of `batch_size` samples from one bucket, each with `_position`."""

    def __init__(self, urls: list[str], source, *, batch_size: int, seed: int, shuffle_buffer: int,
                 epochs: int | None = None, rank: int | None = None, world_size: int | None = None,
                 max_member_bytes: int | None = None):
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size}: must be >= 1")
        self.urls, self.source, self.batch_size = list(urls), source, batch_size
        self.max_member_bytes = max_member_bytes
        self.seed, self.shuffle_buffer, self.epochs = seed, shuffle_buffer, epochs
        self.rank, self.world_size = rank, world_size
        self.resume: dict[int, dict] = {}  # worker -> Position.to_dict(), set before iterating

    def slot(self) -> WorkerSlot:
        rank, world = self.rank, self.world_size
        if rank is None:
            initialised = dist.is_available() and dist.is_initialized()
            rank, world = (dist.get_rank(), dist.get_world_size()) if initialised else (0, 1)
        info = get_worker_info()
        return WorkerSlot(rank, world, info.id if info else 0, info.num_workers if info else 1)

    def __iter__(self) -> Iterator[dict]:
        slot = self.slot()
        position = Position(**self.resume.get(slot.worker, {}))
        tally = Tally(Counter(position.skipped), Counter(position.flagged))
        resuming = slot.worker in self.resume
        epochs = itertools.count(position.epoch) if self.epochs is None else range(position.epoch, self.epochs)
        for epoch in epochs:
            replay = (position.next, set(position.pending)) if resuming else (0, set())
            yielded = False
            for batch in self._epoch(slot, epoch, replay, tally):
                yielded = True
                yield batch
            if not yielded and not resuming and self.epochs is None:
                raise EmptyStreamError(self._empty_message(slot, epoch, tally.skipped))
            resuming = False

    def _empty_message(self, slot: WorkerSlot, epoch: int, skipped: Counter) -> str:
        """An endless stream whose whole pass yields nothing would wait forever: say why instead."""
        shards, _ = worker_shards(self.urls, seed=self.seed, epoch=epoch, slot=slot)
        where = f"rank {slot.rank} worker {slot.worker}" if slot.total > 1 else "the stream"
        named = ", ".join(shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
        counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
        why = f"every sample was skipped ({counts})" if counts else "they hold no samples"
        return (f"data: a whole pass of {where} over {len(shards)} shard(s) ({named}) gave no batch: {why}. Check "
                "the shards with python -m data_tools.inspect, and the data options that decide what a sample needs "
                "(data.resolutions / durations / fps, data.references, data.shots)")

    def _epoch(self, slot: WorkerSlot, epoch: int, replay: tuple[int, set[int]], tally: Tally):
        skip_before, waiting = replay
        buckets: dict[Bucket, list[Planned]] = {}

        def count(error: SampleError, url: str | None, key: str | None):
            tally.error(error, url=url, key=key, epoch=epoch, worker=slot.index)

        def flag(planned: Planned, flags: list[tuple[str, str]]):
            for name, detail in flags:
                tally.note(name, detail, url=planned.url, key=planned.key, epoch=epoch, worker=slot.index)

        index = -1
        samples = epoch_samples(self.urls, seed=self.seed, epoch=epoch, slot=slot, shuffle_buffer=self.shuffle_buffer,
                                max_member_bytes=self.max_member_bytes)
        for index, sample in enumerate(samples):
            if index < skip_before and index not in waiting:
                continue
            try:
                if "__error__" in sample:  # known bad when read (see shards.read_samples)
                    raise sample["__error__"]
                planned = self.source.plan(sample, rng=sample_rng(self.seed, epoch, sample))
            except SampleError as error:
                count(error, sample.get("__url__"), sample.get("__key__"))
                continue
            if index >= skip_before:  # a replayed waiting sample was reported before the interruption
                flag(planned, planned.flags)
            planned.position = index
            members = buckets.setdefault(planned.bucket, [])
            members.append(planned)
            if len(members) >= self.batch_size:
                batch = self._load(members, epoch, count, flag, full=True)
                if batch is not None:
                    yield self._finish(batch, slot, tally.position(epoch, index + 1, _waiting(buckets)), tally)
        for bucket in sorted(buckets):
            batch = self._load(buckets[bucket], epoch, count, flag, full=False)
            if batch is not None:
                rest = _waiting(buckets)
                after = tally.position(epoch, index + 1, rest) if rest else tally.position(epoch + 1, 0, [])
                yield self._finish(batch, slot, after, tally)

    def _load(self, members: list[Planned], epoch: int, count, flag, *, full: bool) -> list[dict] | None:
        """Load the bucket's members (in place: failures leave the bucket, loaded ones wait as dicts). Flags a load
        adds to the sample's (what only decoding finds: no sound) are reported as the plan's are."""
        loaded = []
        for planned in list(members):
            if "_loaded" not in planned.choice:
                planned_flags = len(planned.flags)
                try:
                    planned.choice["_loaded"] = self.source.load(planned, rng=sample_rng(self.seed, epoch, planned))
                except SampleError as error:
                    count(error, planned.url, planned.key)
                    members.remove(planned)
                    continue
                flag(planned, planned.flags[planned_flags:])
            loaded.append(planned)
        if not loaded or (full and len(loaded) < self.batch_size):
            return None
        members.clear()
        return [p.choice.pop("_loaded") for p in loaded]

    def _finish(self, items: list[dict], slot: WorkerSlot, position: Position, tally: Tally) -> dict:
        batch = self.source.collate(items)
        batch["_position"] = {"worker": slot.worker, "state": position.to_dict()}
        batch["_events"] = tally.take_events()
        return batch


def _waiting(buckets: dict[Bucket, list[Planned]]) -> list[int]:
    return sorted(p.position for members in buckets.values() for p in members)


def stack(items: list[dict], name: str) -> torch.Tensor:
    return torch.stack([item[name] for item in items])
