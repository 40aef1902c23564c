"""Typed config schemas, composition of conf/ + recipes/, and validation."""

from wan_train.config.compose import compose_config, recipes, register
from wan_train.config.schema import TrainConfig
from wan_train.config.validate import ConfigError, validate

__all__ = ["ConfigError", "TrainConfig", "compose_config", "recipes", "register", "validate"]
