"""How a LoRA run holds its frozen base on the device: the storage dtype of the frozen weights (float32, bf16, or
float8 for the block linears), block offload and activation offload (conf/memory/, MemoryConfig). Numbers for
choosing: python -m wan_train.plan."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from wan_train.models.dit.fp8 import FP8, GRANULARITIES, Fp8Linear
from wan_train.memory.offload import ActivationOffload, BlockOffload
from wan_train.models import WanDiT

BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float8_e4m3fn": FP8}


@dataclass(frozen=True, kw_only=True)
class Placement:
    base_dtype: str = "float32"  # a name of BASE_DTYPES (resolved: no "auto")
    fp8_granularity: str = "channel"
    offload_blocks: int = 0
    prefetch_blocks: int = 1
    offload_activations: bool = False

    def __post_init__(self) -> None:
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"base_dtype={self.base_dtype!r}: expected one of {list(BASE_DTYPES)}")
        if self.fp8_granularity not in GRANULARITIES:
            raise ValueError(f"fp8_granularity={self.fp8_granularity!r}: expected one of {list(GRANULARITIES)}")


def place_base(dit: WanDiT, placement: Placement, *, compute_dtype: torch.dtype = torch.bfloat16) -> WanDiT:
    """Apply ``placement`` to a DiT whose trained parameters (LoRA factors) are already marked requires_grad:
    frozen parameters take the base dtype (the float32 ones of ``fp32_parameter_names`` stay float32; with
    float8 the block linears are stored in float8 and the rest in ``compute_dtype``), then the offloads."""
    frozen = _frozen_base_dtype(placement.base_dtype, compute_dtype)
    if placement.base_dtype == "float8_e4m3fn":
        _quantize_block_linears(dit, granularity=placement.fp8_granularity, compute_dtype=compute_dtype)
    keep = dit.fp32_parameter_names()
    for name, parameter in dit.named_parameters():
        if not parameter.requires_grad and name not in keep and parameter.dtype != FP8:
            parameter.data = parameter.data.to(frozen)
    if placement.offload_blocks:
        dit.block_offload = BlockOffload(dit, count=placement.offload_blocks, prefetch=placement.prefetch_blocks)
    if placement.offload_activations:
        dit.activation_offload = ActivationOffload  # a fresh one per forward
    return dit


@contextmanager
def float8_shells(dit: nn.Module) -> Iterator[None]:
    """peft wraps nn.Linear layers, not Fp8Linear: while the context lasts, each Fp8Linear (a float8 file's block
    linear kept as stored, load_dit(keep_float8=True)) is an nn.Linear shell of its shape, dtype and bias whose
    weight takes no memory (one element, expanded); after, the Fp8Linear is back, under the LoRA wrapper peft put
    in its place if any (as place_base puts its own). Nothing may read the shells' weights: not DoRA, whose
    magnitude starts from them (a run with lora.dora reads the base dequantized)."""
    kept = {name: m for name, m in dit.named_modules() if isinstance(m, Fp8Linear)}
    for name, module in kept.items():
        _replace(dit, name, _shell(module))
    try:
        yield
    finally:
        for name, module in kept.items():
            current = dit.get_submodule(name)
            if hasattr(current, "base_layer"):
                current.base_layer = module
            else:
                _replace(dit, name, module)


def _shell(module: Fp8Linear) -> nn.Linear:
    with torch.device("meta"):
        shell = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    empty = torch.zeros((), dtype=module.compute_dtype, device=module.weight.device)
    shell.weight = nn.Parameter(empty.expand(module.out_features, module.in_features), requires_grad=False)
    shell.bias = module.bias
    return shell


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _frozen_base_dtype(base_dtype: str, compute_dtype: torch.dtype) -> torch.dtype:
    return compute_dtype if base_dtype == "float8_e4m3fn" else BASE_DTYPES[base_dtype]


def _quantize_block_linears(dit: WanDiT, *, granularity: str, compute_dtype: torch.dtype) -> None:
    """Every frozen nn.Linear inside the blocks (peft's base layers included) becomes an Fp8Linear."""
    for block in dit.blocks:
        for name, module in list(block.named_modules()):
            if isinstance(module, nn.Linear) and not any(p.requires_grad for p in module.parameters(recurse=False)):
                _replace(block, name, Fp8Linear.from_linear(module, granularity=granularity,
                                                            compute_dtype=compute_dtype))
