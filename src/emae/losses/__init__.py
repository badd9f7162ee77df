"""Losses: pixel reconstruction on removed patches (MAE)."""

from .pixel import PixelReconstructionLoss, masked_mse, pixel_target

__all__ = ["PixelReconstructionLoss", "masked_mse", "pixel_target"]
