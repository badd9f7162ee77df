"""EMAE's parallel mask: one random permutation per image cut into K disjoint visible parts.

With ratio r, K = 1/(1-r) must be whole (0.5 -> 2, 0.75 -> 4, 0.8 -> 5). Part k sees slice k of the
permutation (L // K patches) and has every other patch masked, so the K visible sets are disjoint and each
patch is masked in exactly K-1 parts. When L is not divisible by K, the last L mod K patches of the
permutation are visible in no part (masked in all K) and still enter every part's loss.

Output: ``batch * K`` sequences, the K parts of image b at rows b*K ... b*K + K-1.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Mask, check_ratio, draw_noise, mask_from_shuffle


def num_parts(ratio: float) -> int:
    """K = 1 / (1 - ratio), which must be a whole number >= 2."""
    ratio = check_ratio(ratio)
    k = 1.0 / (1.0 - ratio)
    if abs(k - round(k)) > 1e-6 or round(k) < 2:
        raise ConfigError(
            f"mask.ratio: {ratio} gives K = 1/(1-{ratio}) = {k:.3g} parts, not a whole number >= 2; "
            "use e.g. 0.5, 0.75 or 0.8"
        )
    return int(round(k))


def parallel_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float = 0.75,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Mask:
    k = num_parts(ratio)
    length = grid[0] * grid[1]
    per_part = length // k
    if per_part < 1:
        raise ConfigError(f"mask.ratio: {ratio} splits the {grid[0]}x{grid[1]} grid into {k} parts with no patch each")
    order = torch.argsort(draw_noise(batch, length, noise, generator, device), dim=1)
    # part i: its slice first (rolled to the front), all other patches after it, so they are masked
    parts = torch.stack([order.roll(-i * per_part, dims=1) for i in range(k)], dim=1)
    return mask_from_shuffle(parts.reshape(batch * k, length), per_part, parts=k)
