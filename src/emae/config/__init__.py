"""Configuration: one typed system for every command (:mod:`emae.config.typed`), pre-training's config
(:mod:`emae.config.pretrain`), the loop's settings (:mod:`emae.config.loop`) and the evaluation commands'
(:mod:`emae.config.evaluation`)."""

from __future__ import annotations

from typing import Any

from .dense import SegDataConfig, SegmentConfig, SegmentTrainConfig, SegprobeConfig
from .evaluation import (EvalDataConfig, EvalRunConfig, FinetuneConfig, FinetuneTrainConfig, KnnConfig, KnnOptions,
                         LinprobeConfig, ProbeConfig, ProbeTrainConfig, SourceConfig)
from .loop import LoopConfig, RunConfig
from .checks import METHODS
from .pretrain import (IMAGENET_MEAN, IMAGENET_STD, Config, ConsistencyConfig, DataConfig, MaskConfig, ModelConfig,
                       MonitorConfig, TrainConfig)
from .typed import load, parse_override, resolve_recipe, set_key
from .typed import all_keys as _all_keys


def load_config(config_file: str | None = None, overrides: list[str] | None = None, **flags: Any) -> Config:
    """Pre-training's config: defaults, then the YAML file, then ``flags`` (dotted keys), then ``key=value``
    overrides; validated."""
    return load(Config, config_file, overrides, flags)


def config_from_dict(data: dict, flags: dict | None = None, overrides: list[str] | None = None) -> Config:
    """A saved pre-training config (e.g. from a checkpoint), with optional flags and overrides on top; validated."""
    return load(Config, None, overrides, flags, data=data)


def validate(cfg: Any) -> None:
    cfg.validate()


def all_keys(obj: Any = None) -> list[str]:
    return _all_keys(obj if obj is not None else Config())


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "METHODS", "Config", "ConsistencyConfig", "DataConfig", "EvalDataConfig",
    "EvalRunConfig", "FinetuneConfig", "FinetuneTrainConfig", "KnnConfig", "KnnOptions", "LinprobeConfig",
    "LoopConfig", "MaskConfig", "ModelConfig", "MonitorConfig", "ProbeConfig", "ProbeTrainConfig", "RunConfig",
    "SourceConfig", "TrainConfig", "all_keys", "config_from_dict", "load", "load_config", "parse_override",
    "resolve_recipe", "set_key", "validate", "SegDataConfig", "SegmentConfig", "SegmentTrainConfig",
    "SegprobeConfig",
]
