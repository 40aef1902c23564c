"""LoRA adapter files applied to a WanDiT at inference, per request, without touching its weights.

A LoRA adds to a Linear y = W x + b the low-rank term  strength * (alpha / r) * B A x,  A [r, in], B [out, r]
(Hu et al. 2021, eq. 3; `strength` is the user's multiplier). `applied` adds it with forward hooks on the targeted
nn.Linear modules and removes them on exit, so the model is bit-identical afterwards (merging into W and
subtracting again would round).

Files (.safetensors) and how their keys map to our (official Wan) module names:

- peft / diffusers: `<prefix><module>.lora_A.weight` [r, in], `.lora_B.weight` [out, r], optional `.alpha`; prefix
  `base_model.model.`, `transformer.`, `diffusion_model.` or none; module in official naming
  (`blocks.0.self_attn.q`) or diffusers naming (`blocks.0.attn1.to_q`, renamed by dit_layouts.rename_key).
- a peft model's raw state_dict: the same with peft's adapter name inside the key, `.lora_A.<name>.weight` /
  `.lora_B.<name>.weight` (name usually `default`). DiffSynth-Studio's trainer saves its Wan LoRAs so
  (`blocks.0.self_attn.q.lora_A.default.weight`, "pipe.dit." already removed by its --remove_prefix_in_ckpt), with
  lora_alpha = rank and no alpha stored: its GeneralLoRALoader drops the name and applies them at scale 1, which is
  what the default below gives. A file holding two adapter names is refused: which one is meant is not knowable.
- ComfyUI: the same with `.lora_down.weight` / `.lora_up.weight` (= A / B) and usually `diffusion_model.`.
- kohya / musubi-tuner: `lora_unet_<module with '.' -> '_'>.lora_down.weight` / `.lora_up.weight` / `.alpha`; the
  underscored name is looked up among the model's own Linear names (official and diffusers spelling), since
  '_' is also part of names like `self_attn`.

alpha, per module: its `.alpha` tensor; else the `alpha` argument (peft keeps lora_alpha in adapter_config.json,
outside the file); else the file's metadata (diffusers' `lora_adapter_metadata` JSON with lora_alpha and
alpha_pattern, kohya's `ss_network_alpha`) or, for a peft folder's `adapter_model.safetensors`, the
`adapter_config.json` beside it; else alpha = r (scale 1, with a warning). An `alpha` argument that contradicts
the file is an error.

Not supported, and refused with the keys named (never skipped): full-weight deltas `.diff` / `.diff_b` (some
ComfyUI files; they also target norms and modulation tables, which no Linear hook reaches), DoRA (`.dora_scale`,
peft's `lora_magnitude_vector`), LyCORIS LoHa / LoKr, conv `lora_mid`, and LoRA biases.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from wan_train.models import CheckpointError, WanDiT
from wan_train.models.checkpoint.dit_layouts import DIFFUSERS, from_official, rename_key

# key suffix -> role; A is lora_A / lora_down [r, in], B is lora_B / lora_up [out, r]
_ROLES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_down.weight": "A", ".lora_up.weight": "B",
          ".alpha": "alpha"}
_UNSUPPORTED = {
    ".diff": "a full-weight delta (.diff)", ".diff_b": "a full bias delta (.diff_b)",
    ".dora_scale": "DoRA (.dora_scale)", ".lora_magnitude_vector": "DoRA (peft's lora_magnitude_vector)",
    ".lora_magnitude_vector.weight": "DoRA (peft's lora_magnitude_vector)",
    ".lora_mid.weight": "a conv LoRA (lora_mid)",
    ".lora_A.bias": "a LoRA bias", ".lora_B.bias": "a LoRA bias", ".lora_down.bias": "a LoRA bias",
    ".lora_up.bias": "a LoRA bias",
}
# peft's adapter name inside a key (a peft model's state_dict, DiffSynth-Studio's files): `.lora_A.default.weight`.
# peft adapter names never hold a '.' (they are ModuleDict keys).
_ADAPTER_NAME = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector)\.([^.]+)\.(weight|bias)$")
_UNSUPPORTED_PARTS = re.compile(r"\.(hada|lokr)_\w+$")  # LyCORIS LoHa / LoKr
_DOTTED_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.")
_UNDERSCORED_PREFIXES = ("lora_unet_", "lora_transformer_")
_SHOW = 5  # offending keys listed per problem
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraModule:
    """One targeted Linear: A [r, in], B [out, r] and scale = alpha / r."""
    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.A.shape[0]


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA file read for one model: its path and, per targeted nn.Linear (our module name, e.g.
    `blocks.0.self_attn.q`), the low-rank factors and scale."""
    source: Path
    modules: dict[str, LoraModule] = field(repr=False)

    def __repr__(self) -> str:
        ranks = sorted({m.rank for m in self.modules.values()})
        return f"LoraWeights(source={str(self.source)!r}, modules={len(self.modules)}, ranks={ranks})"


