from wan_train.models.dit.config import DiTConfig
from wan_train.models.dit.model import WanBlock, WanDiT

__all__ = ["DiTConfig", "WanBlock", "WanDiT"]
