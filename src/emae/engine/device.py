"""Device choice, autocast and seeding: shared by the training loop and every evaluation protocol."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA device without CUDA is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for ``bf16`` / ``fp16``; nothing for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
