"""The CLIP ViT-H/14 image tower that Wan2.1 i2v / flf2v and Wan2.2 Animate condition on (wan_arch.md §3.2).

Legend: B batch, C = 3 colour channels, H/W pixels, L tokens (1 CLS + (image/patch)^2 patches), D width,
N heads, K head dim.

The features are the token states after the first ``num_layers - 1`` blocks (official ``use_31_block=True``):
the last block, ``post_norm`` and ``head`` are never run. They are kept as parameters all the same, so the
module's state dict is exactly the official ``visual.*`` layout and loads strictly; a transformers
``CLIPVisionModel`` has no projection, and then the encoder is built without ``head`` (``out_dim=None``) rather
than with an invented one.

Precision follows the official fp16 model: the residual stream runs in the weights' dtype and every LayerNorm is
computed in float32 and cast back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.safetensors_io import index_files, iter_tensors, shard_files_from_index
from wan_train.models.checkpoint.state_dict import assign_parameters, check_state_dict, read_state_dict
from wan_train.models.dit.layers import attention


@dataclass(frozen=True, kw_only=True)
class ClipVisionConfig:
    image_size: int = 224  # pixels, square
    patch_size: int = 14
    dim: int = 1280
    mlp_dim: int = 5120
    num_heads: int = 16
    num_layers: int = 32
    out_dim: int | None = 1024  # width of the (unused) projection ``head``; None: no head
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.num_heads or self.image_size % self.patch_size:
            raise ValueError(f"ClipVisionConfig: dim={self.dim} must divide by num_heads={self.num_heads} and "
                             f"image_size={self.image_size} by patch_size={self.patch_size}")

    @property
    def num_tokens(self) -> int:
        return 1 + (self.image_size // self.patch_size) ** 2


VIT_H_14 = ClipVisionConfig()


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, 3 * dim)  # output rows: q, then k, then v
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        q_BLNK, k_BLNK, v_BLNK = self.to_qkv(x_BLD).unflatten(-1, (3, self.num_heads, -1)).unbind(2)
        return self.proj(attention(q_BLNK, k_BLNK, v_BLNK))


class Block(nn.Module):
    """Pre-norm: x += attn(norm1(x)); x += mlp(norm2(x)), with an exact (erf) GELU."""

    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = Attention(cfg.dim, cfg.num_heads)
        self.norm2 = LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.dim))

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        x_BLD = x_BLD + self.attn(self.norm1(x_BLD))
        return x_BLD + self.mlp(self.norm2(x_BLD))


class ClipVisionEncoder(nn.Module):
    # OpenAI CLIP pixel statistics, per RGB channel, applied to [0, 1] pixels
    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.patch_embedding = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.randn(1, 1, cfg.dim) / cfg.dim**0.5)
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.num_tokens, cfg.dim) / cfg.dim**0.5)
        self.pre_norm = LayerNorm(cfg.dim, eps=cfg.eps)
        self.transformer = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.post_norm = LayerNorm(cfg.dim, eps=cfg.eps)
        if cfg.out_dim is not None:
            self.head = nn.Parameter(torch.randn(cfg.dim, cfg.out_dim) / cfg.dim**0.5)

    def forward(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, 3, image_size, image_size] -> penultimate-block tokens [B, L, D] (CLS first)."""
        size = self.config.image_size
        if pixels_BCHW.ndim != 4 or tuple(pixels_BCHW.shape[1:]) != (3, size, size):
            raise ValueError(f"pixels have shape {tuple(pixels_BCHW.shape)}; expected [B, 3, {size}, {size}] "
                             "(encode() resizes and normalises images in [-1, 1])")
        x_BDhw = self.patch_embedding(pixels_BCHW.to(self.patch_embedding.weight.dtype))
        x_BLD = x_BDhw.flatten(2).transpose(1, 2)
        x_BLD = torch.cat([self.cls_embedding.expand(x_BLD.shape[0], -1, -1), x_BLD], dim=1) + self.pos_embedding
        x_BLD = self.pre_norm(x_BLD)
        for block in self.transformer[:-1]:
            x_BLD = block(x_BLD)
        return x_BLD

    @torch.no_grad()
    def encode(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], any size -> features [B, L, D] in the weights' dtype, preprocessed as the official
        ``CLIPModel.visual``: bicubic resize straight to image_size (no aspect keeping, no crop, no clamp), to [0, 1],
        CLIP mean/std. The preprocessing runs in float32, the tower in the weights' dtype."""
        if images_BCHW.ndim != 4 or images_BCHW.shape[1] != 3:
            raise ValueError(f"images have shape {tuple(images_BCHW.shape)}; expected [B, 3, H, W] "
                             "(for a video [B, 3, F, H, W], pass a frame: video[:, :, 0])")
        weight = self.patch_embedding.weight
        x = images_BCHW.to(weight.device, torch.float32)
        x = F.interpolate(x, size=(self.config.image_size,) * 2, mode="bicubic", align_corners=False)
        mean, std = (torch.tensor(c, device=weight.device)[:, None, None] for c in (self.MEAN, self.STD))
        return self((x * 0.5 + 0.5 - mean) / std)


