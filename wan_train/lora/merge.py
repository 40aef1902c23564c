"""Adapters merged into a WanDiT's weights for speed (no per-Linear extra matmuls), and unmerged exactly.

Merging adds  sum_i strength_i * scale_i * B_i A_i  to each targeted weight, computed in float32 and cast to the
weight's dtype (what `applied` computes per token, folded into W; equal up to rounding, <= 1e-5 in float32).
Unmerging does not subtract again (that would round differently): the original tensors are kept, on the CPU, and
copied back, so the model is bit-identical afterwards. A blend is the sum: linear in its strengths."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from wan_train.lora.adapters import LoraWeights, check_fits, linears, load_lora

Blend = Sequence[tuple[LoraWeights | str | Path, float]]


class Merged:
    """The handle of a merge: `unmerge()` restores every touched weight to its exact original bits."""

    def __init__(self, model: nn.Module, originals: dict[str, torch.Tensor] | None, modules: list[str]) -> None:
        self.model, self.originals, self.modules = model, originals, modules

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.originals is None:
            raise RuntimeError("these adapters cannot be unmerged: already unmerged, or merged with "
                               "keep_originals=False")
        layers = dict(linears(self.model))
        for name, weight in self.originals.items():
            layers[name].weight.copy_(weight)
        self.originals = None


@torch.no_grad()
def merge(model: nn.Module, adapters: Blend, *, keep_originals: bool = True) -> Merged:
    """Fold the weighted adapters into `model`'s Linear weights in place. keep_originals=False saves the CPU copy
    when the merge is for good (e.g. writing a merged checkpoint); unmerge() then raises."""
    layers = dict(linears(model))
    deltas: dict[str, torch.Tensor] = {}
    for adapter, strength in adapters:
        lora = adapter if isinstance(adapter, LoraWeights) else load_lora(adapter, model=model)
        check_fits(lora, layers)
        if strength == 0:
            continue
        for name, m in lora.modules.items():
            delta = (m.B.float() @ m.A.float()) * (float(strength) * m.scale)
            deltas[name] = deltas[name] + delta if name in deltas else delta
    originals = {}
    for name, delta in deltas.items():
        weight = layers[name].weight
        if keep_originals:
            originals[name] = weight.detach().to("cpu", copy=True)
        weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return Merged(model, originals if keep_originals else None, list(deltas))


@contextmanager
def merged(model: nn.Module, adapters: Blend) -> Iterator[nn.Module]:
    """`model` with the adapters merged for the block; restored bit for bit on exit (also on an exception)."""
    handle = merge(model, adapters)
    try:
        yield model
    finally:
        handle.unmerge()
