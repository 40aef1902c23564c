"""LoRA adapters. Now: adapter files (peft / diffusers / kohya / ComfyUI .safetensors) applied to a WanDiT per
inference request. Next: target presets -> peft configs for training, the adapter registry, blending, merge and
format export."""

from wan_train.lora.adapters import LoraModule, LoraWeights, applied, load_lora

__all__ = ["LoraModule", "LoraWeights", "applied", "load_lora"]
