"""Label-aware transforms for semantic segmentation: what moves the image moves its label map the same way.

Training (:class:`SegTrainTransform`, mmseg's ``RandomResize`` + ``RandomCrop`` + ``RandomFlip``): the image is fitted
into ``base_size`` keeping its aspect ratio and scaled by a random factor in ``scale``; the image is resized with
``interpolation`` (bilinear by default), the label map with nearest neighbour; a random ``crop_size`` window is cut
(a smaller image is first padded at the bottom and right: the normalised image with 0, the label with the ignore
value); then a horizontal flip with probability 1/2. Every random number comes from the ``generator`` argument, in a
fixed order (scale, crop row, crop column, flip), so a sample is a pure function of its seed.

Evaluation (:class:`SegEvalTransform`): the image resized to ``size`` (or kept) and normalised; the label map kept at
its own resolution, where the metrics are computed (logits are upsampled to it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from ..errors import ConfigError

INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def _interpolation(name: str) -> int:
    if name not in INTERPOLATIONS:
        raise ConfigError(f"interpolation: {name!r} is not one of {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[name]


def normalised(img: Image.Image, mean: list[float], std: list[float]) -> torch.Tensor:
    """(C, H, W) float32, (x / 255 - mean) / std."""
    return TF.normalize(TF.to_tensor(img), mean, std)


def label_tensor(label: Image.Image) -> torch.Tensor:
    """(H, W) int64 class ids."""
    return torch.from_numpy(np.array(label, dtype=np.int64))


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(n: int, g: torch.Generator | None) -> int:
    """Uniform in 0..n (inclusive)."""
    return int(torch.randint(0, n + 1, (), generator=g).item())


@dataclass
class SegTrainTransform:
    crop_size: tuple[int, int]  # (height, width) of the training crops
    mean: list[float]
    std: list[float]
    ignore_index: int
    base_size: tuple[int, int] | None = None  # (height, width) box the image is fitted into; None: its own size
    scale: tuple[float, float] = (0.5, 2.0)  # random factor on the base size
    hflip: bool = True
    interpolation: str = "bilinear"  # of the image; the label map is always nearest

    def __post_init__(self) -> None:
        self.crop_size = tuple(self.crop_size)
        _interpolation(self.interpolation)
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"scale: {list(self.scale)} must be 0 < low <= high")
        if min(self.crop_size) < 1 or (self.base_size is not None and min(self.base_size) < 1):
            raise ConfigError(f"crop_size {list(self.crop_size)} / base_size {self.base_size}: sides must be positive")

    def __call__(self, img: Image.Image, label: Image.Image,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if img.size != label.size:
            raise ValueError(f"image {img.size} and label map {label.size} differ in size")
        w0, h0 = img.size
        factor = _uniform(*self.scale, generator)
        if self.base_size is not None:
            factor *= min(self.base_size[0] / h0, self.base_size[1] / w0)
        size = (max(1, round(w0 * factor)), max(1, round(h0 * factor)))
        x = normalised(img.resize(size, _interpolation(self.interpolation)), self.mean, self.std)
        y = label_tensor(label.resize(size, Image.NEAREST))
        ch, cw = self.crop_size
        pad_h, pad_w = max(ch - y.shape[0], 0), max(cw - y.shape[1], 0)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            y = F.pad(y, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = _randint(y.shape[0] - ch, generator)
        left = _randint(y.shape[1] - cw, generator)
        x, y = x[:, top:top + ch, left:left + cw], y[top:top + ch, left:left + cw]
        if self.hflip and torch.rand((), generator=generator).item() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


@dataclass
class SegEvalTransform:
    mean: list[float]
    std: list[float]
    size: tuple[int, int] | None = None  # (height, width) the image is resized to; None: kept
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        _interpolation(self.interpolation)
        if self.size is not None:
            self.size = tuple(self.size)

    def __call__(self, img: Image.Image, label: Image.Image,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size is not None and img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]), _interpolation(self.interpolation))
        return normalised(img, self.mean, self.std), label_tensor(label)


__all__ = ["INTERPOLATIONS", "SegEvalTransform", "SegTrainTransform", "label_tensor", "normalised"]
