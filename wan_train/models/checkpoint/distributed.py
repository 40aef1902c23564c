"""torch.distributed.checkpoint (DCP) folders read without running code: FSDP's sharded checkpoints.

DCP's own FileSystemReader unpickles the folder's `.metadata` with plain `pickle.load`, and its load planner reads
non-tensor entries with `torch.load(weights_only=False)`: a crafted folder would run code in every rank. Here the
metadata goes through a RestrictedUnpickler that knows DCP's own plain metadata classes only, and the entries
through load_pickled (weights_only_loads). Lightning's `meta.pt` beside the shards is read with load_pickled by
the callers.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata

from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.pickles import allow_by_name, load_plain_pickle, weights_only_loads

DCP_METADATA = ".metadata"  # DCP's own file name


def _metadata_globals() -> dict[tuple[str, str], Any]:
    """What a DCP `.metadata` pickle may name: DCP's metadata dataclasses, torch.Size, dtypes, layouts, a path:
    plain data, whose unpickling sets fields and calls nothing else."""
    from torch.distributed.checkpoint import filesystem

    names = ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
             "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
    allow = allow_by_name(*(getattr(dcp_metadata, n) for n in names if hasattr(dcp_metadata, n)),
                          filesystem._StorageInfo, torch.Size, torch.serialization._get_layout)
    allow.update({("torch", n): getattr(torch, n) for n in dir(torch)  # torch.float32, torch.strided (older torch)
                  if isinstance(getattr(torch, n), (torch.dtype, torch.layout))})
    # StorageMeta.checkpoint_id is the writer's path; pathlib's module moved in Python 3.13
    allow.update({(m, "PosixPath"): pathlib.PosixPath for m in ("pathlib", pathlib.PosixPath.__module__)})
    return allow


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose `.metadata` is unpickled with DCP's metadata classes allowed, nothing else."""

    refused: CheckpointError | None = None  # the first metadata file refused

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        rank = kwargs.get("rank")
        name = DCP_METADATA if rank is None else f"__{rank}{DCP_METADATA}"  # newer torch may keep one per rank
        try:
            metadata = load_plain_pickle(Path(self.path) / name, allow=_metadata_globals())
        except CheckpointError as error:
            self.refused = self.refused or error  # DCP tries the rank's own file next; this is what to report
            raise
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise CheckpointError(f"{Path(self.path) / name}: not a torch.distributed.checkpoint metadata file "
                                  f"(holds a {type(metadata).__name__})")
        if hasattr(dcp_metadata, "StorageMeta"):  # as FileSystemReader does: this load's id on the metadata
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = dcp_metadata.StorageMeta()
            metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return metadata


def read_distributed(folder: str | Path) -> dict[str, Any]:
    """Everything the DCP shards of `folder` hold, whole, in CPU memory (one process, no process group)."""
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    reader = SafeFileSystemReader(folder)
    with _named(folder, reader), weights_only_loads():
        _load_state_dict(state, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return state


def load_distributed(state: dict[str, Any], folder: str | Path) -> None:
    """DCP's `load(state, checkpoint_id=folder)` (a collective: fills each rank's shards in place) through the
    safe reader."""
    from torch.distributed.checkpoint import load

    reader = SafeFileSystemReader(folder)
    with _named(folder, reader), weights_only_loads():
        load(state, storage_reader=reader)


@contextlib.contextmanager
def _named(folder: str | Path, reader: SafeFileSystemReader) -> Iterator[None]:
    """Errors inside a DCP load (DCP wraps each rank's error in its CheckpointException) as one CheckpointError
    naming the folder, or the file in it, and the first cause."""
    from torch.distributed.checkpoint.api import CheckpointException

    folder = Path(folder)
    try:
        yield
    except CheckpointException as error:
        causes = [failure[0] for failure in error.failures.values()]
        cause = reader.refused or next((c for c in causes if isinstance(c, CheckpointError)),
                                       causes[0] if causes else error)
        raise CheckpointError(_in_folder(folder, cause)) from None
    except (CheckpointError, OSError, EOFError, RuntimeError, ValueError, KeyError, AssertionError) as error:
        raise CheckpointError(_in_folder(folder, reader.refused or error)) from None


def _in_folder(folder: Path, error: BaseException) -> str:
    """A CheckpointError's own message when it names a file of `folder`; anything else prefixed with the folder."""
    if isinstance(error, CheckpointError) and str(error).startswith(str(folder)):
        return str(error)
    lines = str(error).strip().splitlines() or [""]
    detail = str(error) if isinstance(error, CheckpointError) else f"{type(error).__name__}: {lines[0]}"
    return f"{folder}: a torch.distributed.checkpoint folder that cannot be read ({detail})"
