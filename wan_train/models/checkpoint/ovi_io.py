"""``load_ovi_dit`` and ``save_ovi_dit``: Ovi's twin-tower DiT (models/dit/fusion.py) in two layouts.

- official: one flat ``.safetensors`` file whose keys are Ovi's ``FusionModel.state_dict()`` keys, as released
  (``Ovi/model.safetensors``, ``model_960x960.safetensors``, ``model_960x960_10s.safetensors``; ovi_facts.md §1).
  No config travels with it: the widths, depths and channels are read from the tensor shapes; the head count
  from head_dim 128 (every released Wan model's) and the audio RoPE scale is Ovi's 0.19676 (its audio.json).
- wan_train: a folder with ``config.json`` (both towers' configs, rope scale included) and
  ``diffusion_pytorch_model.safetensors`` (sharded above ``max_shard_size``) in our parameter names.

The two namings differ in one place: Ovi wraps each block's modulation table in a module
(``blocks.N.modulation.modulation``), where a Wan DiT has the parameter itself (``blocks.N.modulation``).

Loading checks every name and shape against the architecture before reading any data (one error naming the
missing, unexpected and misshapen keys, in the file's own naming), builds the model on the meta device and
assigns each tensor as it is read.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from torch import nn

from wan_train.fileio.durable import atomic_directory, atomic_path, recover_directory
from wan_train.models.checkpoint.dit_io import save_dit
from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.safetensors_io import (
    TensorInfo, assign_streamed, index_files, shard_files_from_index, write_json, write_sharded,
)
from wan_train.models.checkpoint.state_dict import MAX_LISTED, report
from wan_train.models.dit.config import DiTConfig
from wan_train.models.dit.fusion import OviConfig, OviDiT
from wan_train.models.sizes import OVI_ROPE_SCALE

OFFICIAL, WAN_TRAIN = "official", "wan_train"
LAYOUTS = (OFFICIAL, WAN_TRAIN)
CLASS_NAME = "OviDiT"
WEIGHTS_NAME = "diffusion_pytorch_model"
HEAD_DIM = 128
TOWERS = ("video_model", "audio_model")
_OURS_MODULATION = re.compile(r"((?:video|audio)_model\.blocks\.\d+\.modulation)")
_OFFICIAL_MODULATION = re.compile(r"((?:video|audio)_model\.blocks\.\d+\.modulation)\.modulation")


def to_official(key: str) -> str:
    return _OURS_MODULATION.sub(r"\1.modulation", key) if _OURS_MODULATION.fullmatch(key) else key


def from_official(key: str) -> str:
    m = _OFFICIAL_MODULATION.fullmatch(key)
    return m[1] if m else key


# --------------------------------------------------------------------------------------------------- loading

def load_ovi_dit(path: str | Path, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> OviDiT:
    """Read an Ovi twin-tower DiT: an official ``.safetensors`` file (also the float8 ``model_fp8_e4m3fn``) or a
    wan_train folder (module docstring). dtype: cast floating weights (float32 islands kept,
    OviDiT.fp32_parameter_names; a float8 file without a dtype: bf16, as Ovi computes it); device: where they land.
    ``model.quantization`` names a float8 file."""
    path = Path(path)
    layout, config, found = _index(path)
    with torch.device("meta"):
        model = OviDiT(config)
    _check_match(model, found, layout, path)
    dtype = dtype or _float8_compute(found)
    keep_fp32 = model.fp32_parameter_names() if dtype is not None and dtype.itemsize < 4 else set()
    assign_streamed(model, found, dtype=dtype, keep_fp32=keep_fp32, device=device or "cpu")
    stored = sum(info.dtype in _FLOAT8 for info in found.values())
    model.quantization = f"float8 ({stored} tensors, unscaled) in {path.name}" if stored else None
    return model


_FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _float8_compute(found: dict[str, TensorInfo]) -> torch.dtype | None:
    """Ovi's model_fp8_e4m3fn.safetensors holds plain float8 weights (no scales) that Ovi computes in bf16: read
    without a dtype, they become bf16 (exactly: every float8 value is a bf16 value); other files keep theirs."""
    return torch.bfloat16 if any(info.dtype in _FLOAT8 for info in found.values()) else None


def read_ovi_config(path: str | Path) -> OviConfig:
    """The twin-tower architecture of an Ovi file or a wan_train OviDiT folder, from its header / config.json
    (no weights read)."""
    return _index(Path(path))[1]


def _index(path: Path) -> tuple[str, OviConfig, dict]:
    """(layout, config, our name -> TensorInfo) of an Ovi DiT file or folder."""
    recover_directory(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: expected Ovi's .safetensors file or a wan_train OviDiT folder")
        found = {from_official(k): i for k, i in index_files([path]).items()}
        return OFFICIAL, config_from_shapes({k: i.shape for k, i in found.items()}, source=str(path)), found
    config, files = _read_folder(path)
    return WAN_TRAIN, config, index_files(files)


def _read_folder(folder: Path) -> tuple[OviConfig, list[Path]]:
    config_path = folder / "config.json"
    try:
        d = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no config.json (expected a wan_train OviDiT folder; Ovi's own checkpoint "
                              "is the file Ovi/model.safetensors)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: invalid JSON ({e})") from None
    if d.get("_class_name") != CLASS_NAME:
        raise CheckpointError(f"{config_path}: _class_name={d.get('_class_name')!r}; expected {CLASS_NAME!r}")
    try:
        config = OviConfig(video=_dit_config(d["video"]), audio=_dit_config(d["audio"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: cannot build the twin-tower config ({type(e).__name__}: {e})") from None
    index = folder / f"{WEIGHTS_NAME}.safetensors.index.json"
    if index.is_file():
        return config, shard_files_from_index(index)
    single = folder / f"{WEIGHTS_NAME}.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{folder}: neither {single.name} nor {index.name}")
    return config, [single]


def _dit_config(d: dict) -> DiTConfig:
    return DiTConfig(**{**d, "patch_size": tuple(d["patch_size"])})


def config_from_shapes(shapes: dict[str, tuple[int, ...]], *, source: str) -> OviConfig:
    """The twin-tower architecture of an official file, from its (our-named) tensor shapes."""
    required = [f"{t}.{k}" for t in TOWERS for k in ("text_embedding.0.weight", "time_embedding.0.weight",
                                                     "head.head.weight", "blocks.0.ffn.0.weight")]
    required += ["video_model.patch_embedding.weight", "audio_model.patch_embedding.0.weight"]
    absent = [k for k in required if k not in shapes]
    if absent:
        raise CheckpointError(f"{source}: not an Ovi twin-tower checkpoint: missing {', '.join(absent[:MAX_LISTED])}"
                              + (f" (+{len(absent) - MAX_LISTED} more)" if len(absent) > MAX_LISTED else ""))

    def widths(tower: str, embed: str) -> dict:
        dim, in_dim = shapes[f"{tower}.{embed}"][:2]
        if dim % HEAD_DIM:
            raise CheckpointError(f"{source}: {tower} width {dim} is not a multiple of head_dim {HEAD_DIM}; cannot "
                                  "infer num_heads (save it with save_ovi_dit(layout='wan_train') instead)")
        return dict(dim=dim, in_dim=in_dim, num_heads=dim // HEAD_DIM,
                    ffn_dim=shapes[f"{tower}.blocks.0.ffn.0.weight"][0],
                    num_layers=1 + max(int(k.split(".")[2]) for k in shapes if k.startswith(f"{tower}.blocks.")),
                    text_dim=shapes[f"{tower}.text_embedding.0.weight"][1],
                    freq_dim=shapes[f"{tower}.time_embedding.0.weight"][1])

    video = widths("video_model", "patch_embedding.weight")
    patch = tuple(shapes["video_model.patch_embedding.weight"][2:])
    out_video = shapes["video_model.head.head.weight"][0] // (patch[0] * patch[1] * patch[2])
    try:
        return OviConfig(
            video=DiTConfig(model_type="ti2v" if video["in_dim"] == 48 else "t2v", patch_size=patch,
                            out_dim=out_video, **video),
            audio=DiTConfig(model_type="t2a", patch_size=(1,), out_dim=shapes["audio_model.head.head.weight"][0],
                            rope_scale=OVI_ROPE_SCALE, **widths("audio_model", "patch_embedding.0.weight")))
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _check_match(model: OviDiT, found: dict[str, TensorInfo], layout: str, where: Path) -> None:
    name = to_official if layout == OFFICIAL else (lambda k: k)
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
    cfg = model.ovi_config
    report(f"{where}: the checkpoint does not match the Ovi twin-tower DiT ({layout} layout; video {cfg.video.dim} "
           f"wide, {cfg.video.num_layers} blocks, in/out {cfg.video.in_dim}/{cfg.video.out_dim}; audio in/out "
           f"{cfg.audio.in_dim}/{cfg.audio.out_dim})", {
        "missing keys": [f"{name(n)} {list(s)}" for n, s in expected.items() if n not in found],
        "unexpected keys": [f"{i.key} {list(i.shape)}" for n, i in found.items() if n not in expected],
        "shape mismatches": [f"{i.key}: expected {list(expected[n])}, found {list(i.shape)}"
                             for n, i in found.items() if n in expected and i.shape != expected[n]],
    })


# ---------------------------------------------------------------------------------------------------- saving

def save_ovi_dit(model: OviDiT, path: str | Path, *, layout: str = WAN_TRAIN, max_shard_size: int | str = "10GB",
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """layout "official": one .safetensors file at `path` (Ovi's own names; the RoPE scale is not recorded, as in
    Ovi's files); "wan_train": a folder at `path` with config.json and the weights. Written atomically."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
    state = model.state_dict() if state_dict is None else state_dict
    path = Path(path)
    if layout == OFFICIAL:
        if path.suffix != ".safetensors":
            raise ValueError(f"the official Ovi layout is one .safetensors file; got path {str(path)!r}")
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({to_official(k): v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
                      metadata={"format": "pt"})
        return path
    cfg = model.ovi_config
    with atomic_directory(path) as tmp:
        write_sharded(dict(state), tmp, basename=WEIGHTS_NAME, max_shard_size=max_shard_size)
        write_json(tmp / "config.json", {"_class_name": CLASS_NAME, "video": _config_json(cfg.video),
                                         "audio": _config_json(cfg.audio)})
    return path


def _config_json(cfg: DiTConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def save_model(model: nn.Module, path: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """A trained DiT as a run exports it: a Wan DiT in the official layout (save_dit), a twin-tower model as a
    wan_train OviDiT folder (its config.json records both towers, the RoPE scale included)."""
    if isinstance(model, OviDiT):
        return save_ovi_dit(model, path, layout=WAN_TRAIN, state_dict=state_dict)
    return save_dit(model, path, layout="official", state_dict=state_dict)
