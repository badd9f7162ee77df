"""MAE's pixel loss: per-patch MSE against (optionally per-patch normalised) pixels, on removed patches only."""

from __future__ import annotations

import torch
from torch import nn

from ..patches import patchify


def pixel_target(imgs: torch.Tensor, patch_size: int, norm_pix: bool, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C); with ``norm_pix`` each patch is (t - mean) / sqrt(unbiased var + eps)."""
    target = patchify(imgs, patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    return target


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the p*p*C values of each patch, then mean over the patches where ``mask`` is 1."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class PixelReconstructionLoss(nn.Module):
    def __init__(self, patch_size: int, norm_pix: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm_pix = norm_pix

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        return pixel_target(imgs, self.patch_size, self.norm_pix)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``pred`` (N, L, P) against ``target`` (N, L, P), averaged over removed patches of all N sequences."""
        return masked_mse(pred, target, mask)
