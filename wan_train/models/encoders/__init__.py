"""The frozen conditioning encoders: umT5-XXL for text, the open-clip ViT-H/14 vision tower for Wan2.1 i2v."""

from wan_train.models.encoders.clip import VIT_H_14, ClipVisionConfig, ClipVisionEncoder, load_clip_vision
from wan_train.models.encoders.t5 import (
    UMT5_XXL, WanTextEncoder, clean_prompt, load_text_encoder, load_umt5_encoder, load_umt5_tokenizer,
)

__all__ = [
    "UMT5_XXL", "VIT_H_14", "ClipVisionConfig", "ClipVisionEncoder", "WanTextEncoder", "clean_prompt",
    "load_clip_vision", "load_text_encoder", "load_umt5_encoder", "load_umt5_tokenizer",
]
