"""The identity of a base DiT: which weights an adapter was trained on, so that loading it onto another model can
be refused (an adapter trained on one fine-tune silently degrades on another with the same architecture).

identity = sha256 over (a) the architecture config, (b) the weight index: every base parameter's name and shape,
(c) a fingerprint of the values: 64 evenly spaced elements of every tensor, rounded to bfloat16. Rounding makes a
bf16 copy of an fp32 checkpoint the same base (bf16 rounding is idempotent); any fine-tune moves some sampled
value. Cost: one strided gather per tensor, milliseconds even at 14B. peft's injected adapter parts are ignored,
so the identity of a model under training is its base's. A base read from a quantized file (float8, GGUF) adds
which file and quantization, and the architecture's own identity (a and b alone): an adapter trained on it applies
to the full-precision base, with a warning (check_base)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import torch
from torch import nn

from wan_train.lora.injection import base_name

log = logging.getLogger(__name__)

SAMPLES = 64  # values per tensor in the fingerprint
_SCALE = ".weight_scale"  # an Fp8Linear's scale buffer: part of its weight's value, not a tensor of its own
_QUANTIZED = "|quantized|"
_ADAPTER_PARTS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector.", ".lora_embedding_")


class BaseMismatchError(ValueError):
    pass


@torch.no_grad()
def base_identity(dit: nn.Module) -> str:
    """The hex sha256 identity of a WanDiT's base weights (see the module docstring). A DiT read from a quantized
    file (``dit.quantization``) fingerprints the weights it computes with (float8 ones as s Q) and its identity
    says so: "<sha256>|quantized|<architecture sha256>|<how and which file>"."""
    digest = hashlib.sha256()
    config = dataclasses.asdict(dit.config) if dataclasses.is_dataclass(dit.config) else dict(dit.config)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    state = {n: t for n, t in dit.state_dict().items() if not any(p in n for p in _ADAPTER_PARTS)}
    # float8 scales beside their weights (an Fp8Linear's weight_scale, under any peft wrapping), by the weight's name
    scales = {base_name(n).removesuffix(_SCALE) + ".weight": t.float() for n, t in state.items() if n.endswith(_SCALE)}
    for name, tensor in sorted((base_name(n), t) for n, t in state.items() if not n.endswith(_SCALE)):
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0 or not flat.is_floating_point():
            continue
        index = torch.linspace(0, flat.numel() - 1, min(SAMPLES, flat.numel()), device=flat.device).long()
        values = flat[index].float()
        if (scale := scales.get(name)) is not None:
            values = values * (scale.reshape(-1)[index // tensor.shape[1]] if scale.numel() > 1 else scale)
        digest.update(values.to(torch.bfloat16).float().cpu().numpy().tobytes())
    quantization = getattr(dit, "quantization", None)
    if quantization:
        return f"{digest.hexdigest()}{_QUANTIZED}{architecture_identity(dit)}|{quantization}"
    return digest.hexdigest()


def architecture_identity(dit: nn.Module) -> str:
    """sha256 over the config and every base parameter's name and shape: what a full-precision base and any
    quantized copy of it share. The config leaves out text_len, the prompt padding: no weight shows it, so a
    single file (ComfyUI, GGUF) cannot carry it and reads as Wan's 512, while the quickstart DiT pads to 64."""
    return hashlib.sha256(_architecture(dit).encode()).hexdigest()


def _architecture(dit: nn.Module) -> str:
    config = dataclasses.asdict(dit.config) if dataclasses.is_dataclass(dit.config) else dict(dit.config)
    config.pop("text_len", None)
    names = sorted((base_name(n), tuple(t.shape)) for n, t in dit.state_dict().items()
                   if not any(p in n for p in _ADAPTER_PARTS) and not n.endswith(_SCALE))
    return json.dumps(config, sort_keys=True, default=str) + "".join(f"{n}:{s};" for n, s in names)


def check_base(expected: str | None, dit: nn.Module, *, what: str, allow_mismatch: bool = False) -> None:
    """Refuse an adapter whose recorded base identity is not `dit`'s. `what` names the adapter in the message;
    expected None (a file from another trainer) cannot be checked and passes. An adapter trained on a quantized
    file applies, with a warning saying so, to any DiT of that file's architecture (the full-precision base)."""
    if expected is None or allow_mismatch:
        return
    actual = base_identity(dit)
    if actual == expected:
        return
    if _QUANTIZED in expected:
        _, architecture, how = expected.split("|", 3)[1:]
        if architecture == architecture_identity(dit):
            log.warning("%s was trained on a quantized base (%s); applying it to this model of the same "
                        "architecture%s", what, how, " (another quantized copy)" if _QUANTIZED in actual else "")
            return
    raise BaseMismatchError(
        f"{what} was trained on another base model (base identity {expected[:12]}..., this model is "
        f"{actual[:12]}...): its output on this model is not what it was trained for. Load the base it was "
        "trained on, or pass allow_base_mismatch=true to apply it anyway")
