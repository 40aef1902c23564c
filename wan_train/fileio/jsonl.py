"""Append-only JSON lines shared by many writers (every rank of a run, on one node or many).

Each append is one `write` of whole lines to a file opened with O_APPEND, under an exclusive `flock` of a lock
file beside it (O_APPEND alone keeps lines whole on a local disk, not on NFS), then fsynced: a reader never sees
two writers' lines interleaved, and a crash loses at most the lines being written, never earlier ones. A line
cut by a crash mid-write (no trailing newline) is ignored by `read_jsonl`, and the next append starts on a line
of its own."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on `path`'s lock file (not on `path` itself, which may be replaced while held)."""
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Append `records` (JSON-serialisable dicts) as lines, atomically as one block; returns how many."""
    lines = [json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n" for record in records]
    if not lines:
        return 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(lines).encode()
    with locked(path):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if _ends_mid_line(fd):  # a writer killed mid-line: start ours on a line of its own
                data = b"\n" + data
            view = memoryview(data)
            while view:  # one write on a regular file; the loop only covers a short write (a full disk)
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(lines)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The complete lines of `path` ([] if it does not exist); lines that are not JSON objects are left out."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().split(b"\n"):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def _ends_mid_line(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
