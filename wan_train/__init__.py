"""wan_train: training and fine-tuning for Wan-family video diffusion transformers."""

__version__ = "0.1.0"
