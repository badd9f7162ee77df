"""Transforms: MAE's pre-training augmentation and a deterministic one for pictures and evaluation."""

from __future__ import annotations

from torchvision import transforms as T


def pretrain_transform(
    size: tuple[int, int], scale: tuple[float, float], hflip: bool, mean: list[float], std: list[float]
) -> T.Compose:
    """RandomResizedCrop (bicubic) + horizontal flip, and nothing else (MAE §A.1)."""
    ops = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(size: tuple[int, int], mean: list[float], std: list[float], crop_ratio: float = 1.0) -> T.Compose:
    """Resize the short side to size / crop_ratio, then centre-crop ``size``."""
    short = int(round(min(size) / crop_ratio))
    return T.Compose([
        T.Resize(short, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
