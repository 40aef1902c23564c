"""The identity of a base DiT: which weights an adapter was trained on, so that loading it onto another model can
be refused (an adapter trained on one fine-tune silently degrades on another with the same architecture).

identity = sha256 over (a) the architecture config, (b) the weight index: every base parameter's name and shape,
(c) a fingerprint of the values: 64 evenly spaced elements of every tensor, rounded to bfloat16. Rounding makes a
bf16 copy of an fp32 checkpoint the same base (bf16 rounding is idempotent); any fine-tune moves some sampled
value. Cost: one strided gather per tensor, milliseconds even at 14B. peft's injected adapter parts are ignored,
so the identity of a model under training is its base's."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch
from torch import nn

from wan_train.lora.injection import base_name

SAMPLES = 64  # values per tensor in the fingerprint
_ADAPTER_PARTS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector.", ".lora_embedding_")


class BaseMismatchError(ValueError):
    pass


@torch.no_grad()
def base_identity(dit: nn.Module) -> str:
    """The hex sha256 identity of a WanDiT's base weights (see the module docstring)."""
    digest = hashlib.sha256()
    config = dataclasses.asdict(dit.config) if dataclasses.is_dataclass(dit.config) else dict(dit.config)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    tensors = sorted((base_name(n), t) for n, t in dit.state_dict().items() if not any(p in n for p in _ADAPTER_PARTS))
    for name, tensor in tensors:
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0 or not flat.is_floating_point():
            continue
        index = torch.linspace(0, flat.numel() - 1, min(SAMPLES, flat.numel()), device=flat.device).long()
        digest.update(flat[index].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()


def check_base(expected: str | None, dit: nn.Module, *, what: str, allow_mismatch: bool = False) -> None:
    """Refuse an adapter whose recorded base identity is not `dit`'s. `what` names the adapter in the message;
    expected None (a file from another trainer) cannot be checked and passes."""
    if expected is None or allow_mismatch:
        return
    actual = base_identity(dit)
    if actual != expected:
        raise BaseMismatchError(
            f"{what} was trained on another base model (base identity {expected[:12]}..., this model is "
            f"{actual[:12]}...): its output on this model is not what it was trained for. Load the base it was "
            "trained on, or pass allow_base_mismatch=true to apply it anyway")
