"""Fitting big DiTs on small devices: float8 storage of frozen weights (Fp8Linear, in models/dit/fp8.py since
load_dit builds it from float8 files), block offload to host memory, activation
offload, and how a LoRA run's base is placed (conf/memory/). models never imports this package; the DiT offers
hook points (WanDiT.block_offload, WanDiT.activation_offload) that it fills."""

from wan_train.memory.base import BASE_DTYPES, Placement, float8_shells, place_base
from wan_train.models.dit.fp8 import FP8, Fp8Linear, dequantize, error_bound, quantize
from wan_train.memory.offload import ActivationOffload, BlockOffload
from wan_train.memory.units import GIB, parse_memory

__all__ = ["BASE_DTYPES", "FP8", "GIB", "ActivationOffload", "BlockOffload", "Fp8Linear", "Placement", "dequantize",
           "error_bound", "float8_shells", "parse_memory", "place_base", "quantize"]
