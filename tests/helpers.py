"""Helpers for tests: tiny configs that run in well under a second per step on CPU, image fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from emae.config import load_config

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"

TINY = [
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.img_size=16", "model.patch_size=4",
    "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2",
]


def tiny_config(*overrides: str, **flags):
    return load_config(None, [*TINY, *overrides], **flags)


def write_images(folder: Path, n: int, size: int = 20, classes: tuple[str, ...] | None = None, seed: int = 0) -> list[Path]:
    """Random RGB JPEGs, optionally spread over class sub-folders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``, read back with TensorBoard's own reader
    (which drops what a resumed writer purged): {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tb_images(folder: Path) -> dict[str, list[int]]:
    """The steps of every image in the event files under ``folder``: {tag: [step, ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
