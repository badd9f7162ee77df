"""Losses: pixel reconstruction on removed patches (MAE) and self-consistency between parts (EMAE)."""

from .consistency import DISTANCES, SelfConsistencyLoss, self_consistency
from .pixel import PixelReconstructionLoss, masked_patch_loss, pixel_target

__all__ = ["DISTANCES", "PixelReconstructionLoss", "SelfConsistencyLoss", "masked_patch_loss", "pixel_target",
           "self_consistency"]
