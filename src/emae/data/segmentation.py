"""Semantic-segmentation data: image / label-map pairs of one split, checked before any work, and a Dataset whose
items are ``(image tensor, label tensor, skipped paths)`` like the classification ones.

The check (:func:`check_pairs`) reads every label map in full (PIL + a histogram of its values, about 1 ms for a
480x360 map) and every image's header: an unreadable file, a label map whose size differs from its image's, or a
label value that is neither a class nor the ignore value is a one-line :class:`~emae.errors.DataError` naming the
file. An image that opens but fails to decode later (truncated) is skipped and reported with the batch, as in
pre-training; ``strict=True`` makes that an error too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .folder import PIL_MODES, describe, load_image, open_image, progress_bar, read_first
from .seg_layouts import SegLayout, pair_files, seg_layout

SPLITS = ("train", "val")


def read_label_map(path: str) -> np.ndarray:
    """A label map as a 2-D integer array (uint8 for 8-bit and palette PNGs); one line for an unreadable file or a
    colour (multi-channel) image."""
    try:
        with open_image(path) as img:
            img.load()
            mode, arr = img.mode, np.asarray(img)
    except Exception as e:  # noqa: BLE001 - any decoder failure means unreadable
        raise DataError(f"unreadable label map {path} ({describe(e)})") from None
    if arr.ndim != 2:
        raise DataError(f"label map {path} is a {mode} image; label maps hold one class id per pixel (8-bit "
                        f"grayscale or palette PNG), not colours")
    return arr


def _bad_value(path: str, raw: int, layout: SegLayout) -> DataError:
    stored = int(layout.lut()[raw]) if 0 <= raw < 256 else raw
    note = f" ({stored} after reduce-zero-label)" if layout.reduce_zero_label else ""
    return DataError(f"label map {path} has value {raw}{note}, outside the {layout.num_classes} classes "
                     f"(0..{layout.num_classes - 1}) and not the ignore value {layout.ignore_index}; "
                     f"give --num-classes / --ignore-index for this data set")


def check_pairs(images: list[str], labels: list[str], layout: SegLayout, progress: bool = True) -> np.ndarray:
    """Check every pair (see the module doc); returns the pixel count of each class and, last, of the ignore
    value, over all label maps (after reduce-zero-label)."""
    lut = layout.lut()
    allowed = layout.valid(lut)
    counts = np.zeros(layout.num_classes + 1, dtype=np.int64)
    with progress_bar(progress, total=len(images), desc="checking label maps", unit=" maps") as bar:
        for image, label in zip(images, labels):
            try:
                with open_image(image) as img:
                    size = img.size
            except Exception as e:  # noqa: BLE001 - any decoder failure means unreadable
                raise DataError(f"unreadable image {image} ({describe(e)})") from None
            arr = read_label_map(label)
            if (arr.shape[1], arr.shape[0]) != size:
                raise DataError(f"label map {label} is {arr.shape[1]}x{arr.shape[0]} but its image {image} is "
                                f"{size[0]}x{size[1]} (width x height)")
            if arr.dtype != np.uint8:
                if arr.min() < 0 or arr.max() > 255:
                    raise _bad_value(label, int(arr.max() if arr.max() > 255 else arr.min()), layout)
                arr = arr.astype(np.uint8)
            hist = np.bincount(arr.ravel(), minlength=256)
            bad = np.flatnonzero((hist > 0) & ~allowed)
            if bad.size:
                raise _bad_value(label, int(bad[0]), layout)
            stored = lut[np.flatnonzero(hist)]
            for v, n in zip(stored, hist[hist > 0]):
                counts[v if v < layout.num_classes else -1] += n
            bar.update(1)
    return counts


class SegmentationFiles:
    """The image / label-map pairs of one split (``train`` or ``val``) of a data set in ``layout``, checked when
    opened. ``fetch(i)`` returns (PIL image, PIL 'L' label map with stored values, skipped image paths)."""

    def __init__(self, root: str | Path, split: str, layout: SegLayout, in_chans: int = 3, strict: bool = False,
                 progress: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: {split!r} is not one of {SPLITS}")
        image_dir, label_dir = layout.split_dirs(Path(root), split)
        self.root = str(image_dir)
        self.split, self.layout, self.strict = split, layout, strict
        self.mode = PIL_MODES[in_chans]
        self.paths, self.label_paths = pair_files(image_dir, label_dir)
        self.pixel_counts = check_pairs(self.paths, self.label_paths, layout, progress)
        self.indices: list[int] | None = None  # set by subset(): positions in the full split

    @property
    def num_classes(self) -> int:
        return self.layout.num_classes

    @property
    def ignore_index(self) -> int:
        return self.layout.ignore_index

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.layout.class_names

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int]) -> SegmentationFiles:
        """The same split restricted to ``indices`` (no new check; ``pixel_counts`` stay the full split's)."""
        sub = object.__new__(SegmentationFiles)
        sub.__dict__.update(self.__dict__)
        sub.paths = [self.paths[i] for i in indices]
        sub.label_paths = [self.label_paths[i] for i in indices]
        sub.indices = [self.indices[i] for i in indices] if self.indices is not None else list(indices)
        return sub

    def read_label(self, index: int) -> np.ndarray:
        """The stored label map (uint8, after reduce-zero-label) of pair ``index``."""
        arr = read_label_map(self.label_paths[index])
        return self.layout.lut()[arr].astype(np.uint8) if self.layout.reduce_zero_label else arr.astype(np.uint8)

    def fetch(self, index: int) -> tuple[Image.Image, Image.Image, list[str]]:
        def read(i: int):
            return load_image(self.paths[i], self.mode), Image.fromarray(self.read_label(i))

        (img, label), _, skipped = read_first(index, len(self.paths), read, self.paths.__getitem__, self.strict)
        return img, label, skipped


def segmentation_splits(root: str | Path, layout: str = "auto", num_classes: int | None = None,
                        ignore_index: int | None = None, class_names: list[str] | None = None, in_chans: int = 3,
                        strict: bool = False, progress: bool = True) -> tuple[SegmentationFiles, SegmentationFiles]:
    """The checked train and val splits of ``root`` (layout detected or given; see :func:`seg_layout`)."""
    lay = seg_layout(root, layout, num_classes, ignore_index, class_names)
    return tuple(SegmentationFiles(root, s, lay, in_chans, strict, progress) for s in SPLITS)


def limit_pairs(source: SegmentationFiles, n: int | None, seed: int = 0) -> SegmentationFiles:
    """At most ``n`` pairs, a seeded random draw kept in file order; all of them when n is None."""
    if n is None or n >= len(source):
        return source
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:n]
    return source.subset(sorted(order.tolist()))