# ------------------------------------------------------------------------------------------------ loading

_HEAD_DIM = 80  # open-clip ViT-H/14: 1280 / 16; the .pth records no head count
# transformers CLIPVisionModel names (after "vision_model.") -> official names; q/k/v, the CLS and position
# embeddings and the projection are reshaped in _from_transformers
_RENAMES = (
    ("embeddings.patch_embedding.", "patch_embedding."), ("pre_layrnorm.", "pre_norm."),
    ("post_layernorm.", "post_norm."), ("encoder.layers.", "transformer."), (".layer_norm1.", ".norm1."),
    (".layer_norm2.", ".norm2."), (".self_attn.out_proj.", ".attn.proj."), (".mlp.fc1.", ".mlp.0."),
    (".mlp.fc2.", ".mlp.2."),
)


def load_clip_vision(path: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                     num_heads: int | None = None) -> ClipVisionEncoder:
    """Read the image tower from the official open-clip ``.pth`` (whole XLM-R + ViT-H model; only ``visual.*`` is
    kept, the size is read from the shapes, heads = dim / 80 unless ``num_heads`` is given) or from a transformers
    ``CLIPVisionModel[WithProjection]`` folder (``config.json`` + safetensors, sharded or not).

    dtype: cast floating weights to it (None: as stored). device: where the weights land (default CPU).
    Returns the encoder in eval mode without gradients; missing or unexpected keys raise CheckpointError.
    """
    path = Path(path)
    if path.is_dir():
        if num_heads is not None:
            raise ValueError(f"num_heads={num_heads} given for {path}: its config.json records the head count")
        tensors = _from_transformers(_read_safetensors(path), path)
        config = _config_from_json(path, out_dim=tensors["head"].shape[1] if "head" in tensors else None)
    elif path.is_file():
        tensors = {k.removeprefix("visual."): t for k, t in read_state_dict(path).items() if k.startswith("visual.")}
        config = _config_from_shapes(tensors, path, num_heads=num_heads)
    else:
        raise CheckpointError(f"{path}: not found (expected the official .pth or a transformers folder)")
    with torch.device("meta"):
        model = ClipVisionEncoder(config)
    # keys named as in the file for the .pth (``visual.`` prefix), by their official names for folders
    shown = "" if path.is_dir() else "visual."
    check_state_dict({shown + k: tuple(v.shape) for k, v in model.state_dict().items()},
                     {shown + k: tuple(t.shape) for k, t in tensors.items()}, where=str(path),
                     what=f"a CLIP vision tower {model.config}")
    # always a copy (device given): a tensor left on the .pth memory map would keep the whole XLM-R + ViT file mapped
    assign_parameters(model, tensors, dtype=dtype, device=device or "cpu")
    return model.eval().requires_grad_(False)


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    entries = index_files(shard_files_from_index(index) if index.is_file() else [folder / "model.safetensors"])
    # transformers 4 prefixes the tower with "vision_model." (and a full CLIPModel has a text tower beside it, not
    # read); transformers 5 saves a plain CLIPVisionModel without the prefix
    if any(k.startswith("vision_model.") for k in entries):
        entries = {k: v for k, v in entries.items() if k.startswith("vision_model.") or k == "visual_projection.weight"}
    return dict(iter_tensors(entries))


