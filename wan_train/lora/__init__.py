"""LoRA adapters. Now: adapter files (peft / diffusers / kohya / ComfyUI .safetensors) applied to a WanDiT per
inference request, and the named target presets that build peft configs for training. Next: training through
train.py, the adapter registry, blending, merge and format export."""

from wan_train.lora.adapters import LoraModule, LoraWeights, applied, load_lora
from wan_train.lora.targets import TARGET_PRESETS, lora_config, targeted_modules

__all__ = ["TARGET_PRESETS", "LoraModule", "LoraWeights", "applied", "load_lora", "lora_config", "targeted_modules"]
