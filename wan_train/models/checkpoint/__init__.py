from wan_train.models.checkpoint.dit_io import load_dit, save_dit
from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.vae_io import load_vae
from wan_train.models.checkpoint.wan_files import WanFiles, find_wan_files
from wan_train.models.checkpoint.wan_folder import WanComponents, load_wan

__all__ = ["CheckpointError", "WanComponents", "WanFiles", "find_wan_files", "load_dit", "load_vae", "load_wan",
           "save_dit"]
