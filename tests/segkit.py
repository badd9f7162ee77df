"""Synthetic segmentation data for tests: images whose every pixel's colour names its class (blocks of class
colours in an asymmetric pattern), written in CamVid's or ADE20K's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
COLOURS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 0, 128), (170, 110, 40)], dtype=np.uint8)


def block_label(h: int, w: int, num_classes: int, block: int = 8, shift: int = 0) -> np.ndarray:
    """(h, w) uint8 class ids in blocks of ``block`` pixels, a pattern with no mirror or translation symmetry."""
    r = np.arange(h)[:, None] // block
    c = np.arange(w)[None, :] // block
    return ((r * r + 3 * c + r * c + shift) % num_classes).astype(np.uint8)


def colour_image(label: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8: each pixel the colour of its class."""
    return COLOURS[label % len(COLOURS)]


def decode_classes(img: np.ndarray) -> np.ndarray:
    """(h, w, 3) colours -> the class whose colour is nearest, per pixel."""
    d = ((img[:, :, None, :].astype(np.int64) - COLOURS[None, None].astype(np.int64)) ** 2).sum(-1)
    return d.argmin(-1)


def write_pairs(image_dir: Path, label_dir: Path, n: int, size: tuple[int, int], num_classes: int,
                void: int | None = None, offset: int = 0, block: int = 8) -> list[str]:
    """``n`` JPEG (quality 100, no chroma subsampling) images + PNG label maps of ``size`` (h, w); ``void``: a label
    value painted in a corner strip (its pixels keep their class colour). Label values are shifted by ``offset``
    (ADE20K: 1)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        label = block_label(*size, num_classes, block, shift=i)
        Image.fromarray(colour_image(label)).save(image_dir / f"img{i:03d}.jpg", quality=100, subsampling=0)
        stored = label.astype(np.int64) + offset
        if void is not None:
            stored[: size[0] // 8, : size[1] // 4] = void
        Image.fromarray(stored.astype(np.uint8)).save(label_dir / f"img{i:03d}.png")
        names.append(f"img{i:03d}")
    return names


def camvid_like(root: Path, n_train: int = 6, n_val: int = 3, size: tuple[int, int] = (32, 48),
                num_classes: int = 11, void: int | None = 11) -> Path:
    for split, n in (("train", n_train), ("val", n_val)):
        write_pairs(root / split / "images", root / split / "labels", n, size, num_classes, void)
    return root


def ade_like(root: Path, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (32, 48),
             num_classes: int = 5) -> Path:
    for split, n in (("training", n_train), ("validation", n_val)):
        write_pairs(root / "images" / split, root / "annotations" / split, n, size, num_classes, void=0, offset=1)
    return root
