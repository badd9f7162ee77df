"""Grid masking (MAE Table 1f): keep one patch in every 2x2 cell, always the top-left one; ratio 0.75.

The same mask for every image; ``ids_keep`` lists the kept patches in compact raster order, as uniform masks do.
An easy pretext task that MAE reports gives worse representations: an ablation baseline.
"""

from __future__ import annotations

import torch

from .base import Mask, draw_noise
from .uniform import UNIFORM_RATIO, cell_tokens, check_cells, mask_from_kept


def grid_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float = UNIFORM_RATIO,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Mask:
    """The fixed grid mask for ``batch`` images; ``noise`` (checked for shape) and ``generator`` draw nothing."""
    check_cells(grid, ratio, "grid")
    length = grid[0] * grid[1]
    if noise is not None:
        device = draw_noise(batch, length, noise).device
    elif generator is not None:
        device = generator.device
    ids_keep = cell_tokens(grid, device)[:, 0].expand(batch, -1).contiguous()
    return mask_from_kept(ids_keep, length)