def _from_transformers(hf: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in hf.items():
        name = key.removeprefix("vision_model.")
        if key == "visual_projection.weight":
            out["head"] = t.t()  # y = x @ head, while the Linear computes x @ W^T
        elif name == "embeddings.class_embedding":
            out["cls_embedding"] = t.reshape(1, 1, -1)
        elif name == "embeddings.position_embedding.weight":
            out["pos_embedding"] = t[None]
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", name):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = t
        elif name != "embeddings.position_ids":  # a buffer that old transformers versions saved
            for a, b in _RENAMES:
                name = name.replace(a, b)
            out[name] = t
    for (i, kind), parts in qkv.items():
        if missing := [f"vision_model.encoder.layers.{i}.self_attn.{c}_proj.{kind}" for c in "qkv" if c not in parts]:
            raise CheckpointError(f"{where}: missing {missing}")
        out[f"transformer.{i}.attn.to_qkv.{kind}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def _config_from_json(folder: Path, *, out_dim: int | None) -> ClipVisionConfig:
    """out_dim comes from the projection tensor: a full CLIPModel's ``vision_config`` keeps a default projection_dim."""
    from transformers import CLIPVisionConfig  # here, not at the top: importing transformers costs about a second

    file = folder / "config.json"
    try:
        hf = CLIPVisionConfig.from_pretrained(folder)  # fills transformers' defaults, e.g. hidden_act "quick_gelu"
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable CLIP vision config ({e})") from e
    if hf.hidden_act != "gelu":
        raise CheckpointError(f"{file}: hidden_act={hf.hidden_act!r}; only 'gelu' (exact, erf) is implemented, the "
                              "activation of the open-clip ViT-H/14 that Wan uses ('quick_gelu' is OpenAI CLIP's)")
    return ClipVisionConfig(image_size=hf.image_size, patch_size=hf.patch_size, dim=hf.hidden_size,
                            mlp_dim=hf.intermediate_size, num_heads=hf.num_attention_heads,
                            num_layers=hf.num_hidden_layers, out_dim=out_dim, eps=hf.layer_norm_eps)


def _config_from_shapes(tensors: dict[str, torch.Tensor], where: Path, *, num_heads: int | None) -> ClipVisionConfig:
    needed = ("cls_embedding", "pos_embedding", "patch_embedding.weight", "transformer.0.mlp.0.weight")
    if missing := [f"visual.{k}" for k in needed if k not in tensors]:
        raise CheckpointError(f"{where}: missing {missing} (not an open-clip checkpoint with a visual tower?)")
    dim, patch = tensors["cls_embedding"].shape[-1], tensors["patch_embedding.weight"].shape[-1]
    side = math.isqrt(tensors["pos_embedding"].shape[1] - 1)  # patches per image side
    if num_heads is None and dim % _HEAD_DIM:
        raise CheckpointError(f"{where}: width {dim} is not a multiple of head dim {_HEAD_DIM}; pass num_heads=")
    return ClipVisionConfig(
        image_size=side * patch, patch_size=patch, dim=dim, mlp_dim=tensors["transformer.0.mlp.0.weight"].shape[0],
        num_heads=dim // _HEAD_DIM if num_heads is None else num_heads, eps=VIT_H_14.eps,
        num_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("transformer.")),
        out_dim=tensors["head"].shape[1] if "head" in tensors else VIT_H_14.out_dim,
    )

