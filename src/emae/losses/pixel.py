"""Pixel losses on removed patches only, against (optionally per-patch normalised) pixels: MAE's MSE, or SimMIM's L1."""

from __future__ import annotations

import torch
from torch import nn

from ..masks import Mask
from ..patches import patchify
from .consistency import SelfConsistencyLoss


def pixel_target(imgs: torch.Tensor, patch_size: int, norm_pix: bool, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C); with ``norm_pix`` each patch is (t - mean) / sqrt(unbiased var + eps)."""
    target = patchify(imgs, patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    return target


PIXEL_DISTANCES = ("mse", "l1")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, distance: str = "mse") -> torch.Tensor:
    """Mean over the p*p*C values of each patch of the squared (``mse``) or absolute (``l1``) error, then mean over
    the patches where ``mask`` is 1.

    For K-part masks every part removes the same number of patches, so this is also the mean over parts of
    each part's MAE loss.
    """
    diff = pred - target
    per_patch = (diff.pow(2) if distance == "mse" else diff.abs()).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class PixelReconstructionLoss(nn.Module):
    """Reconstruction on removed patches, plus (optionally, for multi-part masks) EMAE's self-consistency.

    ``forward`` returns named terms; ``"loss"`` is the total that is optimised.
    """

    def __init__(self, patch_size: int, norm_pix: bool = True, consistency: SelfConsistencyLoss | None = None,
                 consistency_weight: float = 1.0, distance: str = "mse") -> None:
        super().__init__()
        if distance not in PIXEL_DISTANCES:
            raise ValueError(f"distance {distance!r} is not one of {PIXEL_DISTANCES}")
        self.distance = distance
        self.patch_size = patch_size
        self.norm_pix = norm_pix
        self.consistency = consistency
        self.consistency_weight = consistency_weight

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        return pixel_target(imgs, self.patch_size, self.norm_pix)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        recon = masked_mse(pred, target, mask.mask, self.distance)
        if self.consistency is None or mask.parts == 1:
            return {"loss": recon}
        cons = self.consistency(pred, mask.mask, mask.parts)
        return {"loss": recon + self.consistency_weight * cons, "recon": recon, "consistency": cons}
