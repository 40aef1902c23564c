"""Float8 DiT files, from their safetensors headers: which weights are stored in float8 and with which scale.

Layouts read (names after the ``model.diffusion_model.`` prefix is stripped):
  - ComfyUI's fp8 "scaled" files (``wan2.1_t2v_14B_fp8_scaled.safetensors``, ``wan2.2_*_fp8_scaled``): an empty
    marker tensor ``scaled_fp8`` (its dtype is the float8 type), each quantized linear's ``weight`` in float8 with a
    0-d float32 ``scale_weight`` beside it (W = scale_weight x weight), and a ``scale_input`` for float8 matmuls,
    which a weight-only reader ignores. Biases, norms, modulation and the patch embedding stay float16.
  - ComfyUI's per-layer quantization: ``<layer>.comfy_quant``, a uint8 tensor holding the layer's JSON
    (``{"format": "float8_e4m3fn", ...}``), with ``weight_scale`` (and ``input_scale``) beside the weight; or the same
    per-layer JSON in the header's ``__metadata__["_quantization_metadata"]`` (``{"layers": {layer: {...}}}``).
    Float8 formats are read; any other format (nvfp4, mxfp8, int8 ...) is refused naming it.
  - plain float8 files (Ovi's ``model_fp8_e4m3fn.safetensors``): float8 tensors and no scales (scale 1).

A stored weight is W = s Q with Q the float8 tensor and s its float32 scale (0-d: per tensor, [out, 1]: per row).
``dequantize`` forms s Q in float32 and rounds once to the target dtype: in float32 that is exactly ComfyUI's
``weight.to(dtype) * scale_weight``; in bf16 ComfyUI multiplies in bf16 (two roundings), ours rounds once.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.safetensors_io import TensorInfo, iter_tensors, read_header
from wan_train.models.dit.fp8 import FP8, Fp8Linear, dequantize

FLOAT8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
MARKER = "scaled_fp8"  # ComfyUI's legacy marker (empty; its dtype is the float8 type)
LEGACY_SCALES = (".scale_weight", ".scale_input")
LAYER_KEYS = (".comfy_quant", ".weight_scale", ".input_scale", ".weight_scale_2")
HEADER_KEY = "_quantization_metadata"
COMFY_SCALED, COMFY_LAYERS, PLAIN = "ComfyUI fp8 scaled", "ComfyUI per-layer quantization", "float8"


@dataclass(frozen=True)
class Float8Weight:
    data: TensorInfo  # the stored tensor Q: float8 (ComfyUI multiplies any weight that has a scale_weight by it)
    scale: TensorInfo | None  # float32 s, 0-d or [out, 1]; None: s = 1 (plain float8 files)


@dataclass(frozen=True)
class Quantization:
    """How a file's float8 weights are stored: ``weights`` by the weight's name in the entries it came with."""
    scheme: str  # COMFY_SCALED, COMFY_LAYERS or PLAIN
    dtype: torch.dtype  # the float8 type
    weights: dict[str, Float8Weight]

    def describe(self) -> str:
        kinds = Counter("per tensor" if w.scale is not None and len(w.scale.shape) == 0 else
                        "per row" if w.scale is not None else "unscaled" for w in self.weights.values())
        scales = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        return f"{self.scheme} ({str(self.dtype).removeprefix('torch.')}; {len(self.weights)} weights: {scales})"


def split_quantization(entries: dict[str, TensorInfo], metadata: dict[str, str], *, where: Path
                       ) -> tuple[dict[str, TensorInfo], Quantization | None]:
    """(the model's own tensors, how the float8 ones are stored). The marker, scale and ``comfy_quant`` entries are
    taken out of the tensors; a file with no float8 tensor gives (entries, None). Raises CheckpointError for a
    quantization format other than float8, a scale without its weight, or a scale of an unexpected shape."""
    if MARKER in entries:
        return _legacy(entries, where)
    layers = _layer_configs(entries, metadata, where)
    if layers:
        return _per_layer(entries, layers, where)
    stored = {k: Float8Weight(info, None) for k, info in entries.items() if info.dtype in FLOAT8.values()}
    if not stored:
        return entries, None
    dtypes = {w.data.dtype for w in stored.values()}
    if len(dtypes) > 1:
        raise CheckpointError(f"{where}: float8 tensors of two types ({sorted(map(str, dtypes))}) and no "
                              "quantization marker")
    return entries, Quantization(PLAIN, dtypes.pop(), stored)


def _legacy(entries: dict[str, TensorInfo], where: Path) -> tuple[dict[str, TensorInfo], Quantization]:
    dtype = entries[MARKER].dtype
    if dtype not in FLOAT8.values():
        raise CheckpointError(f"{where}: the {MARKER} marker is {dtype}, not a float8 type")
    model = {k: v for k, v in entries.items() if k != MARKER and not k.endswith(LEGACY_SCALES)}
    weights = {}
    for key in (k for k in entries if k.endswith(".scale_weight")):
        name = key.removesuffix(".scale_weight") + ".weight"
        weight = _weight_of(model, name, key, where)
        weights[name] = Float8Weight(weight, _scale(entries[key], weight, where))
    for key in (k for k in entries if k.endswith(".scale_input")):
        _weight_of(model, key.removesuffix(".scale_input") + ".weight", key, where)
    _refuse_unscaled(model, weights, where, "has no scale_weight")
    return model, Quantization(COMFY_SCALED, dtype, weights)


def _per_layer(entries: dict[str, TensorInfo], layers: dict[str, dict], where: Path
               ) -> tuple[dict[str, TensorInfo], Quantization]:
    model = {k: v for k, v in entries.items() if not k.endswith(LAYER_KEYS)}
    weights, dtypes = {}, set()
    for layer, conf in layers.items():
        fmt = conf.get("format") if isinstance(conf, dict) else None
        if fmt not in FLOAT8:
            raise CheckpointError(f"{where}: layer {layer} is quantized as {fmt!r}, which wan_train does not read "
                                  f"(it reads {', '.join(FLOAT8)}); load a float8 or full-precision file")
        weight = _weight_of(model, f"{layer}.weight", f"{layer}.comfy_quant", where)
        if weight.dtype != FLOAT8[fmt]:
            raise CheckpointError(f"{where}: {weight.key} is {weight.dtype}, but its layer says format {fmt}")
        scale = entries.get(f"{layer}.weight_scale")
        weights[f"{layer}.weight"] = Float8Weight(weight, None if scale is None else _scale(scale, weight, where))
        dtypes.add(weight.dtype)
    for key in (k for k in entries if k.endswith(LAYER_KEYS)):
        layer = key.rsplit(".", 1)[0]
        if layer not in layers:
            raise CheckpointError(f"{where}: {entries[key].key} belongs to no quantized layer (no comfy_quant for "
                                  f"{layer})")
    _refuse_unscaled(model, weights, where, "has no comfy_quant entry")
    if len(dtypes) > 1:
        raise CheckpointError(f"{where}: layers in two float8 types ({sorted(map(str, dtypes))}); wan_train reads "
                              "one per file")
    return model, Quantization(COMFY_LAYERS, dtypes.pop(), weights)


def _layer_configs(entries: dict[str, TensorInfo], metadata: dict[str, str], where: Path) -> dict[str, dict]:
    """layer -> its quantization JSON, from ``<layer>.comfy_quant`` tensors or the header's metadata."""
    layers: dict[str, dict] = {}
    if HEADER_KEY in metadata:
        try:
            layers.update(json.loads(metadata[HEADER_KEY])["layers"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{where}: unreadable __metadata__[{HEADER_KEY!r}] ({e!r})") from None
    tags = {k: info for k, info in entries.items() if k.endswith(".comfy_quant")}
    for key, info in tags.items():
        if info.dtype != torch.uint8 or len(info.shape) != 1:
            raise CheckpointError(f"{info.file}: {info.key} is {info.dtype} {list(info.shape)}, not a uint8 JSON")
        try:
            with safe_open(str(info.file), framework="pt") as f:
                layers[key.removesuffix(".comfy_quant")] = json.loads(f.get_tensor(info.key).numpy().tobytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{info.file}: {info.key} holds no JSON ({e})") from None
    return layers


def _weight_of(model: dict[str, TensorInfo], name: str, scale_key: str, where: Path) -> TensorInfo:
    if name not in model:
        raise CheckpointError(f"{where}: {scale_key} has no weight {name} beside it")
    return model[name]


def _scale(scale: TensorInfo, weight: TensorInfo, where: Path) -> TensorInfo:
    rows = weight.shape[0] if weight.shape else 0
    if scale.dtype != torch.float32 or scale.shape not in ((), (1,), (rows, 1)):
        raise CheckpointError(f"{where}: {scale.key} is {scale.dtype} {list(scale.shape)}; expected float32 of shape "
                              f"[] (per tensor) or [{rows}, 1] (per row) for {weight.key} {list(weight.shape)}")
    return scale


def _refuse_unscaled(model: dict[str, TensorInfo], weights: dict[str, Float8Weight], where: Path, why: str) -> None:
    loose = [info.key for k, info in model.items() if info.dtype in FLOAT8.values() and k not in weights]
    if loose:
        raise CheckpointError(f"{where}: float8 tensor {loose[0]} {why} (and {len(loose) - 1} more): its scale "
                              "is unknown")


def read_scales(quantization: Quantization, *, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every stored weight's scale s (float32, 0-d or [out, 1]) by the weight's name; 1 where the file has none."""
    stored = {name: w.scale for name, w in quantization.weights.items() if w.scale is not None}
    scales = {name: s.reshape(()) if s.numel() == 1 else s for name, s in iter_tensors(stored, device=device)}
    one = torch.ones((), dtype=torch.float32, device=device)
    return {name: scales.get(name, one) for name in quantization.weights}


def file_metadata(files: list[Path]) -> dict[str, str]:
    """The ``__metadata__`` of every file, merged (a sharded checkpoint repeats it)."""
    out: dict[str, str] = {}
    for file in files:
        out.update(read_header(file)[1])
    return out


def assign_quantized(model: nn.Module, found: dict[str, TensorInfo], stored: dict[str, Float8Weight],
                     scales: dict[str, torch.Tensor], *, dtype: torch.dtype | None, keep_fp32: set[str],
                     keep_float8: bool, device: torch.device | str) -> None:
    """assign_streamed for a quantized file: each stored weight (by its model name in ``stored``) becomes s Q in
    ``dtype`` (float32 for the ``keep_fp32`` names and when ``dtype`` is None), or, with ``keep_float8``, a block
    linear's float8_e4m3fn Q stays as it is in an Fp8Linear with the file's scale, computing in that dtype; the
    other tensors are cast to ``dtype`` (None: kept as stored)."""
    kept: dict[str, torch.Tensor] = {}
    for name, tensor in iter_tensors(found, device=device):
        target = torch.float32 if name in keep_fp32 or dtype is None else dtype
        if name in stored:
            if keep_float8 and tensor.dtype == FP8 and _is_block_linear(model, name):
                kept[name] = tensor
                continue
            tensor = dequantize(tensor, scales[name], target)
        elif tensor.is_floating_point():  # a fresh copy: nothing stays on the file's memory map
            tensor = tensor.to(tensor.dtype if dtype is None else target, copy=True)
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name), attr, nn.Parameter(tensor))
    for name, q in kept.items():  # after every bias is in place
        module_name = name.removesuffix(".weight")
        parent, _, child = module_name.rpartition(".")
        linear = model.get_submodule(module_name)
        setattr(model.get_submodule(parent), child,
                Fp8Linear(q, scales[name], linear.bias, compute_dtype=dtype or torch.float32))


def _is_block_linear(model: nn.Module, name: str) -> bool:
    module_name, _, attr = name.rpartition(".")
    return attr == "weight" and name.startswith("blocks.") and isinstance(model.get_submodule(module_name), nn.Linear)
