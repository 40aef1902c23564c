"""The one way we read pickle-based files: `.pth`, `.pt`, `.ckpt`, DeepSpeed and FSDP shards, eval weights.

A pickle names importable callables and calls them while it loads, so an unrestricted load of a crafted file runs
the author's code. `torch.load(weights_only=True)` rebuilds only tensors, containers and plain values (plus the
classes a caller allows by name); its default was False below torch 2.6, and third-party readers (DeepSpeed's,
torch.distributed.checkpoint's) pass False themselves. So every pickle we read comes through here:

- load_pickled(file): torch.load with weights_only=True, whatever the torch version; every failure becomes one
  CheckpointError naming the file and saying why (refused as possible code, truncated, not a torch file, missing).
- weights_only_loads(allow=...): for code we do not own that calls torch.load itself, every torch.load inside the
  block is load_pickled (the caller's weights_only=False is overridden), with exactly `allow`ed extra classes.
- load_plain_pickle(file, allow=...): a raw pickle.dump file (torch.distributed.checkpoint's `.metadata`), whose
  globals must be in `allow` or are refused before anything is imported.

Known limit: torch's weights-only unpickler itself had bypasses, fixed in 2.6 (CVE-2025-32434, GHSA-53q9-r3pm-6pq6)
and 2.10 (CVE-2026-24747, GHSA-63cw-57p8-fm3p); older versions log a warning once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from wan_train.models.checkpoint.errors import CheckpointError

log = logging.getLogger(__name__)

_torch_load = torch.load  # the real one, also while weights_only_loads() stands in for it
SAFE_SINCE = (2, 10)  # the first torch without a known weights-only bypass (see the module docstring)
_warned_old_torch = False
_PICKLE = pickle.PROTO  # the first byte of a pickle of protocol 2 or above: torch's legacy (pre-1.6) format
UNREADABLE = "not a readable torch checkpoint"
TORCHSCRIPT = "a TorchScript archive (a program, not weights), which is never run when weights are read"


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def load_pickled(file: str | Path | IO[bytes], *, map_location: Any = "cpu", mmap: bool | None = None,
                 allow: Iterable[type] = ()) -> Any:
    """`torch.load(file, weights_only=True)`, with `allow`ed classes rebuilt too (plain types a third-party format
    stores, never a callable that does work); any failure is a CheckpointError naming the file and why.
    mmap=None: memory-mapped when the file is a path in torch's zip format (the legacy format cannot be)."""
    _warn_old_torch()
    where = str(file) if isinstance(file, (str, Path)) else "an in-memory pickle"
    if isinstance(file, (str, Path)):
        path = Path(file)
        if path.is_dir():
            raise CheckpointError(f"{where}: a folder, expected a torch file")
        if not path.is_file():
            raise CheckpointError(f"{where}: file not found")
        problem = torch_file_problem(path)  # TorchScript archives included: torch < 2.6 would run them
        if problem is not None:
            raise CheckpointError(f"{where}: {problem if problem == TORCHSCRIPT else f'{UNREADABLE}: {problem}'}")
        if mmap is None:
            mmap = zipfile.is_zipfile(path)
    elif torch_version() < (2, 6):  # which hands a TorchScript archive to torch.jit.load even with weights_only
        file = io.BytesIO(file.read())  # checked and loaded from the same bytes
        if zipfile.is_zipfile(file) and _is_torchscript(zipfile.ZipFile(file).namelist()):
            raise CheckpointError(f"{where}: {TORCHSCRIPT}")
        file.seek(0)
    try:
        with allowed(allow):
            return _torch_load(file, map_location=map_location, weights_only=True, mmap=bool(mmap))
    except Exception as error:  # noqa: BLE001 - whatever torch's reader trips on in a bad file (KeyError, ...)
        raise CheckpointError(f"{where}: {why(error)}") from None


def _is_torchscript(names: list[str]) -> bool:
    """A zip with TorchScript's records (code/, constants.pkl): torch.load's own test."""
    return any(n.split("/")[1:2] in (["code"], ["constants.pkl"]) for n in names)


def why(error: BaseException) -> str:
    """torch.load's error in a few words, the refused global named when there is one."""
    message = str(error)
    if "Weights only load failed" in message or "WeightsUnpickler" in message:
        return refused(message)
    if "TorchScript" in message:
        return TORCHSCRIPT
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, OSError):
        return f"cannot be read ({error.strerror or message})"
    if "central directory" in message:
        return f"{UNREADABLE}: truncated (its zip directory, at the end of the file, is missing)"
    if isinstance(error, EOFError):
        return f"{UNREADABLE}: empty or truncated (EOFError)"
    return f"{UNREADABLE} ({type(error).__name__}: {_first_line(message)})"


