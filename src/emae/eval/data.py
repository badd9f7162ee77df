"""Labelled evaluation data: ImageFolder train / val folders, class-balanced subsets, loaders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import ImageFiles, ShardSet, TransformedImages, collate, open_images
from ..data.subset import limit
from ..data.shards import is_url
from ..errors import ConfigError, DataError


def split_folders(data: str | None = None, train: str | None = None, val: str | None = None) -> tuple[Path, Path]:
    """``--data DIR`` (with ``train/`` and ``val/`` or ``test/``: image folders or shard folders) or ``--train DIR
    --val DIR`` (also shard URLs)."""
    if data and (train or val):
        raise ConfigError("give either --data or --train and --val, not both")
    if data:
        root = Path(data)
        if not root.is_dir():
            raise DataError(f"--data: {root} is not a folder")
        val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if not (root / "train").is_dir() or val_dir is None:
            raise DataError(f"--data: {root} needs train/ and val/ (or test/) sub-folders; or pass --train and --val")
        return root / "train", val_dir
    if train and val:  # URLs of shard folders stay text (a Path would fold their "//")
        return tuple(p if is_url(p) else Path(p) for p in (train, val))
    raise ConfigError("give --data DIR (with train/ and val/ or test/) or both --train DIR and --val DIR")


def labelled_images(root: str | Path, in_chans: int = 3) -> ImageFiles | ShardSet:
    """An ImageFolder tree, or shards written from one; without classes it is an error (evaluation needs labels)."""
    source = open_images(root, in_chans)
    if source.labels is None:
        raise DataError(f"{root} has no class sub-folders; evaluation needs labels, laid out as {root}/<class>/*.jpg")
    return source


def eval_sources(train: Path, val: Path, in_chans: int, max_train: int | None = None, max_val: int | None = None,
                 seed: int = 0):
    """Train and val sources with the same classes, in the same order."""
    for name, n in (("--max-train", max_train), ("--max-val", max_val)):
        if n is not None and n <= 0:
            raise ConfigError(f"{name}: {n} must be positive (leave it out for every image)")
    tr, va = labelled_images(train, in_chans), labelled_images(val, in_chans)
    if tr.classes != va.classes:
        extra = sorted(set(tr.classes) ^ set(va.classes))[:3]
        raise DataError(f"{train} and {val} have different class folders (e.g. {', '.join(extra) or 'order'})")
    return limit(tr, max_train, seed), limit(va, max_val, seed)


def loader(source, transform: Callable, batch_size: int, workers: int = 0, shuffle: bool = False,
           drop_last: bool = False, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TransformedImages(source, transform), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=workers, collate_fn=collate, generator=g, persistent_workers=workers > 0)
