"""Named LoRA target presets of the Wan DiT and the peft `LoraConfig` each builds.

A preset is a regular expression over the official module names (`blocks.N.self_attn.q`, `blocks.N.cross_attn.k_img`,
`blocks.N.ffn.0`, ...), which peft matches with re.fullmatch against every module name; only nn.Linear layers
inside the transformer blocks are ever targeted (embeddings, time projection and head stay as trained).

    attn_qkvo       self- and cross-attention q, k, v, o (and the Wan2.1 I2V image keys k_img, v_img)
    attn_qkvo_ffn   attn_qkvo + both FFN linears (the usual choice of musubi-tuner / DiffSynth for Wan)
    all_linear      every nn.Linear in the blocks (the same set as attn_qkvo_ffn for Wan, named for peers' flags)
    self_attn       self-attention q, k, v, o (motion and layout)
    cross_attn      cross-attention q, k, v, o (+ k_img, v_img): how text (and image) conditioning is read

A twin-tower (audio-video) model names its blocks `video_model.blocks.N...` and `audio_model.blocks.N...`: `towers`
says whose blocks the preset adapts, and `fusion` adds the projections that read the other modality
(`cross_attn.k_fusion`, `cross_attn.v_fusion`) in both towers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from peft import LoraConfig
from torch import nn

_BLOCK = r"blocks\.\d+\."
_ATTN = r"(q|k|v|o|k_img|v_img)"
_ATTN_FFN = rf"{_BLOCK}((self_attn|cross_attn)\.{_ATTN}|ffn\.(0|2))"  # every nn.Linear of a Wan block
TARGET_PRESETS: dict[str, str] = {
    "attn_qkvo": rf"{_BLOCK}(self_attn|cross_attn)\.{_ATTN}",
    "attn_qkvo_ffn": _ATTN_FFN,
    "all_linear": _ATTN_FFN,
    "self_attn": rf"{_BLOCK}self_attn\.(q|k|v|o)",
    "cross_attn": rf"{_BLOCK}cross_attn\.{_ATTN}",
}


TOWERS = ("video", "audio")
_FUSION = rf"(video_model|audio_model)\.{_BLOCK}cross_attn\.(k_fusion|v_fusion)"


def target_pattern(preset: str, *, towers: Sequence[str] | None = None, fusion: bool = False) -> str:
    """The preset's pattern; for a twin-tower model (towers given, possibly empty) the preset inside those towers,
    or'ed with the fusion projections when `fusion`."""
    if preset not in TARGET_PRESETS:
        raise ValueError(f"lora target preset {preset!r} is not known; known: {', '.join(TARGET_PRESETS)}")
    if towers is None:
        if fusion:
            raise ValueError("lora fusion=true: only a twin-tower (audio-video) model has fusion projections")
        return TARGET_PRESETS[preset]
    unknown = [t for t in towers if t not in TOWERS]
    if unknown:
        raise ValueError(f"lora towers {unknown} are not known; known: {', '.join(TOWERS)}")
    parts = [rf"({'|'.join(f'{t}_model' for t in towers)})\.({TARGET_PRESETS[preset]})"] if towers else []
    parts += [_FUSION] if fusion else []
    if not parts:
        raise ValueError("lora towers=[] and fusion=false: nothing of the twin-tower model to adapt")
    return "|".join(f"({p})" for p in parts)


def targeted_modules(model: nn.Module, preset: str, *, towers: Sequence[str] | None = None,
                     fusion: bool = False) -> list[str]:
    """The nn.Linear modules of `model` the preset adapts, in model order (what peft will wrap)."""
    pattern = re.compile(target_pattern(preset, towers=towers, fusion=fusion))
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and pattern.fullmatch(name)]


def lora_config(preset: str, *, rank: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                dora: bool = False, towers: Sequence[str] | None = None, fusion: bool = False) -> LoraConfig:
    """peft's LoraConfig for a preset: scale alpha / rank (alpha / sqrt(rank) with rsLoRA, Kalajdzievski 2023),
    DoRA (Liu et al. 2024) where peft supports it; B initialised to zero, so training starts at the base model."""
    if rank < 1:
        raise ValueError(f"lora rank={rank} must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora dropout={dropout} must be in [0, 1)")
    # "all_linear" names the block linears: peft's own "all-linear" shortcut would also take embeddings and the head
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_pattern(preset, towers=towers, fusion=fusion),
                      use_rslora=rslora, use_dora=dora, init_lora_weights=True)