def load_lora(path: str | Path, *, model: WanDiT, alpha: float | None = None) -> LoraWeights:
    """Read a LoRA .safetensors file of any supported layout (module docstring) and map it onto `model`'s
    nn.Linear modules. Every tensor must be used: keys that match no module, factors whose shapes do not fit
    the module, a missing A or B and unsupported adapter types raise CheckpointError naming the file and keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such LoRA file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a corrupt or non-safetensors file
        raise CheckpointError(f"{path}: cannot read as safetensors: {e}") from e
    if not tensors:
        raise CheckpointError(f"{path}: the file holds no tensors")
    return _build(path, tensors, metadata, _Targets(model), alpha)


@contextmanager
def applied(model: WanDiT, adapters: Sequence[tuple[LoraWeights | str | Path, float]]) -> Iterator[WanDiT]:
    """Apply each (adapter, strength) to `model` for the duration of the block: every targeted Linear returns
    out + sum_i strength_i * scale_i * (x A_i^T) B_i^T, computed in the input's dtype (autocast applies as to the
    Linear itself) with A and B copied once to the module's device and dtype. Paths are read with load_lora.
    On exit, also through an exception, every hook is removed; the weights are never modified."""
    layers = dict(linears(model))
    terms: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for adapter, strength in adapters:
        lora = adapter if isinstance(adapter, LoraWeights) else load_lora(adapter, model=model)
        check_fits(lora, layers)
        if strength == 0:
            continue  # exactly no change
        for name, m in lora.modules.items():
            weight = layers[name].weight
            dtype = weight.dtype if weight.is_floating_point() else m.A.dtype
            terms.setdefault(name, []).append(
                (m.A.to(weight.device, dtype), m.B.to(weight.device, dtype), float(strength) * m.scale))
    handles = []
    try:
        for name, module_terms in terms.items():
            handles.append(layers[name].register_forward_hook(_LoraHook(module_terms)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


class _LoraHook:
    def __init__(self, terms: list[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        self.terms = terms

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        for A, B, factor in self.terms:
            delta = F.linear(F.linear(x, A.to(x.dtype)), B.to(x.dtype)) * factor
            out = out + delta.to(out.dtype)
        return out


# ------------------------------------------------------------------------------------------------ key mapping

def linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear))


class _Targets:
    """The model's nn.Linear names, and the same with '.' -> '_' (official and diffusers spelling) for kohya keys."""

    def __init__(self, model: WanDiT) -> None:
        self.linears = {name: m for name, m in linears(model)}
        self.underscored: dict[str, str | None] = {}
        for name in self.linears:
            for spelling in {name, from_official(name, DIFFUSERS)}:
                key = spelling.replace(".", "_")
                # two modules with one underscored name cannot be told apart: None marks the ambiguity
                self.underscored[key] = name if self.underscored.get(key, name) == name else None

    def resolve(self, raw: str) -> str | None:
        """A module path as the file spells it -> our module name, or None."""
        for prefix in _UNDERSCORED_PREFIXES:
            if raw.startswith(prefix):
                return self.underscored.get(raw[len(prefix):])
        name = _strip_prefixes(raw)
        if name in self.linears:
            return name
        official = rename_key(name, src=DIFFUSERS)
        return official if official in self.linears else None


