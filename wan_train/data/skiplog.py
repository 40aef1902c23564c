"""Every skipped (and flagged) sample named: one JSON line each in the run's `skipped.jsonl`, written by every
rank (wan_train.fileio.jsonl: whole lines, locked, fsynced), and a log line for the first few and then at most one
a minute with the counts since.

A line: {"shard", "key", "reason", "detail", "count", "skipped", "epoch", "worker", "split", "step", "rank"}:
`count` is how many samples it stands for (more than 1 only for the unreadable rest of a damaged shard, key null),
`skipped` false for a flag (the sample was trained: an empty caption), `worker` the global loader worker,
`split` "train" or the held-out set, `step` the optimizer steps done when the model got the batch that carried
it. A sample met again after a resume (between the checkpoint and the interruption) is not named twice."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from wan_train.fileio.jsonl import append_jsonl, read_jsonl

SKIPPED_FILE = "skipped.jsonl"
IDENTITY = ("split", "shard", "key", "reason", "epoch", "worker")
log = logging.getLogger(__name__)


class SkipLog:
    def __init__(self, path: str | Path | None, *, rank: int = 0, first: int = 10, every: float = 60.0):
        """path: the skipped.jsonl to append to (None: log lines only). first: events logged one by one; after
        them, one line per `every` seconds at most."""
        self.path, self.rank, self.first, self.every = None if path is None else Path(path), rank, first, every
        self.seen = {_identity(record) for record in read_jsonl(self.path)} if self.path else set()
        self.logged, self.since, self.last = 0, Counter(), time.monotonic()

    def record(self, events: list[dict], *, step: int, split: str = "train") -> None:
        fresh = []
        for event in events:
            record = {**event, "split": split, "step": step, "rank": self.rank}
            identity = _identity(record)
            if identity not in self.seen:
                self.seen.add(identity)
                fresh.append(record)
        if self.path is not None:
            append_jsonl(self.path, fresh)
        for record in fresh:
            self._log(record)
        self._log_since()

    def _log(self, record: dict) -> None:
        if self.logged < self.first:
            self.logged += 1
            what = "skipped" if record["skipped"] else "kept"
            log.warning("data: %s (%s): %s%s", what, record["reason"], record["detail"],
                        "" if self.logged < self.first else f" (further ones: one line a minute; all in {self.where})")
            self.last = time.monotonic()
        else:
            self.since[record["reason"]] += record["count"]

    def _log_since(self) -> None:
        if self.since and time.monotonic() - self.last >= self.every:
            log.warning("data: %d more samples skipped or flagged (%s); each is named in %s",
                        sum(self.since.values()), _counts(self.since), self.where)
            self.since.clear()
            self.last = time.monotonic()

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "no file (the DataModule was given no run folder)"


def summary(path: str | Path) -> str | None:
    """One line with the run's skips and flags by reason, from its skipped.jsonl (None if there are none). A
    sample met in several epochs counts each time, and the distinct ones are given too."""
    records = read_jsonl(path)
    if not records:
        return None
    skipped, flagged, distinct = Counter(), Counter(), {}
    for record in records:
        count = record.get("count", 1)
        (skipped if record.get("skipped", True) else flagged)[record.get("reason", "?")] += count
        if record.get("skipped", True):
            sample = (record.get("split"), record.get("shard"), record.get("key"), record.get("reason"))
            distinct[sample] = max(distinct.get(sample, 0), count)
    parts = []
    if skipped:
        total, unique = sum(skipped.values()), sum(distinct.values())
        again = f", {unique} distinct (met again in later epochs)" if unique < total else ""
        parts.append(f"skipped {total} samples ({_counts(skipped)}){again}")
    if flagged:
        parts.append(f"trained {sum(flagged.values())} despite ({_counts(flagged)})")
    return f"data: {'; '.join(parts)}; each is named in {path}"


def _identity(record: dict) -> tuple:
    return tuple(str(record.get(name)) for name in IDENTITY)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in counter.most_common())
