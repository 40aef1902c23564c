"""Training-time LoRA: peft adapters injected into a WanDiT in place, the base frozen, and the trained factors read
back out as LoraModules (our module names) for export.

peft's `inject_adapter_in_model` wraps every targeted nn.Linear as `lora.Linear(base_layer, lora_A, lora_B)`; the
model stays a WanDiT (no PeftModel around it), so the trainer, activation checkpointing and the inference loop
call it unchanged. Parameter names gain peft's parts: `blocks.0.self_attn.q.base_layer.weight` (frozen),
`blocks.0.self_attn.q.lora_A.default.weight` [r, in], `...lora_B.default.weight` [out, r] (trained)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from peft import inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from wan_train.lora.adapters import LoraModule
from wan_train.lora.targets import lora_config

ADAPTER = "default"  # peft's adapter name; one adapter per DiT (an A14B run has one DiT per expert)
_PEFT_PARAM = re.compile(rf"^(?P<module>.+)\.lora_(?P<role>A|B)\.{ADAPTER}\.weight$")
_PEFT_PARTS = re.compile(r"\.base_layer(?=\.|$)")


def add_adapter(dit: nn.Module, *, target: str, rank: int, alpha: float, dropout: float = 0.0,
                rslora: bool = False, dora: bool = False, towers: Sequence[str] | None = None,
                fusion: bool = False) -> int:
    """Inject a fresh adapter (B = 0, so the output is the base model's until trained) and freeze everything
    else; returns the number of trainable parameters. towers / fusion: a twin-tower model's (lora.targets)."""
    config = lora_config(target, rank=rank, alpha=alpha, dropout=dropout, rslora=rslora, dora=dora, towers=towers,
                         fusion=fusion)
    inject_adapter_in_model(config, dit, adapter_name=ADAPTER)
    for name, parameter in dit.named_parameters():
        trained = (f".lora_A.{ADAPTER}." in name or f".lora_B.{ADAPTER}." in name
                   or f".lora_magnitude_vector.{ADAPTER}" in name)
        parameter.requires_grad_(trained)
        if trained:  # peft casts the factors to a bf16 base's dtype; they train in float32 (master weights)
            parameter.data = parameter.data.float()
    return sum(p.numel() for p in dit.parameters() if p.requires_grad)


def has_adapter(dit: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in dit.modules())


def uses_dora(dit: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) and m.use_dora.get(ADAPTER, False) for m in dit.modules())


def base_name(name: str) -> str:
    """A parameter or module name of an injected model -> the base model's (`q.base_layer.weight` -> `q.weight`)."""
    return _PEFT_PARTS.sub("", name)


def adapter_modules(dit: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> dict[str, LoraModule]:
    """The adapter as LoraModules keyed by our module names, with each module's scale as peft computes it
    (alpha / r, or alpha / sqrt(r) with rsLoRA). `weights` (peft parameter name -> tensor, e.g. the EMA shadow)
    replaces the live factors. DoRA's magnitude vectors have no place in a plain LoRA: refused."""
    if uses_dora(dit):
        raise ValueError("this adapter uses DoRA (lora.dora=true): its magnitude vectors cannot be written as a "
                         "plain LoRA; load the run folder itself (generate.py ckpt=RUN_DIR) or peft's save_pretrained")
    live = {n: p for n, p in dit.named_parameters() if _PEFT_PARAM.match(n)}
    weights = live if weights is None else weights
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for name in live:
        match = _PEFT_PARAM.match(name)
        if name not in weights:
            raise KeyError(f"{name}: missing from the adapter weights given")
        factors.setdefault(match["module"], {})[match["role"]] = weights[name].detach().float().cpu().clone()
    modules = {}
    for module, layer in dit.named_modules():
        if isinstance(layer, LoraLayer) and module in factors:
            modules[module] = LoraModule(A=factors[module]["A"], B=factors[module]["B"],
                                         scale=float(layer.scaling[ADAPTER]))
    return modules


@torch.no_grad()
def merge_adapter(dit: nn.Module) -> nn.Module:
    """Fold the injected adapter into the base weights with peft's own merge (LoRA and DoRA alike) and put the
    plain nn.Linear layers back, so the model has the base model's names again (for loading a run folder)."""
    for name, layer in list(dit.named_modules()):
        if isinstance(layer, LoraLayer):
            layer.merge(adapter_names=[ADAPTER])
            parent, _, child = name.rpartition(".")
            setattr(dit.get_submodule(parent) if parent else dit, child, layer.get_base_layer())
    return dit
