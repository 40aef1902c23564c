"""Whole-file state dicts (official ``.pth`` files and single ``.safetensors`` files), strict key/shape checks
with one readable error, and loading into a model built on the meta device."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.pickles import load_pickled
from wan_train.models.checkpoint.safetensors_io import index_files, iter_tensors, shard_files_from_index

MAX_LISTED = 5
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one file by name. ``.pth`` files are memory-mapped and read weights-only (load_pickled: no code
    runs); ``.safetensors`` tensors are read lazily from the file's map as they are touched."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        return dict(iter_tensors(index_files([path])))
    if path.suffix == ".json" and path.name.endswith(".safetensors.index.json"):
        return dict(iter_tensors(index_files(shard_files_from_index(path))))
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: expected a .safetensors or a PyTorch ({'/'.join(TORCH_SUFFIXES)}) file")
    state = load_pickled(path)  # memory-mapped unless in the legacy pre-zip format, which cannot be
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors (a state dict), got {type(state).__name__}")
    return state


def check_state_dict(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], *, where: str,
                     what: str) -> None:
    """Raise one CheckpointError naming the missing, unexpected and mis-shaped keys (first few of each)."""
    report(f"{where}: the checkpoint does not match {what}", {
        "missing keys": [f"{k} {list(s)}" for k, s in expected.items() if k not in found],
        "unexpected keys": [f"{k} {list(s)}" for k, s in found.items() if k not in expected],
        "shape mismatches": [f"{k}: expected {list(expected[k])}, found {list(s)}"
                             for k, s in found.items() if k in expected and tuple(s) != tuple(expected[k])],
    })


def report(headline: str, problems: dict[str, list[str]]) -> None:
    """Raise one CheckpointError: the headline, then per non-empty kind of problem its count and first few."""
    lines = [headline]
    for title, items in problems.items():
        if items:
            more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:MAX_LISTED]) + more)
    if len(lines) > 1:
        raise CheckpointError("\n".join(lines))


def assign_parameters(model: nn.Module, tensors: dict[str, torch.Tensor], *, dtype: torch.dtype | None,
                      device: torch.device | str | None) -> None:
    """Put ``tensors`` (checked names) into a model built on the meta device, as frozen parameters.

    A cast or a move always copies, so no parameter stays backed by the file's memory map (which would keep the
    file mapped and its pages resident); with neither, tensors are used as read (copy-on-write maps).
    """
    for name, tensor in tensors.items():
        cast = dtype if dtype is not None and tensor.is_floating_point() else None
        if cast is not None or device is not None:
            tensor = tensor.to(device=device, dtype=cast, copy=True)
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name), attr, nn.Parameter(tensor, requires_grad=False))
