"""Inference: task conditioning (and, next, the denoising loop shared by validation, generate.py and eval/)."""

from wan_train.inference.conditioning import i2v_condition, i2v_mask

__all__ = ["i2v_condition", "i2v_mask"]
