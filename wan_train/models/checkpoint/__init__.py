from wan_train.models.checkpoint.dit_io import load_dit, save_dit
from wan_train.models.checkpoint.errors import CheckpointError

__all__ = ["CheckpointError", "load_dit", "save_dit"]
