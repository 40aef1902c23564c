"""THE denoising loop shared by validation, generate.py and eval/: sampling sigma grids and stateless solvers,
classifier-free guidance, MoE expert switching, task conditioning (t2v / i2v / flf2v / ti2v), official settings
per model, loading checkpoints for inference and writing the videos."""

from wan_train.inference.conditioning import i2v_condition, i2v_mask
from wan_train.inference.loading import Loaded, load
from wan_train.inference.outputs import SavedVideo, save_video
from wan_train.inference.pipeline import Adapter, WanModels, generate
from wan_train.inference.presets import OFFICIAL, OFFICIAL_NEGATIVE_PROMPT, Sampling, fast, official, with_overrides
from wan_train.inference.schedules import sampling_sigmas
from wan_train.inference.solvers import SOLVERS, get_solver

__all__ = [
    "OFFICIAL", "OFFICIAL_NEGATIVE_PROMPT", "SOLVERS", "Adapter", "Loaded", "Sampling", "SavedVideo", "WanModels",
    "fast", "generate", "get_solver", "i2v_condition", "i2v_mask", "load", "official", "sampling_sigmas",
    "save_video", "with_overrides",
]
