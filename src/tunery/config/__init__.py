"""Typed configuration: schema, loading with overrides, and docs."""

from tunery.config.load import ResolvedConfig, load_config, to_yaml
from tunery.config.schema import TrainConfig

__all__ = ["ResolvedConfig", "TrainConfig", "load_config", "to_yaml"]
