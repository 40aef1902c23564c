"""``load_dit`` and ``save_dit``: Wan DiT checkpoints in every layout users have.

Readable sources:
  - an official folder: ``config.json`` (``"_class_name": "WanModel"``) + ``diffusion_pytorch_model.safetensors``
    or shards with ``diffusion_pytorch_model.safetensors.index.json``;
  - an official Wan2.2 A14B folder with ``high_noise_model/`` and ``low_noise_model/`` (``expert=`` picks one);
  - a diffusers ``WanTransformer3DModel`` folder, or a pipeline folder (``model_index.json``) whose
    ``transformer/`` is the high-noise expert and ``transformer_2/`` the low-noise one;
  - a single ``.safetensors`` file in either naming, with a ComfyUI ``model.diffusion_model.`` prefix or none;
    the size is read from the tensor shapes;
  - quantized single files: ComfyUI's fp8 "scaled" files and its per-layer float8 quantization, plain float8
    files (models/checkpoint/quantized.py), and GGUF files of Wan DiTs (models/checkpoint/gguf_io.py).

Loading reads every header first and checks all names and shapes before any data is read; the model is built
on the meta device and each tensor is assigned in place as it is read, so a checkpoint is never held twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from wan_train.fileio.durable import atomic_directory, recover_directory
from wan_train.models.checkpoint.dit_layouts import (
    CONFIG_CLASSES, LAYOUTS, config_from_json, config_from_shapes, config_to_json, detect_layout, from_official,
    is_unused, to_official,
)
from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.gguf_io import GGUF_SUFFIX, assign_gguf, read_gguf, unquantized_dtype
from wan_train.models.checkpoint.gguf_io import describe as describe_gguf
from wan_train.models.checkpoint.quantized import (
    assign_quantized, file_metadata, read_scales, split_quantization,
)
from wan_train.models.checkpoint.state_dict import MAX_LISTED, report
from wan_train.models.checkpoint.safetensors_io import (
    TensorInfo, assign_streamed, index_files, shard_files_from_index, write_json, write_sharded,
)
from wan_train.models.dit.config import DiTConfig
from wan_train.models.dit.model import WanDiT
from wan_train.models.sizes import EXPERTS

WEIGHTS_NAME = "diffusion_pytorch_model"
SINGLE_FILE_PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # ComfyUI and other single-file repacks
_OFFICIAL_EXPERT_DIRS = {e: f"{e}_model" for e in EXPERTS}  # high_noise_model/, low_noise_model/
_PIPELINE_EXPERT_DIRS = {"high_noise": "transformer", "low_noise": "transformer_2"}


@dataclass(frozen=True)
class _Source:
    where: Path  # the folder or file, as named in messages
    files: list[Path]
    config_json: dict | None  # None for single files
    gguf: bool = False  # a GGUF file (models/checkpoint/gguf_io.py)


def load_dit(path: str | Path, *, expert: str | None = None, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None, keep_float8: bool = False) -> WanDiT:
    """Read a Wan DiT from any supported layout (see the module docstring).

    dtype: cast floating weights to it (None: keep the stored dtypes; float8 weights then become s Q in float32,
    exactly, and GGUF ones the dtype of the file's unquantized matrices); the parameters the model keeps in float32
    (time embedding, modulation, norms) stay float32 when ``dtype`` is narrower. device: where tensors land
    (default CPU); data is read straight to it.
    keep_float8: the block linears a file stores in float8_e4m3fn stay float8 with the file's own scales
    (``Fp8Linear`` computing in ``dtype``), not dequantized: a frozen base at 1 byte per weight, with no
    re-quantization error. ``model.quantization`` says how the file was stored (None: full precision).
    """
    src = _resolve(Path(path), expert)
    reader = quantization = None
    if src.gguf:
        entries, reader = read_gguf(src.where)
    else:
        entries = _strip_prefix(index_files(src.files))
        entries, quantization = split_quantization(entries, file_metadata(src.files), where=src.where)
    layout = _layout(src, entries)
    found = {to_official(k, layout): info for k, info in entries.items() if not is_unused(k, layout)}
    config = _config(src, layout, {k: info.shape for k, info in found.items()})
    with torch.device("meta"):
        model = WanDiT(config)
    _check_match(model, found, layout, src.where)

    device = device or "cpu"
    if reader is not None:
        dtype = dtype or unquantized_dtype(found)
    keep_fp32 = model.fp32_parameter_names() if dtype is not None and dtype.itemsize < 4 else set()
    if reader is not None:
        assign_gguf(model, found, reader, dtype=dtype, keep_fp32=keep_fp32, device=device)
        model.quantization = f"{describe_gguf(found)} in {src.where.name}"
    elif quantization is not None:
        stored = {to_official(k, layout): w for k, w in quantization.weights.items()}
        assign_quantized(model, found, stored, read_scales(quantization, device=device), dtype=dtype,
                         keep_fp32=keep_fp32, keep_float8=keep_float8, device=device)
        model.quantization = f"{quantization.describe()} in {src.where.name}"
    else:
        assign_streamed(model, found, dtype=dtype, keep_fp32=keep_fp32, device=device)
    return model


def float8_granularity(path: str | Path, *, expert: str | None = None) -> str | None:
    """How a float8 file's weight scales are laid out, from its headers: "tensor" (one per weight: ComfyUI's scaled
    files; unscaled plain float8 files too) or "channel" (one per output row); None for any other file (a GGUF, a
    full-precision one, or a float8_e5m2 one, which load_dit dequantizes)."""
    src = _resolve(Path(path), expert)
    if src.gguf:
        return None
    _, quantization = split_quantization(_strip_prefix(index_files(src.files)), file_metadata(src.files),
                                         where=src.where)
    if quantization is None or quantization.dtype != torch.float8_e4m3fn:
        return None
    rows = [w for w in quantization.weights.values() if w.scale is not None and len(w.scale.shape) == 2]
    return "channel" if rows and len(rows) == len(quantization.weights) else "tensor"


def save_dit(model: WanDiT, path: str | Path, *, layout: str = "official", max_shard_size: int | str = "10GB",
             state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``config.json`` and the weights (sharded above ``max_shard_size``) in the official or diffusers layout:
    the model's own, or ``state_dict`` (e.g. gathered from FSDP shards, or averaged). The folder appears
    atomically and durably, with the umask's permissions; an existing folder at ``path`` stays whole until the
    new one replaces it in one step (wan_train.fileio.durable.atomic_directory)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
    config_json = config_to_json(model.config, layout)
    state = model.state_dict() if state_dict is None else state_dict
    tensors = {from_official(k, layout): v for k, v in state.items()}
    with atomic_directory(path) as tmp:
        write_sharded(tensors, tmp, basename=WEIGHTS_NAME, max_shard_size=max_shard_size)
        write_json(tmp / "config.json", config_json)
    return Path(path)


# ------------------------------------------------------------------------------------------------ resolving


def _resolve(path: Path, expert: str | None) -> _Source:
    if expert is not None and expert not in EXPERTS:
        raise ValueError(f"expert={expert!r}; expected one of {EXPERTS}")
    recover_directory(path)  # a save_dit interrupted mid-replacement (where folders cannot be exchanged)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix not in (".safetensors", GGUF_SUFFIX):
            raise CheckpointError(f"{path}: expected a .safetensors or {GGUF_SUFFIX} file or a checkpoint folder")
        _refuse_expert(path, expert)
        return _Source(path, [path], None, gguf=path.suffix == GGUF_SUFFIX)
    folder = _expert_folder(path, expert)
    config_path = folder / "config.json"
    try:
        config_json = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no config.json (expected an official or diffusers DiT folder, an A14B "
                              f"folder with {'/, '.join(_OFFICIAL_EXPERT_DIRS.values())}/, or a diffusers "
                              f"pipeline folder)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from None
    return _Source(folder, _weight_files(folder), config_json)


def _expert_folder(path: Path, expert: str | None) -> Path:
    for sub in (*_OFFICIAL_EXPERT_DIRS.values(), *_PIPELINE_EXPERT_DIRS.values()):
        recover_directory(path / sub)  # each expert is its own save_dit
    official = {e: path / d for e, d in _OFFICIAL_EXPERT_DIRS.items()}
    if all(p.is_dir() for p in official.values()):
        return official[_require_expert(path, expert)]
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text())
        present = {e: path / d for e, d in _PIPELINE_EXPERT_DIRS.items()
                   if (path / d).is_dir() and (index.get(d) or [None])[0] is not None}
        if "low_noise" in present:
            return present[_require_expert(path, expert)]
        _refuse_expert(path, expert)
        if "high_noise" not in present:
            raise CheckpointError(f"{path}: diffusers pipeline folder without a transformer/ folder")
        return present["high_noise"]
    _refuse_expert(path, expert)
    return path


def _require_expert(path: Path, expert: str | None) -> str:
    if expert is None:
        raise ValueError(f"{path} holds two experts (Wan2.2 A14B); pass expert= one of {EXPERTS}")
    return expert


def _refuse_expert(path: Path, expert: str | None) -> None:
    if expert is not None:
        raise ValueError(f"{path} holds a single DiT, not the two experts of a Wan2.2 A14B model; drop expert=")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / f"{WEIGHTS_NAME}.safetensors.index.json"
    if index.is_file():
        return shard_files_from_index(index)
    single = folder / f"{WEIGHTS_NAME}.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{folder}: neither {single.name} nor {index.name} (found: "
                          f"{sorted(p.name for p in folder.iterdir())})")


def _strip_prefix(entries: dict[str, TensorInfo]) -> dict[str, TensorInfo]:
    for prefix in SINGLE_FILE_PREFIXES:
        if any(k.startswith(prefix) for k in entries):
            return {k.removeprefix(prefix): info for k, info in entries.items()}
    return entries


def _layout(src: _Source, entries: dict[str, TensorInfo]) -> str:
    if src.config_json is not None:
        class_name = src.config_json.get("_class_name")
        if class_name not in CONFIG_CLASSES:
            raise CheckpointError(f"{src.where / 'config.json'}: _class_name={class_name!r}; expected one of "
                                  f"{sorted(CONFIG_CLASSES)}")
        return CONFIG_CLASSES[class_name]
    layout = detect_layout(entries)
    if layout is None:
        raise CheckpointError(f"{src.where}: no Wan DiT tensor names found "
                              f"(first keys: {sorted(entries)[:MAX_LISTED]})")
    return layout


def _config(src: _Source, layout: str, shapes: dict[str, tuple[int, ...]]) -> DiTConfig:
    try:
        if src.config_json is not None:
            return config_from_json(src.config_json, layout, shapes, source=str(src.where / "config.json"))
        return config_from_shapes(shapes, source=str(src.where))
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{src.where}: cannot build a DiT config ({type(e).__name__}: {e})") from None


def _check_match(model: WanDiT, found: dict[str, TensorInfo], layout: str, where: Path) -> None:
    """One error naming every kind of disagreement (first few of each), with expected vs found shapes."""
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    report(f"{where}: the checkpoint does not match the DiT its config describes ({layout} layout, "
           f"{_describe(model.config)})", {
        "missing keys": [f"{from_official(n, layout)} {list(s)}" for n, s in expected.items() if n not in found],
        "unexpected keys": [f"{i.key} {list(i.shape)} in {i.file.name}" for n, i in found.items() if n not in expected],
        "shape mismatches": [f"{i.key} in {i.file.name}: expected {list(expected[n])}, found {list(i.shape)}"
                             for n, i in found.items() if n in expected and i.shape != expected[n]],
    })


def _describe(cfg: DiTConfig) -> str:
    return (f"{cfg.model_type}, dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads, in/out "
            f"{cfg.in_dim}/{cfg.out_dim}" + (f", CLIP {cfg.image_dim}" if cfg.has_image_branch else ""))
