"""The two on-disk layouts of a Wan DiT: official ``WanModel`` and diffusers ``WanTransformer3DModel``.

Our module names are the official ones, so the official layout is our state_dict as is. diffusers renames
modules without reshaping any tensor (wan_arch.md §1.10); the tables below hold that renaming once, and the
reverse direction is their inverse, so the two can never disagree.
"""

from __future__ import annotations

import math
import re

from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.dit.config import DiTConfig

OFFICIAL, DIFFUSERS = "official", "diffusers"
LAYOUTS = (OFFICIAL, DIFFUSERS)

# official module (or parameter) path -> diffusers path; top level and inside blocks.{i}
_TOP = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.modulation": "scale_shift_table",
    "head.head": "proj_out",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}
_BLOCK = {
    "modulation": "scale_shift_table",
    "norm3": "norm2",  # the affine cross-attention LayerNorm; norm1/norm2 (FFN) have no parameters
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    **{f"{ours}.{a}": f"{theirs}.{b}"
       for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2"))
       for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"),
                    ("norm_k", "norm_k"))},
}
_RENAMES = {OFFICIAL: (_TOP, _BLOCK), DIFFUSERS: ({v: k for k, v in _TOP.items()}, {v: k for k, v in _BLOCK.items()})}
_BLOCK_KEY = re.compile(r"(blocks\.\d+\.)(.+)")


def rename_key(key: str, *, src: str) -> str:
    """A tensor name in layout ``src`` -> the same tensor's name in the other layout (unknown names unchanged)."""
    top, block = _RENAMES[src]
    m = _BLOCK_KEY.fullmatch(key)
    prefix, rest, table = (m[1], m[2], block) if m else ("", key, top)
    if rest in table:
        return prefix + table[rest]
    module, _, param = rest.rpartition(".")
    return f"{prefix}{table[module]}.{param}" if module in table else key


def to_official(key: str, layout: str) -> str:
    return key if layout == OFFICIAL else rename_key(key, src=DIFFUSERS)


def from_official(key: str, layout: str) -> str:
    return key if layout == OFFICIAL else rename_key(key, src=OFFICIAL)


# Tensors some released files carry that no model uses: early diffusers conversions of Wan2.1 I2V wrote an
# ``attn2.norm_added_q`` that WanTransformer3DModel itself skips on load (``_keys_to_ignore_on_load_unexpected``).
_UNUSED = re.compile(r"blocks\.\d+\.attn2\.norm_added_q\.weight")


def is_unused(key: str, layout: str) -> bool:
    return layout == DIFFUSERS and _UNUSED.fullmatch(key) is not None


def detect_layout(keys) -> str | None:
    keys = list(keys)
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys):
        return DIFFUSERS
    if any(k.startswith(("time_embedding.", "text_embedding.")) or ".self_attn." in k for k in keys):
        return OFFICIAL
    return None


# ---------------------------------------------------------------------------------------------- config.json

_OFFICIAL_CLASS, _DIFFUSERS_CLASS = "WanModel", "WanTransformer3DModel"
CONFIG_CLASSES = {_OFFICIAL_CLASS: OFFICIAL, _DIFFUSERS_CLASS: DIFFUSERS}
_OFFICIAL_FIELDS = ("model_type", "text_len", "in_dim", "dim", "ffn_dim", "freq_dim", "out_dim", "num_heads",
                    "num_layers", "eps")
# official fields kept out of config.json (``ignore_for_config``) with the only values released models use
_OFFICIAL_FIXED = {"window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True}
_DIFFUSERS_FIELDS = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                     "text_dim", "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "image_dim",
                     "added_kv_proj_dim", "rope_max_seq_len", "pos_embed_seq_len")
# wan_train's extensions of the architecture: config field -> the embedding whose rows it counts
EXTENSIONS = {"references": "reference_embedding", "shots": "shot_embedding"}
_UNSUPPORTED_HINTS = {"vace_layers": "VACE", "vace_in_dim": "VACE", "vace_in_channels": "VACE"}


def config_to_json(cfg: DiTConfig, layout: str) -> dict:
    if cfg.rope_theta != 10000.0:
        raise ValueError(f"rope_theta={cfg.rope_theta} cannot be written in the {layout} config.json")
    # wan_train's extensions are recorded beside the official fields, only when present
    extensions = {field: getattr(cfg, field) for field in EXTENSIONS if getattr(cfg, field)}
    if layout == OFFICIAL:
        return {"_class_name": _OFFICIAL_CLASS, "_diffusers_version": "0.30.0",
                **{k: getattr(cfg, k) for k in _OFFICIAL_FIELDS}, **extensions}
    return {
        "_class_name": _DIFFUSERS_CLASS, "_diffusers_version": "0.33.0",
        "patch_size": list(cfg.patch_size), "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_dim, "out_channels": cfg.out_dim, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim,
        "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers, "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads", "eps": cfg.eps, "image_dim": cfg.image_dim,
        "added_kv_proj_dim": cfg.dim if cfg.has_image_branch else None, "rope_max_seq_len": cfg.rope_max_len,
        "pos_embed_seq_len": cfg.image_pos_len, **extensions,
    }


