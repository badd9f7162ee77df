"""MAE's random masking: argsort per-sample uniform noise, keep the first ``int(L * (1 - r))``."""

from __future__ import annotations

import torch

from .base import Mask, check_ratio, draw_noise, mask_from_shuffle


def random_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float = 0.75,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Mask:
    """Per-sample random masking as in MAE (same noise gives the same mask as the official code)."""
    ratio = check_ratio(ratio)
    length = grid[0] * grid[1]
    num_keep = int(length * (1 - ratio))
    if num_keep < 1:
        from ..errors import ConfigError

        raise ConfigError(f"mask.ratio: {ratio} keeps no patch of the {grid[0]}x{grid[1]} grid")
    noise = draw_noise(batch, length, noise, generator, device)
    return mask_from_shuffle(torch.argsort(noise, dim=1), num_keep)