def refused(message: str) -> str:
    name = re.search(r"GLOBAL (\S+)", message)
    if name:
        return f"holds a pickled {name.group(1)}, which weights-only loading refuses: unpickling it could run code"
    detail = _first_line(message.split("WeightsUnpickler error:")[-1])
    return f"refused by weights-only loading, as unpickling it could run code ({detail})"


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else ""


@contextlib.contextmanager
def allowed(types: Iterable[type]) -> Iterator[None]:
    """Classes weights-only loading may rebuild inside the block (none: nothing changes)."""
    types = list(types)
    if not types:
        yield
        return
    if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5
        with torch.serialization.safe_globals(types):
            yield
        return
    torch.serialization.add_safe_globals(types)  # torch 2.4: process-wide, and these are plain types only
    yield


@contextlib.contextmanager
def weights_only_loads(*, allow: Iterable[type] = ()) -> Iterator[None]:
    """Inside the block every `torch.load(...)` (as third-party code calls it, through the `torch` module) is
    load_pickled: weights only, whatever weights_only it asks for, `allow`ed classes besides, errors naming the
    file. For readers we do not own (DeepSpeed's checkpoint engine and zero_to_fp32, Lightning's) that load with
    weights_only=False: patching the loader they call, rather than checking their files first, leaves no window
    between a check and a second, unrestricted read."""
    allow = tuple(allow)

    def load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **kwargs):
        return load_pickled(f, map_location=map_location, mmap=bool(mmap), allow=allow)  # None: torch's default

    previous, torch.load = torch.load, load
    try:
        yield
    finally:
        torch.load = previous


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals it is given, by (module, name), before importing anything:
    Python's documented way of restricting what a pickle may call."""

    def __init__(self, file: IO[bytes], *, allow: dict[tuple[str, str], Any]):
        super().__init__(file)
        self.allow = allow

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allow[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name} was not an allowed global") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("unsupported persistent id (not a plain pickle)")


def load_plain_pickle(path: str | Path, *, allow: dict[tuple[str, str], Any]) -> Any:
    """A raw `pickle.dump` file whose globals are all in `allow` ({(module, name): object}); anything else is a
    CheckpointError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: {why(error)}") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), allow=allow).load()
    except pickle.UnpicklingError as error:
        if "GLOBAL" in str(error):
            raise CheckpointError(f"{path}: {refused(str(error))}") from None
        raise CheckpointError(f"{path}: not a readable pickle ({error})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: truncated or not a readable pickle ({type(error).__name__}: "
                              f"{_first_line(str(error)) or 'empty'})") from None


def allow_by_name(*objects: Any) -> dict[tuple[str, str], Any]:
    """{(module, qualified name): object} of classes and functions, the form load_plain_pickle takes."""
    return {(o.__module__, o.__qualname__): o for o in objects}


def torch_file_problem(path: str | Path) -> str | None:
    """Why `path` is not an intact torch file (missing, empty, a truncated zip: its directory sits at its end, a
    TorchScript program, or neither torch's zip nor its legacy format), or None. Cheap: reads the zip directory,
    never the tensors; what the pickle inside holds is judged by load_pickled."""
    path = Path(path)
    if not path.is_file():
        return "file not found"
    if path.stat().st_size == 0:
        return "an empty file"
    with path.open("rb") as file:
        head = file.read(4)
    if head.startswith(_PICKLE):  # torch's legacy format is a pickle stream; the loader judges the rest
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if _is_torchscript(names):
            return TORCHSCRIPT
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "a zip file without a torch data.pkl"
    except zipfile.BadZipFile:
        if head.startswith(b"PK"):
            return "truncated (a torch zip whose directory, at the end of the file, is missing)"
        return "not a torch file (neither torch's zip format nor its legacy format)"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None


def _warn_old_torch() -> None:
    global _warned_old_torch
    if torch_version() < SAFE_SINCE and not _warned_old_torch:
        _warned_old_torch = True
        log.warning("torch %s: its weights-only loading has known bypasses (fixed in torch 2.6 and 2.10); load "
                    "only checkpoints you trust, or upgrade torch", torch.__version__)
