"""Named LoRA target presets of the Wan DiT and the peft `LoraConfig` each builds.

A preset is a regular expression over the official module names (`blocks.N.self_attn.q`, `blocks.N.cross_attn.k_img`,
`blocks.N.ffn.0`, ...), which peft matches with re.fullmatch against every module name; only nn.Linear layers
inside the transformer blocks are ever targeted (embeddings, time projection and head stay as trained).

    attn_qkvo       self- and cross-attention q, k, v, o (and the Wan2.1 I2V image keys k_img, v_img)
    attn_qkvo_ffn   attn_qkvo + both FFN linears (the usual choice of musubi-tuner / DiffSynth for Wan)
    all_linear      every nn.Linear in the blocks (the same set as attn_qkvo_ffn for Wan, named for peers' flags)
    self_attn       self-attention q, k, v, o (motion and layout)
    cross_attn      cross-attention q, k, v, o (+ k_img, v_img): how text (and image) conditioning is read
"""

from __future__ import annotations

import re

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


def target_pattern(preset: str) -> str:
    if preset not in TARGET_PRESETS:
        raise ValueError(f"lora target preset {preset!r} is not known; known: {', '.join(TARGET_PRESETS)}")
    return TARGET_PRESETS[preset]


def targeted_modules(model: nn.Module, preset: str) -> list[str]:
    """The nn.Linear modules of `model` the preset adapts, in model order (what peft will wrap)."""
    pattern = re.compile(target_pattern(preset))
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and pattern.fullmatch(name)]


def lora_config(preset: str, *, rank: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                dora: bool = False) -> LoraConfig:
    """peft's LoraConfig for a preset: scale alpha / rank (alpha / sqrt(rank) with rsLoRA, Kalajdzievski 2023),
    DoRA (Liu et al. 2024) where peft supports it; B initialised to zero, so training starts at the base model."""
    if rank < 1:
        raise ValueError(f"lora rank={rank} must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora dropout={dropout} must be in [0, 1)")
    # "all_linear" names the block linears: peft's own "all-linear" shortcut would also take embeddings and the head
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_pattern(preset),
                      use_rslora=rslora, use_dora=dora, init_lora_weights=True)
