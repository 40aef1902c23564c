"""Safetensors checkpoints: header-only indexing (names, dtypes, shapes, truncation checks before any data is
read), streaming loads shard by shard, and sharded writes with a Hugging Face style ``.index.json`` into the temp
folder of a wan_train.fileio.durable.atomic_directory (which makes the folder appear whole and durable)."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from safetensors import safe_open
from safetensors.torch import save_file

from wan_train.models.checkpoint.errors import CheckpointError

# header dtype names -> torch dtypes, as the safetensors format spells them
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
_MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    key: str  # the name inside the file (before any prefix stripping or layout renaming)
    dtype: torch.dtype
    shape: tuple[int, ...]
    quant: str | None = None  # a GGUF tensor's ggml quantization (Q4_K, ...): dtype is what it dequantizes to


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor entries and ``__metadata__`` of one .safetensors file; raises CheckpointError if it is truncated
    or not a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    size = path.stat().st_size
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise CheckpointError(f"{path}: truncated ({size} bytes; not even a safetensors header length)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(f"{path}: truncated or not a safetensors file (header of {header_len} bytes "
                                  f"announced, file is {size} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from None
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - header_len
    entries = {}
    for key, h in header.items():
        end = h["data_offsets"][1]
        if end > data_len:
            raise CheckpointError(f"{path}: truncated: tensor {key!r} ends at byte {end} of the data section, "
                                  f"which holds only {data_len} bytes")
        if h["dtype"] not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {h['dtype']}")
        entries[key] = TensorInfo(path, key, _DTYPES[h["dtype"]], tuple(h["shape"]))
    return entries, metadata


def index_files(files: list[Path]) -> dict[str, TensorInfo]:
    """All tensors of a (possibly sharded) checkpoint by name, from the headers alone."""
    entries: dict[str, TensorInfo] = {}
    for file in files:
        shard, _ = read_header(file)
        for key, info in shard.items():
            if key in entries:
                raise CheckpointError(f"{file}: tensor {key!r} is also in {entries[key].file}")
            entries[key] = info
    return entries


def shard_files_from_index(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: unreadable shard index ({e!r})") from None
    return [index_path.parent / name for name in dict.fromkeys(weight_map.values())]


def iter_tensors(entries: dict[str, TensorInfo], *, device: torch.device | str = "cpu"
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every entry, one file open at a time; data goes straight to ``device``. On the meta
    device nothing is read: each tensor is an empty one of its dtype and shape (what a load would hold)."""
    if torch.device(device).type == "meta":
        yield from ((name, torch.empty(info.shape, dtype=info.dtype, device="meta")) for name, info in entries.items())
        return
    by_file: dict[Path, list[str]] = {}
    for name, info in entries.items():
        by_file.setdefault(info.file, []).append(name)
    for file, names in by_file.items():
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as f:
                for name in names:
                    yield name, f.get_tensor(entries[name].key)
        except Exception as e:  # safetensors raises its own error types for corrupt data
            raise CheckpointError(f"{file}: could not read tensors ({e})") from e


def assign_streamed(model: nn.Module, entries: dict[str, TensorInfo], *, dtype: torch.dtype | None,
                    keep_fp32: set[str], device: torch.device | str) -> None:
    """Read `entries` (checked names of `model`, built on the meta device) one tensor at a time into the model's
    parameters, cast to `dtype` (None: as stored) except the floating `keep_fp32` names, which become float32."""
    for name, tensor in iter_tensors(entries, device=device):
        if dtype is not None and tensor.is_floating_point():
            # a fresh copy even when the dtype already matches: a tensor left on the file's memory map would
            # keep the whole shard mapped, and every page the casts touched resident
            tensor = tensor.to(torch.float32 if name in keep_fp32 else dtype, copy=True)
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name), attr, nn.Parameter(tensor))


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "10GB", "500MB", "2GiB"."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B\s*", size, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size={size!r}: expected bytes or a size like '10GB' / '500MB'")
    base = 1024 if m[3] else 1000
    return int(float(m[1]) * base ** " KMGT".index(m[2].upper() or " "))


def write_sharded(tensors: dict[str, torch.Tensor], folder: Path, *, basename: str, max_shard_size: int | str,
                  metadata: dict[str, str] | None = None) -> list[Path]:
    """Write ``basename.safetensors``, or ``basename-0000k-of-0000N.safetensors`` shards plus
    ``basename.safetensors.index.json`` when the tensors exceed ``max_shard_size`` bytes. The shards are written
    in place, unsynced: ``folder`` is an atomic_directory's temp folder, which fsyncs all of it before the swap."""
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + nbytes > limit:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += nbytes
    n = len(shards)
    names = ([f"{basename}.safetensors"] if n == 1
             else [f"{basename}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
    meta = {"format": "pt", **(metadata or {})}
    for name, shard in zip(names, shards, strict=True):
        save_file({k: v.detach().to("cpu").contiguous() for k, v in shard.items()}, str(folder / name), metadata=meta)
    if n > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {k: name for name, shard in zip(names, shards, strict=True) for k in shard},
        }
        write_json(folder / f"{basename}.safetensors.index.json", index)
    return [folder / name for name in names]


def write_json(path: Path, obj: dict) -> None:
    """Written in place, like the shards: into an atomic_directory's temp folder, which fsyncs all of it."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
