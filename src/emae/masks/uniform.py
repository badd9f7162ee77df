"""UM-MAE's uniform masks: one kept token per 2x2 cell, plus secondary masking of a share of the kept ones.

The token grid (gh, gw) must have even sides; cell (a, b) holds tokens (2a+da, 2b+db), da, db in {0, 1}.
``ids_keep`` lists the kept tokens in *compact raster order* (cell (a, b) at index a * gw/2 + b), so the kept
tokens, read in that order, form the dense (gh/2, gw/2) grid a pyramid encoder runs on, and a ViT reads the
same tokens in the same order. The ratio is always 0.75.

- :func:`uniform_mask` (Uniform Sampling): per image, a shuffled pool that holds each of the 4 positions
  equally often (as the reference does; with cells % 4 != 0 the counts differ by at most one, and which positions
  get the extra is random) picks the kept position of every cell. Noise (batch, L): the first L/4 values shuffle
  the pool, the next L/4 pick the secondary-masked cells, the next one the leftover positions, so the same noise
  gives the same mask.
- :func:`parallel_uniform_mask`: in each cell a random permutation of the 4 positions gives one position to each
  of K = 4 parts (EMAE's parallel masks on a uniform grid): every part is a uniform sample, the parts are disjoint
  and cover every token. Noise (batch, L): one value per token, argsorted within each cell. Secondary masking of
  each part is drawn from ``generator`` (not from ``noise``).

Secondary masking (SM) marks exactly ``cells - int(cells * (1 - secondary_ratio))`` kept tokens per sequence (the
reference's count) in ``Mask.secondary``; they stay out of the loss (``Mask.mask`` is 1 only on the tokens Uniform Sampling removed).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Mask, draw_noise

UNIFORM_RATIO = 0.75


def check_cells(grid: tuple[int, int], ratio: float, kind: str = "uniform") -> None:
    """Masks that keep one token per 2x2 cell (uniform, parallel_uniform, grid): ratio 0.75 and even grid sides."""
    if abs(ratio - UNIFORM_RATIO) > 1e-9:
        raise ConfigError(f"mask.ratio: {ratio} is not allowed with {kind} masks; one kept token per 2x2 cell "
                          f"means the ratio is 0.75")
    if grid[0] % 2 or grid[1] % 2:
        raise ConfigError(f"model.img_size: the token grid {grid[0]}x{grid[1]} is not divisible by 2, which {kind} "
                          f"masks need (2x2 cells); use an image size that is a multiple of 2 x model.patch_size")


def check_uniform(grid: tuple[int, int], ratio: float, secondary_ratio: float) -> None:
    check_cells(grid, ratio)
    if not 0.0 <= secondary_ratio < 1.0:
        raise ConfigError(f"mask.secondary_ratio: {secondary_ratio!r} is outside [0, 1)")


def secondary_count(kept: int, ratio: float) -> int:
    """How many of ``kept`` tokens secondary masking hides: the reference keeps int(kept * (1 - ratio)) visible
    (models_mae_swin.py / models_mae_pvt.py ``vis_final_cnt``; models_mae.py ``len_keep``) and hides the rest."""
    return kept - int(kept * (1.0 - ratio))


def cell_tokens(grid: tuple[int, int], device=None) -> torch.Tensor:
    """(cells, 4) token index of each cell's positions (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right),
    cells in compact raster order."""
    gh, gw = grid
    a = torch.arange(gh // 2, device=device).view(-1, 1, 1)
    b = torch.arange(gw // 2, device=device).view(1, -1, 1)
    d = torch.arange(4, device=device).view(1, 1, 4)
    return ((2 * a + d // 2) * gw + 2 * b + d % 2).reshape(-1, 4)


def mask_from_kept(ids_keep: torch.Tensor, length: int, parts: int = 1, secondary: torch.Tensor | None = None) -> Mask:
    """A :class:`Mask` for kept tokens ``ids_keep`` (N, K); the removed ones follow them in ascending order."""
    n = ids_keep.shape[0]
    mask = torch.ones(n, length, device=ids_keep.device)
    mask.scatter_(1, ids_keep, 0.0)
    removed = torch.argsort(mask, dim=1, stable=True)[:, ids_keep.shape[1]:]  # mask==1 entries, ascending
    ids_restore = torch.argsort(torch.cat([ids_keep, removed], dim=1), dim=1)
    return Mask(ids_keep=ids_keep, mask=mask, ids_restore=ids_restore, parts=parts, secondary=secondary)


def secondary_from_noise(noise: torch.Tensor, ratio: float) -> torch.Tensor | None:
    """(N, K) noise -> (N, K) float with exactly :func:`secondary_count` ones per row (the smallest noise values)."""
    count = secondary_count(noise.shape[1], ratio)
    if count == 0:
        return None
    rank = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    return (rank < count).float()


def uniform_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float = UNIFORM_RATIO,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    secondary_ratio: float = 0.25,
) -> Mask:
    """Uniform Sampling + Secondary Masking for ``batch`` images (see the module docstring)."""
    check_uniform(grid, ratio, secondary_ratio)
    length = grid[0] * grid[1]
    cells = length // 4
    noise = draw_noise(batch, length, noise, generator, device)
    # each position equally often; a random offset decides which positions get the cells % 4 left over
    offset = (noise[:, 2 * cells: 2 * cells + 1] * 4).long().clamp(max=3)
    pool = (torch.arange(cells, device=noise.device) + offset) % 4  # (B, cells)
    position = pool.gather(1, torch.argsort(noise[:, :cells], dim=1))  # shuffled pool
    table = cell_tokens(grid, noise.device)
    ids_keep = table[torch.arange(cells, device=noise.device), position]  # (B, cells)
    return mask_from_kept(ids_keep, length, 1, secondary_from_noise(noise[:, cells: 2 * cells], secondary_ratio))


def parallel_uniform_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float = UNIFORM_RATIO,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    secondary_ratio: float = 0.25,
) -> Mask:
    """K = 4 disjoint uniform samples per image, parts of image b at rows 4b ... 4b+3 (see the module docstring)."""
    check_uniform(grid, ratio, secondary_ratio)
    length = grid[0] * grid[1]
    noise = draw_noise(batch, length, noise, generator, device)
    table = cell_tokens(grid, noise.device)  # (cells, 4)
    perm = torch.argsort(noise[:, table], dim=-1)  # (B, cells, 4): part k keeps position perm[..., k]
    ids_keep = torch.gather(table.expand(batch, -1, -1), 2, perm).permute(0, 2, 1).reshape(batch * 4, -1)
    sec_noise = torch.rand(ids_keep.shape, generator=generator, device=noise.device)
    return mask_from_kept(ids_keep, length, 4, secondary_from_noise(sec_noise, secondary_ratio))
