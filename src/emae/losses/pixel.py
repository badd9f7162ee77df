"""Pixel losses on removed patches only, against (optionally per-patch normalised) pixels: MAE's L2 (mean squared
error), or SimMIM's L1."""

from __future__ import annotations

import torch
from torch import nn

from ..masks import Mask
from ..patches import patchify
from .consistency import DISTANCES, SelfConsistencyLoss, patch_distance


def pixel_target(imgs: torch.Tensor, patch_size: int, norm_pix: bool, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C); with ``norm_pix`` each patch is (t - mean) / sqrt(unbiased var + eps)."""
    target = patchify(imgs, patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    return target


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """The patch distance (``l2``: mean squared error over the p*p*C values of a patch, MAE's; ``l1``: mean absolute
    error, SimMIM's), averaged over the patches where ``mask`` is 1.

    For K-part masks every part removes the same number of patches, so this is also the mean over parts of
    each part's MAE loss.
    """
    return (patch_distance(pred, target, distance) * mask).sum() / mask.sum()


class PixelReconstructionLoss(nn.Module):
    """Reconstruction on removed patches, plus (optionally, for multi-part masks) EMAE's self-consistency.

    ``forward`` returns named terms; ``"loss"`` is the total that is optimised.
    """

    def __init__(self, patch_size: int, norm_pix: bool = True, consistency: SelfConsistencyLoss | None = None,
                 consistency_weight: float = 1.0, distance: str = "l2") -> None:
        super().__init__()
        assert distance in DISTANCES, distance
        self.distance = distance
        self.patch_size = patch_size
        self.norm_pix = norm_pix
        self.consistency = consistency
        self.consistency_weight = consistency_weight

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        return pixel_target(imgs, self.patch_size, self.norm_pix)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        recon = masked_patch_loss(pred, target, mask.mask, self.distance)
        if self.consistency is None or mask.parts == 1:
            return {"loss": recon}
        cons = self.consistency(pred, mask.mask, mask.parts)
        return {"loss": recon + self.consistency_weight * cons, "recon": recon, "consistency": cons}
