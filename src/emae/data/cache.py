"""An in-memory cache of decoded images, for small-image data sets whose JPEG decoding would cost more than
the training step needs (CIFAR-10's 50,000 images take about 150 MB decoded)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .folder import progress_bar


class DecodedCache:
    """Wraps an image source (``fetch(i) -> (PIL image, label, skipped paths)``) and decodes every image once, up
    front. ``fetch`` then returns exactly what the source returned, so runs are identical with and without it."""

    def __init__(self, source, progress: bool = True) -> None:
        self.root = getattr(source, "root", "")
        self.paths = getattr(source, "paths", None)
        self.labels = getattr(source, "labels", None)
        self.classes = getattr(source, "classes", None)
        self._items: list[tuple[np.ndarray, str, int, list[str]]] = []
        with progress_bar(progress, total=len(source), desc="decoding images into memory (data.cache)",
                          unit=" images") as bar:
            for i in range(len(source)):
                img, label, skipped = source.fetch(i)
                self._items.append((np.asarray(img), img.mode, label, skipped))
                bar.update(1)

    def __len__(self) -> int:
        return len(self._items)

    def fetch(self, index: int) -> tuple[Image.Image, int, list[str]]:
        pixels, mode, label, skipped = self._items[index]
        return Image.fromarray(pixels, mode), label, list(skipped)
