"""Which DiT parameters a full fine-tune trains: named presets (regular expressions over parameter names), so
a run says `model.trainable=attention` rather than listing modules. LoRA adapters are the lora group's job."""

import re

import torch

# preset -> pattern over WanDiT parameter names (blocks.{i}.self_attn.q.weight, patch_embedding.weight, ...); in a
# twin-tower (audio-video) model, the same in both towers (video_model.blocks..., audio_model.blocks...)
_BLOCKS = r"^((video|audio)_model\.)?blocks\."
TRAINABLE = {
    "all": r".*",
    "blocks": _BLOCKS,  # every transformer block; embeddings and head frozen
    "attention": _BLOCKS + r"\d+\.(self_attn|cross_attn)\.",
    "self_attention": _BLOCKS + r"\d+\.self_attn\.",
    "ffn": _BLOCKS + r"\d+\.ffn\.",
}


def apply_trainable(model: torch.nn.Module, preset: str) -> int:
    """Freeze everything outside the preset; returns the number of trainable parameters."""
    if preset not in TRAINABLE:
        raise ValueError(f"model.trainable={preset!r}: expected one of {list(TRAINABLE)}")
    pattern = re.compile(TRAINABLE[preset])
    count = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(bool(pattern.search(name)))
        count += parameter.numel() if parameter.requires_grad else 0
    return count
