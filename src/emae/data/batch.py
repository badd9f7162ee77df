"""What the loader's workers send, and how the training process makes it ready: uint8 images (C, H, W), stacked
into shared memory in the worker; :func:`normalize_uint8` gives torchvision's ``ToTensor`` + ``Normalize`` values on
the device, bit for bit."""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info


def stack_samples(samples: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, into shared memory inside a loader worker (as torch's default collate does): the batch
    then crosses to the training process without another copy."""
    first = samples[0]
    if get_worker_info() is None:
        return torch.stack(samples)
    out = first.new_empty((len(samples), *first.shape)).share_memory_()
    return torch.stack(samples, out=out)


def normalize_levels(imgs: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(B, C, H, W) float32 8-bit levels (0..255) -> ``(x / 255 - mean) / std`` in place, in torchvision's order."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=imgs.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=imgs.device).view(1, -1, 1, 1)
    return imgs.div_(255).sub_(m).div_(s)


def normalize_uint8(imgs: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """(B, C, H, W) uint8 -> float32, as ``ToTensor`` then ``Normalize`` compute it image by image (the same ops in
    the same order: float, / 255, - mean, / std), so the values are bit-identical, on any device."""
    return normalize_levels(imgs.to(torch.float32), mean, std)
