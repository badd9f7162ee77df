"""Block-wise masking (BEiT; MAE Table 1f): the removed patches come in random rectangles.

Per image, candidate rectangles are drawn as BEiT's ``MaskingGenerator`` draws them: area uniform in
[``min_area``, removed count] (BEiT: at least 16 patches of a 14x14 grid; here the same share of any grid), aspect
ratio log-uniform in [0.3, 1/0.3], a random position (sides clipped to the grid). The rectangles are laid down one
after the other until exactly ``L - int(L * (1 - ratio))`` patches are removed, as MAE needs an exact count: every
patch is ranked by the first rectangle that covers it, inside a rectangle in raster order (so the last one may stop
after a partial row), and the few patches no candidate covers, if any, by ``noise``. Vectorised, no Python loop.

The rectangles come from ``generator``; ``noise`` (batch, L) only orders the uncovered patches.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .base import Mask, check_ratio, draw_noise, mask_from_shuffle

ASPECT = 0.3  # BEiT's min aspect ratio (max is its inverse)
BEIT_SHARE = 16 / 196  # BEiT's min_num_patches on its 14x14 grid


def block_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float = 0.5,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Mask:
    ratio = check_ratio(ratio)
    gh, gw = grid
    length = gh * gw
    num_keep = int(length * (1 - ratio))
    if num_keep < 1:
        raise ConfigError(f"mask.ratio: {ratio} keeps no patch of the {gh}x{gw} grid")
    noise = draw_noise(batch, length, noise, generator, device)
    dev = noise.device
    removed = length - num_keep
    min_area = min(removed, max(1, round(BEIT_SHARE * length)))
    k = 2 * math.ceil(removed / min_area) + 4  # candidates; their union nearly always reaches the count
    u = torch.rand(batch, k, 4, generator=generator, device=dev)
    area = min_area + u[..., 0] * (removed - min_area)
    aspect = torch.exp(math.log(ASPECT) + u[..., 1] * 2 * math.log(1 / ASPECT))
    h = torch.sqrt(area * aspect).round().clamp(1, gh)
    w = torch.sqrt(area / aspect).round().clamp(1, gw)
    top = (u[..., 2] * (gh - h + 1)).floor().clamp(max=gh - h)
    left = (u[..., 3] * (gw - w + 1)).floor().clamp(max=gw - w)
    rows = torch.arange(gh, device=dev).view(1, 1, gh, 1)
    cols = torch.arange(gw, device=dev).view(1, 1, 1, gw)
    cover = ((rows >= top[..., None, None]) & (rows < (top + h)[..., None, None])
             & (cols >= left[..., None, None]) & (cols < (left + w)[..., None, None])).flatten(2)  # (B, k, L)
    index = torch.arange(k, device=dev).view(1, k, 1)
    first = torch.where(cover, index, k).amin(dim=1)  # (B, L): the first rectangle over each patch, k if none
    raster = torch.arange(length, device=dev).float().div(length).expand(batch, -1)
    rank = first.float() + torch.where(first < k, raster, noise)
    order = torch.argsort(rank, dim=1, descending=True)  # kept (covered last or never) first, removed after
    return mask_from_shuffle(order, num_keep)
