"""Typed config schemas, composition of conf/ + recipes/, and validation."""

from wan_train.config.compose import compose_config, compose_generate_config, recipes, register
from wan_train.config.schema import GenerateConfig, TrainConfig
from wan_train.config.validate import ConfigError, validate

__all__ = [
    "ConfigError", "GenerateConfig", "TrainConfig", "compose_config", "compose_generate_config", "recipes", "register",
    "validate",
]
