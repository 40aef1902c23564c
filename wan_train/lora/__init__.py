"""LoRA adapters: target presets -> peft configs and training-time injection, adapter files of every layout
(peft / diffusers / kohya / ComfyUI / DiffSynth-Studio) applied per request or merged (and unmerged exactly),
base-model identity, format export (and which known loaders read each export), and the per-client registry of
immutable adapter versions (python -m wan_train.lora ...)."""

from wan_train.lora.adapters import LoraModule, LoraWeights, applied, load_lora
from wan_train.lora.consumers import outside_blocks, unreadable_by
from wan_train.lora.formats import FORMATS, read_lora, write_lora
from wan_train.lora.identity import BaseMismatchError, base_identity, check_base
from wan_train.lora.injection import adapter_modules, add_adapter, has_adapter, merge_adapter
from wan_train.lora.merge import Merged, merge, merged
from wan_train.lora.registry import AdapterVersion, Registry, RegistryError
from wan_train.lora.resolve import AdapterFile, resolve_adapter
from wan_train.lora.targets import TARGET_PRESETS, lora_config, targeted_modules

__all__ = [
    "FORMATS", "TARGET_PRESETS", "AdapterFile", "AdapterVersion", "BaseMismatchError", "LoraModule", "LoraWeights",
    "Merged", "Registry", "RegistryError", "adapter_modules", "add_adapter", "applied", "base_identity",
    "check_base", "has_adapter", "load_lora", "lora_config", "merge", "merge_adapter", "merged", "outside_blocks",
    "read_lora", "resolve_adapter", "targeted_modules", "unreadable_by", "write_lora",
]