class SegmentationDataset(torch.utils.data.Dataset):
    """A torch Dataset over ``source.fetch``. Items are indices or ``(index, seed)`` pairs (from
    :class:`~emae.data.loader.ResumableSampler`); ``transform(image, label, generator)`` draws its randomness only
    from ``generator``, seeded with the sample's seed, so an item depends on (run seed, epoch, index) alone: the
    same with any worker count and across resumes. Without a seed the generator is None (torch's global RNG)."""

    def __init__(self, source, transform: Callable) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        img, label, skipped = self.source.fetch(index)
        g = None if seed is None else torch.Generator().manual_seed(seed)
        x, y = self.transform(img, label, g)
        return x, y, skipped


def _stack_or_list(items: tuple[torch.Tensor, ...]) -> torch.Tensor | list[torch.Tensor]:
    return torch.stack(items) if all(t.shape == items[0].shape for t in items) else list(items)


def seg_collate(batch) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor], list[str]]:
    """(images (B, C, H, W), labels (B, H, W) int64, skipped paths); images or labels of different sizes (evaluation
    at label resolution on a data set of mixed sizes) come as lists instead."""
    imgs, labels, skipped = zip(*batch)
    return _stack_or_list(imgs), _stack_or_list(labels), [p for s in skipped for p in s]


__all__ = ["SPLITS", "SegmentationDataset", "SegmentationFiles", "check_pairs", "limit_pairs", "read_label_map",
           "seg_collate", "segmentation_splits"]
