"""Architecture only: the Wan DiT, its named sizes, checkpoint I/O and FLOPs counting."""

from wan_train.models.checkpoint import CheckpointError, load_dit, save_dit
from wan_train.models.dit import DiTConfig, WanBlock, WanDiT
from wan_train.models.dit.flops import DiTFlops, dit_flops
from wan_train.models.sizes import EXPERTS, SIZES, ModelSize, get_size

__all__ = [
    "EXPERTS", "SIZES", "CheckpointError", "DiTConfig", "DiTFlops", "ModelSize", "WanBlock", "WanDiT", "dit_flops",
    "get_size", "load_dit", "save_dit",
]
