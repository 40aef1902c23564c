from wan_train.models.dit.config import DiTConfig
from wan_train.models.dit.model import ShotLayout, WanBlock, WanDiT

__all__ = ["DiTConfig", "ShotLayout", "WanBlock", "WanDiT"]
