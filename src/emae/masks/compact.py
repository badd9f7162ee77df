"""Compaction for uniform masks: the kept tokens as a dense half-resolution grid, and back.

With a uniform mask, kept token ``ids_keep[n, a * wc + b]`` sits in cell (a, b), so reading ``ids_keep`` in order
*is* the compact (gh/2, gw/2) grid. :func:`pack` gathers kept tokens (or image patches) into it,
:func:`unpack` scatters them back to image order (zeros at removed tokens), :func:`true_coords` gives each
compact token its true (row, col) on the full token grid, and :func:`pack_image` turns the kept patches of
images into a half-size image that a pyramid encoder takes as input.
"""

from __future__ import annotations

import torch

from ..patches import patchify, unpatchify
from .base import Mask


def gather_tokens(x: torch.Tensor, ids: torch.Tensor, parts: int = 1) -> torch.Tensor:
    """Pick tokens ``ids`` (N, K) from ``x`` (N // parts, L, D); sequence n reads image n // parts."""
    if parts == 1:
        return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    rows = torch.arange(ids.shape[0], device=ids.device).div(parts, rounding_mode="floor")
    return x[rows.unsqueeze(1), ids]


def compact_grid(grid: tuple[int, int]) -> tuple[int, int]:
    return grid[0] // 2, grid[1] // 2


def pack(x: torch.Tensor, mask: Mask, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens (N // parts or N, L, D) in image order -> (N, gh/2, gw/2, D) compact grid of the kept ones."""
    parts = 1 if x.shape[0] == mask.ids_keep.shape[0] else mask.parts  # per image, or already per sequence
    return gather_tokens(x, mask.ids_keep, parts).unflatten(1, compact_grid(grid))


def unpack(compact: torch.Tensor, mask: Mask, grid: tuple[int, int]) -> torch.Tensor:
    """(N, gh/2, gw/2, D) -> (N, L, D) in image order, zeros at the removed tokens; inverse of :func:`pack`."""
    tokens = compact.flatten(1, 2)
    out = tokens.new_zeros(tokens.shape[0], grid[0] * grid[1], tokens.shape[-1])
    return out.scatter(1, mask.ids_keep.unsqueeze(-1).expand_as(tokens), tokens)


def true_coords(mask: Mask, grid: tuple[int, int]) -> torch.Tensor:
    """(N, gh/2, gw/2, 2) float: the true (row, col) of every compact token on the full token grid."""
    rows = mask.ids_keep.div(grid[1], rounding_mode="floor")
    cols = mask.ids_keep % grid[1]
    return torch.stack([rows, cols], dim=-1).float().unflatten(1, compact_grid(grid))


def pack_image(imgs: torch.Tensor, mask: Mask, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (N, C, H/2, W/2): the kept p x p patches assembled in their cells."""
    grid = (imgs.shape[2] // patch_size, imgs.shape[3] // patch_size)
    kept = gather_tokens(patchify(imgs, patch_size), mask.ids_keep, mask.parts)
    return unpatchify(kept, patch_size, compact_grid(grid), imgs.shape[1])
