"""Mask strategies: pure functions from (batch, grid, ratio, randomness) to a :class:`Mask`.

Every strategy has the signature ``fn(batch, grid, ratio, *, noise=None, generator=None, device=None)``
and is registered in :data:`MASKS`, so a method picks one by name (``mask.type`` in a config).
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Mask, check_ratio, draw_noise
from .block import block_mask
from .grid import grid_mask
from .parallel import num_parts, parallel_mask
from .random import random_mask
from .uniform import UNIFORM_RATIO, parallel_uniform_mask, uniform_mask

MaskFn = Callable[..., Mask]

MASKS: dict[str, MaskFn] = {
    "random": random_mask,
    "block": block_mask,  # BEiT-style rectangles (MAE Table 1f)
    "grid": grid_mask,  # one patch per 2x2 cell, fixed offset (MAE Table 1f)
    "parallel": parallel_mask,  # EMAE: K disjoint parts per image
    "uniform": uniform_mask,  # UM-MAE: one kept token per 2x2 cell + secondary masking
    "parallel_uniform": parallel_uniform_mask,  # 4 disjoint uniform parts per image
}
PARALLEL_MASKS = {"parallel", "parallel_uniform"}
UNIFORM_MASKS = {"uniform", "parallel_uniform"}  # take ``secondary_ratio``; ratio 0.75 only
CELL_MASKS = {"uniform", "parallel_uniform", "grid"}  # one kept token per 2x2 cell: ratio 0.75, even grid sides


def sequences_per_image(name: str, ratio: float) -> int:
    """Encoder sequences a mask makes of each image: K for parallel masks, 1 for the others."""
    if name == "parallel":
        return num_parts(ratio)
    return 4 if name == "parallel_uniform" else 1  # one per position of each 2x2 cell


def get_mask_fn(name: str) -> MaskFn:
    from ..errors import ConfigError

    if name not in MASKS:
        raise ConfigError(f"mask.type: unknown mask strategy {name!r}; choose one of {sorted(MASKS)}")
    return MASKS[name]


__all__ = ["CELL_MASKS", "block_mask", "grid_mask", "MASKS", "PARALLEL_MASKS", "UNIFORM_MASKS", "UNIFORM_RATIO",
           "parallel_uniform_mask", "uniform_mask", "num_parts", "parallel_mask", "Mask", "MaskFn", "check_ratio",
           "draw_noise", "get_mask_fn", "random_mask", "sequences_per_image"]
