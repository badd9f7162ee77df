"""What the loader's workers send, and how the training process makes a batch ready on the device.

- uint8 images (C, H, W), stacked into shared memory in the worker: :func:`normalize_uint8` gives torchvision's
  ``ToTensor`` + ``Normalize`` values on the device, bit for bit;
- with ``data.resize=device``, :class:`Region` s (the uint8 pixels around each crop box, the box in them, the flip),
  collated into a :class:`CropBatch`: the device resizes the whole batch at once (:mod:`emae.data.resample`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import get_worker_info

from .resample import pad_to_batch, resized_crops


class Region(NamedTuple):
    """One sample for ``data.resize=device``: uint8 pixels (C, h, w) holding the crop box, the box in them (top,
    left, height, width; fractional after DCT scaling) and whether to flip."""

    pixels: torch.Tensor
    box: tuple[float, float, float, float]
    flip: bool


@dataclass
class CropBatch:
    """Regions zero-padded into one (B, C, H, W) uint8 tensor, with their boxes (B, 4) and flips (B,)."""

    pixels: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def pin_memory(self) -> CropBatch:
        return CropBatch(self.pixels.pin_memory(), self.boxes, self.flips)


def _stack_shared(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, into shared memory inside a loader worker (as torch's default collate does): the batch
    then crosses to the training process without another copy."""
    first = tensors[0]
    if get_worker_info() is None:
        return torch.stack(tensors)
    out = first.new_empty((len(tensors), *first.shape)).share_memory_()
    return torch.stack(tensors, out=out)


def stack_samples(samples: list) -> torch.Tensor | CropBatch:
    """A batch of the workers' samples: uint8 tensors stacked, or regions padded into a :class:`CropBatch`."""
    if not isinstance(samples[0], Region):
        return _stack_shared(samples)
    pixels = pad_to_batch([r.pixels for r in samples])
    if get_worker_info() is not None:
        pixels = pixels.share_memory_()
    boxes = torch.tensor([r.box for r in samples], dtype=torch.float64)
    return CropBatch(pixels, boxes, torch.tensor([r.flip for r in samples]))


def normalize_levels(imgs: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(B, C, H, W) float32 8-bit levels (0..255) -> ``(x / 255 - mean) / std`` in place, in torchvision's order."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=imgs.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=imgs.device).view(1, -1, 1, 1)
    return imgs.div_(255).sub_(m).div_(s)


def normalize_uint8(imgs: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float32, as ``ToTensor`` then ``Normalize`` compute it image by image (the same ops in
    the same order: float, / 255, - mean, / std), so the values are bit-identical, on any device."""
    return normalize_levels(imgs.to(torch.float32), mean, std)


def crop_batch_on_device(batch: CropBatch, size: tuple[int, int], mean: list[float], std: list[float],
                         device: torch.device) -> torch.Tensor:
    """A :class:`CropBatch` resized (antialiased bicubic in 8-bit levels, as a uint8 resize), flipped and
    normalised on ``device``."""
    pixels = batch.pixels.to(device, non_blocking=True)
    return normalize_levels(resized_crops(pixels, batch.boxes, size, batch.flips, levels=True), mean, std)
