"""The result type shared by every mask strategy, and helpers for drawing reproducible noise."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Mask:
    """Which patches each sequence keeps.

    Shapes use N sequences (``batch`` for single-part masks, ``batch * parts`` for parallel ones)
    and L patches in image (raster) order.

    - ``ids_keep``    (N, L_keep) long: patch indices fed to the encoder, in encoder order.
    - ``mask``        (N, L) float: 1 for removed patches, 0 for kept, in image order.
    - ``ids_restore`` (N, L) long: inverse permutation; ``gather(shuffled, ids_restore)`` gives image order.
    - ``parts``       how many consecutive sequences belong to one image (1 for MAE).
    - ``secondary``   (N, L_keep) float or None: 1 where a kept token is secondarily masked (UM-MAE's SM: the
      encoder sees a learnable token there; the token stays out of the loss, since ``mask`` is 0 for it).
    """

    ids_keep: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    parts: int = 1
    secondary: torch.Tensor | None = None

    @property
    def num_keep(self) -> int:
        return self.ids_keep.shape[1]


def check_ratio(ratio: float) -> float:
    if not (isinstance(ratio, (int, float)) and 0.0 < float(ratio) < 1.0):
        raise ConfigError(f"mask.ratio: {ratio!r} is outside (0, 1)")
    return float(ratio)


def draw_noise(
    batch: int,
    length: int,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform noise of shape (batch, length): the caller's, or fresh from ``generator``."""
    if noise is not None:
        if tuple(noise.shape) != (batch, length):
            raise ConfigError(f"noise has shape {tuple(noise.shape)}, expected {(batch, length)}")
        return noise
    if generator is not None:
        device = generator.device
    return torch.rand(batch, length, generator=generator, device=device)


def mask_from_shuffle(ids_shuffle: torch.Tensor, num_keep: int, parts: int = 1) -> Mask:
    """Build a :class:`Mask` from a per-sequence permutation whose first ``num_keep`` entries are kept."""
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    # position of each patch in the shuffled order is ids_restore; kept iff that position < num_keep
    mask = (ids_restore >= num_keep).float()
    return Mask(ids_keep=ids_shuffle[:, :num_keep], mask=mask, ids_restore=ids_restore, parts=parts)
