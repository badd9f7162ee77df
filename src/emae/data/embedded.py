"""The embedded default data set: scikit-learn's 1,797 handwritten digits (real scans, 8x8), upscaled.

It ships inside an installed dependency, so ``emae pretrain`` runs offline with no ``--data``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .folder import PIL_MODES


class EmbeddedDigits:
    root = "<embedded: scikit-learn digits>"

    def __init__(self, size: int = 32, in_chans: int = 3) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
        mode = PIL_MODES[in_chans]
        self.images = [Image.fromarray(p, "L").resize((size, size), Image.BICUBIC).convert(mode) for p in pixels]
        self.labels = [int(t) for t in digits.target]
        self.classes = [str(i) for i in range(10)]
        self.paths = [f"digits/{i:04d}" for i in range(len(self.images))]

    def __len__(self) -> int:
        return len(self.images)

    def fetch(self, index: int) -> tuple[Image.Image, int, list[str]]:
        return self.images[index], self.labels[index], []
