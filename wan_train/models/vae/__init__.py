from wan_train.models.vae.config import TINY_VAE_CONFIGS, VAE_CONFIGS, WAN21_VAE, WAN22_VAE, VAEConfig
from wan_train.models.vae.model import WanVAE
from wan_train.models.vae.pixel import PixelSpace
from wan_train.models.vae.tiling import Tiling

__all__ = ["TINY_VAE_CONFIGS", "VAE_CONFIGS", "WAN21_VAE", "WAN22_VAE", "PixelSpace", "Tiling", "VAEConfig", "WanVAE"]