def _strip_prefixes(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _DOTTED_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def _split_key(key: str) -> tuple[str | None, str, str | None]:
    """`<module><suffix>` -> (module, role, peft adapter name or None), or (None, why it is not usable, None)."""
    named = _ADAPTER_NAME.search(key)
    adapter = named[2] if named else None
    if named:
        key = f"{key[:named.start()]}.{named[1]}.{named[3]}"
    for suffix, why in _UNSUPPORTED.items():
        if key.endswith(suffix):
            return None, f"unsupported: {why}", None
    if _UNSUPPORTED_PARTS.search(key):
        return None, "unsupported: LyCORIS LoHa / LoKr", None
    for suffix, role in _ROLES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role, adapter
    return None, ("not a LoRA tensor (expected .lora_A/.lora_B/.lora_down/.lora_up .weight, peft's "
                  ".lora_A.<adapter>.weight, or .alpha)"), None


def _build(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], targets: _Targets,
           alpha: float | None) -> LoraWeights:
    problems: dict[str, list[str]] = {}

    def problem(kind: str, detail: str) -> None:
        problems.setdefault(kind, []).append(detail)

    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # our module -> role -> (file key, tensor)
    file_names: dict[str, str] = {}  # our module -> the module path as the file spells it
    split = {key: _split_key(key) for key in tensors}
    _check_one_adapter(path, split)
    for key, tensor in tensors.items():
        raw, role, _ = split[key]
        if raw is None:
            problem(role, key)
            continue
        name = targets.resolve(raw)
        if name is None:
            problem("keys that match no nn.Linear of the model", key)
            continue
        if file_names.setdefault(name, raw) != raw:
            problem("modules given twice (under two names)", f"{file_names[name]} and {raw} -> {name}")
            continue
        group = groups.setdefault(name, {})
        if role in group:  # e.g. .lora_A.weight beside .lora_down.weight or .lora_A.default.weight
            problem("tensors given twice (under two key spellings)", f"{group[role][0]} and {key}")
            continue
        group[role] = (key, tensor)

    file_alpha = _metadata_alpha(metadata, path)
    modules, defaulted = {}, []
    for name, group in groups.items():
        missing = [r for r in ("A", "B") if r not in group]
        if missing:
            present = ", ".join(k for k, _ in group.values())
            problem("modules without both factors", f"{present} (no {' or '.join(missing)})")
            continue
        (a_key, A), (b_key, B) = group["A"], group["B"]
        linear = targets.linears[name]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1] or A.shape[1] != linear.in_features \
                or B.shape[0] != linear.out_features:
            problem("shape mismatches", f"{a_key} {tuple(A.shape)} / {b_key} {tuple(B.shape)} for {name} "
                                        f"(in {linear.in_features}, out {linear.out_features})")
            continue
        if "alpha" in group and group["alpha"][1].numel() != 1:
            problem("alpha tensors that are not scalars", group["alpha"][0])
            continue
        own = float(group["alpha"][1].item()) if "alpha" in group else file_alpha(file_names[name])
        # rel_tol: .alpha tensors are often bf16 (0.7 is stored as 0.69921875)
        if alpha is not None and own is not None and not math.isclose(own, alpha, rel_tol=1e-2):
            problem("alpha given that contradicts the file", f"{name}: alpha={alpha:g}, file says {own:g}")
            continue
        if own is None and alpha is None:
            defaulted.append(name)
        resolved = own if own is not None else alpha if alpha is not None else A.shape[0]
        modules[name] = LoraModule(A=A, B=B, scale=resolved / A.shape[0])

    if problems:
        lines = [f"{kind} ({len(keys)}): {', '.join(keys[:_SHOW])}{', ...' if len(keys) > _SHOW else ''}"
                 for kind, keys in problems.items()]
        raise CheckpointError(f"{path}: cannot apply this LoRA to the model:\n  " + "\n  ".join(lines))
    if defaulted:
        log.warning("%s: no alpha for %d of %d modules (no .alpha tensor, metadata or adapter_config.json): using "
                    "alpha = rank (scale 1); pass alpha= if it was trained with another lora_alpha", path,
                    len(defaulted), len(modules))
    return LoraWeights(source=path, modules=modules)


def _check_one_adapter(path: Path, split: dict[str, tuple[str | None, str, str | None]]) -> None:
    """A file holding two peft adapters (`.lora_A.default.weight` beside `.lora_A.style.weight`) is ambiguous:
    applying both, or one chosen by key order, would silently give neither adapter's output."""
    first: dict[str, str] = {}  # adapter name -> its first key
    for key, (_, _, adapter) in split.items():
        if adapter is not None:
            first.setdefault(adapter, key)
    if len(first) > 1:
        found = ", ".join(f"{name!r} (e.g. {key})" for name, key in first.items())
        raise CheckpointError(f"{path}: keys of {len(first)} peft adapters, {found}: ambiguous, a LoRA file must hold "
                              f"one adapter (save each on its own, e.g. peft's save_pretrained(selected_adapters=...))")


def _metadata_alpha(metadata: dict[str, str], path: Path) -> Callable[[str], float | None]:
    """module path (as in the file) -> alpha from the file's metadata, or None where it says nothing."""
    config = {}
    if "lora_adapter_metadata" in metadata:  # diffusers: a peft LoraConfig, keys optionally "transformer."-prefixed
        raw = _json(metadata["lora_adapter_metadata"], f"{path} (metadata lora_adapter_metadata)")
        config = {k.removeprefix("transformer."): v for k, v in raw.items() if not k.startswith("transformer_2.")}
    elif path.name == "adapter_model.safetensors" and (path.parent / "adapter_config.json").is_file():
        # a peft save_pretrained folder: its LoraConfig sits beside the weights
        config = _json((path.parent / "adapter_config.json").read_text(), str(path.parent / "adapter_config.json"))
    default = config.get("lora_alpha")
    if default is None and "ss_network_alpha" in metadata:  # kohya / musubi-tuner
        try:
            default = float(metadata["ss_network_alpha"])
        except ValueError:
            default = None  # e.g. "Dynamic": the per-module .alpha tensors carry it
    pattern = config.get("alpha_pattern") or {}

    def lookup(module: str) -> float | None:
        module = _strip_prefixes(module)
        # peft's alpha_pattern: a key matches a module whose name ends with it (at a '.' boundary) or as a regex
        for key, value in pattern.items():
            if re.fullmatch(rf"(.*\.)?(?:{key})", module):
                return float(value)
        return None if default is None else float(default)

    return lookup


def _json(text: str, source: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source}: not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(value).__name__}")
    return value


def check_fits(lora: LoraWeights, layers: dict[str, nn.Linear]) -> None:
    """A LoraWeights read for another model must not be applied to this one."""
    bad = []
    for name, m in lora.modules.items():
        linear = layers.get(name)
        if linear is None or m.A.shape[1] != linear.in_features or m.B.shape[0] != linear.out_features:
            bad.append(name)
    if bad:
        raise CheckpointError(f"{lora.source}: modules missing from this model or of another shape: "
                              f"{', '.join(bad[:_SHOW])}{', ...' if len(bad) > _SHOW else ''}")
