"""Image datasets from disk: an ImageFolder tree (labels from sub-folders) or any flat/nested folder of images.

Unreadable files (truncated, zero-byte, not an image, no permission) are skipped: the sample is replaced by
the next readable one and the skipped path is reported with the batch, so the loop can count it.
``strict=True`` makes them fatal instead.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from PIL import Image
from tqdm import tqdm

from ..errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
MAX_CONSECUTIVE_FAILURES = 64
T = TypeVar("T")
MAX_PIXELS = 4096 * 4096  # larger images are decoded at a reduced size (no real data set is affected)
PROGRESS_DELAY = 2.0  # seconds before a folder scan or a cache fill shows its progress bar


def progress_bar(progress: bool = True, **kwargs) -> tqdm:
    """A progress bar on stderr that shows itself only once the work has taken ``PROGRESS_DELAY`` seconds."""
    return tqdm(disable=not progress, delay=PROGRESS_DELAY, dynamic_ncols=True, **kwargs)


def scan_images(root: str | Path, progress: bool = True) -> tuple[list[str], list[int] | None, list[str] | None]:
    """All image files under ``root`` (sorted). Labels come from the first-level folders when every image lies
    inside one (the ImageFolder layout); otherwise labels and classes are None. A long scan shows a counter."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data.path: {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder")
    paths: list[str] = []
    with progress_bar(progress, desc=f"scanning {root}", unit=" images") as bar:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            found = [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS)]
            paths += found
            bar.update(len(found))
    if not paths:
        raise DataError(f"data.path: no image files ({', '.join(IMG_EXTENSIONS)}) found in {root}")
    rel_parts = [Path(p).relative_to(root).parts for p in paths]
    if all(len(parts) >= 2 for parts in rel_parts):
        classes = sorted({parts[0] for parts in rel_parts})
        index = {c: i for i, c in enumerate(classes)}
        return paths, [index[parts[0]] for parts in rel_parts], classes
    return paths, None, None


def open_image(fp) -> Image.Image:
    """``Image.open`` without PIL's ``DecompressionBombWarning``: images over ``MAX_PIXELS`` are decoded at a
    reduced size anyway, and ones beyond the hard limit raise and are skipped and counted like any bad file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(fp)


def load_image(path: str, mode: str) -> Image.Image:
    """Decode fully (so truncation shows up here) and convert to ``mode``; see :func:`decode_image`. Anything that
    is not a regular file (a dangling link, a pipe) fails here instead of blocking."""
    check_regular(path)
    return decode_image(path, mode)


def check_regular(path: str) -> None:
    """Anything that is not a regular file (a dangling link, a pipe) fails here instead of blocking a reader."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"{path} is not a regular file")


def decode_image(fp, mode: str) -> Image.Image:
    """Decode a path or file object fully and convert to ``mode``.

    Grayscale, palette, RGBA and CMYK go through PIL's conversion (transparent palettes via RGBA), 16-bit
    grayscale is scaled to 8 bits (v / 256, not clipped). Images over ``MAX_PIXELS`` are decoded at a reduced
    size (JPEG: DCT scaling at 1/2..1/8, others: ``reduce``); beyond PIL's decompression-bomb limit (about 179 M
    pixels) opening fails and the file is skipped."""
    with open_image(fp) as img:
        factor = math.ceil(math.sqrt(img.width * img.height / MAX_PIXELS))
        if factor > 1:
            img.draft(None, (img.width // factor, img.height // factor))
        return finish_decode(img, mode)


def finish_decode(img: Image.Image, mode: str) -> Image.Image:
    """Decode an opened image (at the scale a ``draft`` call chose, if any) and convert it as
    :func:`decode_image` describes."""
    img.load()
    if img.width * img.height > MAX_PIXELS:
        img = img.reduce(math.ceil(math.sqrt(img.width * img.height / MAX_PIXELS)))
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == mode else img.convert(mode)  # the same pixels without a copy


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def read_first(index: int, count: int, read: Callable[[int], T], name: Callable[[int], str],
               strict: bool = False) -> tuple[T, int, list[str]]:
    """``read(i)`` of the first readable item from ``index`` on (wrapping around): (result, its index, the names of
    the items skipped before it). ``strict``: the first failure is a :class:`DataError` instead."""
    skipped: list[str] = []
    for attempt in range(MAX_CONSECUTIVE_FAILURES):
        i = (index + attempt) % count
        try:
            return read(i), i, skipped
        except Exception as e:  # noqa: BLE001 - any decoder failure means unreadable
            if strict:
                raise DataError(f"unreadable image {name(i)} ({describe(e)})") from None
            skipped.append(name(i))
    raise DataError(f"{MAX_CONSECUTIVE_FAILURES} consecutive unreadable images from {name(index)} on")


class ImageFiles:
    """Indexable images from disk; ``fetch(i)`` returns (PIL image, label, skipped paths)."""

    def __init__(self, root: str | Path, in_chans: int = 3, strict: bool = False, progress: bool = True) -> None:
        self.root = str(root)
        self.paths, self.labels, self.classes = scan_images(root, progress)
        self.mode = PIL_MODES[in_chans]
        self.strict = strict
        self._check_some_readable()

    def __len__(self) -> int:
        return len(self.paths)

    def _check_some_readable(self) -> None:
        """Fail early, with one line, when no file can be read (e.g. a folder of corrupt images)."""
        first_error = None
        for path in self.paths:
            try:
                load_image(path, self.mode)
                return
            except Exception as e:  # noqa: BLE001 - any decoder failure means unreadable
                if self.strict:
                    raise DataError(f"unreadable image {path} ({describe(e)})") from None
                first_error = first_error or f"{path} ({describe(e)})"
        raise DataError(f"data.path: none of the {len(self.paths)} image files in {self.root} can be read, e.g. {first_error}")

    def read_first(self, index: int, read: Callable[[str], T]) -> tuple[T, int, list[str]]:
        """``read`` of the first readable file from ``index`` on: (result, its index, the paths skipped before it)."""
        return read_first(index, len(self.paths), lambda i: read(self.paths[i]), self.paths.__getitem__, self.strict)

    def fetch(self, index: int) -> tuple[Image.Image, int, list[str]]:
        img, i, skipped = self.read_first(index, lambda path: load_image(path, self.mode))
        return img, (self.labels[i] if self.labels else -1), skipped


class TransformedImages:
    """A torch Dataset over ``source.fetch``; items are ``(index, seed)`` pairs from
    :class:`~emae.data.loader.ResumableSampler`. The transform runs under ``seed``, so a sample's augmentation
    depends only on (run seed, epoch, index): identical with any worker count and across resumes."""

    def __init__(self, source, transform: Callable) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        import torch

        index, seed = item if isinstance(item, tuple) else (item, None)
        img, label, skipped = self.source.fetch(index)
        if seed is None:
            return self.transform(img), label, skipped
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues CUDA seeds (slow)
            return self.transform(img), label, skipped