def extension_fields(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """wan_train's extensions present in a checkpoint, read from its tensors' shapes (rows of each embedding)."""
    return {field: shapes[tensor][0] if tensor in shapes else 0 for field, tensor in EXTENSIONS.items()}


def config_from_json(d: dict, layout: str, shapes: dict[str, tuple[int, ...]], *, source: str) -> DiTConfig:
    """A DiTConfig from a config.json of either layout. Fields the file does not carry (the official format
    omits patch size, text width and the CLIP branch) are read from the official-named tensor ``shapes``."""
    fields = {k: v for k, v in d.items() if not k.startswith("_")}
    declared = {field: fields.pop(field, 0) for field in EXTENSIONS}
    cfg = _config_fields_from_json(fields, layout, shapes, source=source)
    found = extension_fields(shapes)
    for field, tensor in EXTENSIONS.items():
        if declared[field] != found[field]:
            raise CheckpointError(f"{source}: {field}={declared[field]}, but the weights hold {found[field]} rows "
                                  f"of {tensor}")
    return cfg.replace(**found)


def _config_fields_from_json(fields: dict, layout: str, shapes: dict[str, tuple[int, ...]], *,
                             source: str) -> DiTConfig:
    unsupported = sorted({_UNSUPPORTED_HINTS[k] for k in fields if k in _UNSUPPORTED_HINTS})
    if unsupported:
        raise CheckpointError(f"{source}: {', '.join(unsupported)} checkpoints are not supported by load_dit")
    if layout == OFFICIAL:
        fixed = {k: fields.pop(k) for k in list(fields) if k in _OFFICIAL_FIXED}
        _check_fixed(fixed, _OFFICIAL_FIXED, source)
        text_dim = fields.pop("text_dim", None)
        patch = fields.pop("patch_size", None)
        _check_known(fields, _OFFICIAL_FIELDS, source)
        derived = _shape_fields(shapes)
        if text_dim is not None:
            derived["text_dim"] = text_dim
        if patch is not None:
            derived["patch_size"] = tuple(patch)
        cfg = DiTConfig(**fields, **derived)
        # some repacks write no model_type; the weights say which it is
        return cfg if "model_type" in fields else cfg.replace(model_type=_model_type(cfg))
    _check_known(fields, _DIFFUSERS_FIELDS, source)
    _check_fixed({k: fields[k] for k in ("cross_attn_norm", "qk_norm") if k in fields},
                 {"cross_attn_norm": True, "qk_norm": "rms_norm_across_heads"}, source)
    heads, head_dim = fields["num_attention_heads"], fields["attention_head_dim"]
    image_dim, added_kv = fields.get("image_dim"), fields.get("added_kv_proj_dim")
    if image_dim is not None and added_kv != heads * head_dim:
        raise CheckpointError(f"{source}: added_kv_proj_dim={added_kv} must equal the model width {heads * head_dim} "
                              f"when image_dim is set")
    # defaults: WanTransformer3DModel's own, for fields a diffusers config.json may leave out
    cfg = DiTConfig(
        dim=heads * head_dim, num_heads=heads, ffn_dim=fields["ffn_dim"], num_layers=fields["num_layers"],
        in_dim=fields.get("in_channels", 16), out_dim=fields.get("out_channels") or fields.get("in_channels", 16),
        text_dim=fields.get("text_dim", 4096), freq_dim=fields.get("freq_dim", 256), eps=fields.get("eps", 1e-6),
        patch_size=tuple(fields.get("patch_size", (1, 2, 2))), image_dim=image_dim,
        image_pos_len=fields.get("pos_embed_seq_len"), rope_max_len=fields.get("rope_max_seq_len", 1024),
    )
    return cfg.replace(model_type=_model_type(cfg))


def _check_known(fields: dict, known, source: str) -> None:
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise CheckpointError(f"{source}: unknown config field(s) {unknown}; known fields: {sorted(known)}")


def _check_fixed(fields: dict, allowed: dict, source: str) -> None:
    for k, v in fields.items():
        if (list(v) if isinstance(v, (list, tuple)) else v) != allowed[k]:
            raise CheckpointError(f"{source}: {k}={v!r} is not supported (released Wan models use {allowed[k]!r})")


def _model_type(cfg: DiTConfig) -> str:
    if cfg.image_pos_len is not None:
        return "flf2v"
    if cfg.has_image_branch or cfg.in_dim == 36:
        return "i2v"
    return "ti2v" if cfg.in_dim == 48 else "t2v"


def _shape_fields(shapes: dict[str, tuple[int, ...]]) -> dict:
    """Config fields that the official config.json omits, read from the official-named tensor shapes."""
    out = {"text_dim": shapes["text_embedding.0.weight"][1], "patch_size": tuple(shapes["patch_embedding.weight"][2:])}
    if "img_emb.proj.0.weight" in shapes:
        out["image_dim"] = shapes["img_emb.proj.0.weight"][0]
    if "img_emb.emb_pos" in shapes:
        out["image_pos_len"] = shapes["img_emb.emb_pos"][1]
    return out


def config_from_shapes(shapes: dict[str, tuple[int, ...]], *, source: str, head_dim: int = 128) -> DiTConfig:
    """Infer the architecture of a bare state dict (a single file with no config) from official-named shapes.
    The head count is not visible in any shape: every released Wan model uses head_dim 128."""
    required = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight", "head.head.weight",
                "blocks.0.ffn.0.weight")
    absent = [k for k in required if k not in shapes]
    if absent:
        raise CheckpointError(f"{source}: cannot infer the DiT size: missing {absent} (is this a Wan DiT checkpoint?)")
    dim, in_dim = shapes["patch_embedding.weight"][:2]
    if dim % head_dim:
        raise CheckpointError(f"{source}: width {dim} is not a multiple of head_dim {head_dim}; cannot infer num_heads "
                         f"(save it with a config.json instead)")
    fields = _shape_fields(shapes)
    cfg = DiTConfig(
        dim=dim, in_dim=in_dim, num_heads=dim // head_dim, ffn_dim=shapes["blocks.0.ffn.0.weight"][0],
        num_layers=1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")),
        out_dim=shapes["head.head.weight"][0] // math.prod(fields["patch_size"]),
        freq_dim=shapes["time_embedding.0.weight"][1],
        **extension_fields(shapes), **fields,
    )
    return cfg.replace(model_type=_model_type(cfg))
