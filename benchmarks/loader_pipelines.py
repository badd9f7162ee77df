"""The input pipelines that ``loader.py --jpegs`` and ``gpu_check.py`` compare, and their timing.

- reference: FB MAE's loader (``main_pretrain.py``): torchvision ImageFolder + PIL + RandomResizedCrop(224,
  scale=(0.2, 1), bicubic) + RandomHorizontalFlip + ToTensor + Normalize, float32 batches;
- emae's pre-training loader (``emae.data.pretrain_loader``) on a folder or on shards, with any overrides
  (``data.resize=torch``, ``data.decode=device``, ...): uint8 batches that ``batch_to_device`` normalises.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from emae.config import IMAGENET_MEAN, IMAGENET_STD, load_config
from emae.data import batch_to_device, image_source, pretrain_loader


def reference_transform(size: int) -> T.Compose:
    """FB MAE's pre-training transform (``main_pretrain.py``)."""
    return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def reference_loader(folder: Path, size: int, batch: int, workers: int) -> DataLoader:
    """FB MAE's pre-training loader. ``folder`` holds one sub-folder of images (ImageFolder's layout)."""
    tf = reference_transform(size)
    return DataLoader(datasets.ImageFolder(str(folder), transform=tf), batch_size=batch, shuffle=True,
                      num_workers=workers, drop_last=True)


def emae_config(path: Path, size: int, batch: int, workers: int, *overrides: str):
    return load_config(None, [f"model.img_size={size}", "model.patch_size=16", f"train.batch_size={batch}",
                              f"data.num_workers={workers}", *overrides], **{"data.path": str(path)})


def emae_loader(cfg) -> DataLoader:
    loader = pretrain_loader(cfg, image_source(cfg, progress=False))
    loader.sampler.set_epoch(0)
    return loader


def rate(loader, skip: int, batches: int | None = None, ready: Callable | None = None) -> float:
    """img/s over the loader's batches after the first ``skip`` (those the workers prepared while the first was
    awaited), up to ``batches``; ``ready(batch)``, when given, makes each batch ready for the step (e.g. decoded on
    the device) inside the timing."""
    it = iter(loader)
    for _ in range(skip):
        batch = next(it)
        if ready is not None:
            ready(batch)
    n, start = 0, time.perf_counter()
    for i, batch in enumerate(it):
        if ready is not None:
            ready(batch)
        n += len(batch[0])
        if batches is not None and i + 1 >= batches:
            break
    return n / (time.perf_counter() - start)


def device_ready(cfg, device: torch.device) -> Callable:
    """The training loop's ``batch_to_device`` (decode, crop, normalise) with a device sync."""
    def ready(batch) -> None:
        imgs, _ = batch_to_device(batch[0], cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return ready


def linked_copies(src: Path, dst: Path, repeats: int) -> Path:
    """``dst/all/`` holding ``repeats`` symbolic links to each JPEG of ``src``: a longer epoch over the same files
    (the page cache holds them) for both pipelines, in ImageFolder's layout (one class)."""
    files = sorted(p for p in Path(src).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"--jpegs: no .jpg files in {src}")
    out = dst / "all"
    out.mkdir(parents=True, exist_ok=True)
    for r in range(repeats):
        for f in files:
            (out / f"{r}-{f.name}").symlink_to(f.resolve())
    return dst


def _write_one(args: tuple[Path, int, int, int]) -> None:
    path, seed, width, height = args
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8))
    big = np.asarray(small.resize((width, height), Image.BICUBIC)).astype(np.int16)
    big = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
    Image.fromarray(big).save(path, quality=90)


def synthetic_jpegs(dst: Path, count: int, width: int, height: int) -> Path:
    """``dst/all/`` with ``count`` photograph-like JPEGs (smooth colour fields with grain, quality 90), written by
    a process pool."""
    out = dst / "all"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out / f"{i:05d}.jpg", i, width, height) for i in range(count)]
    with get_context("fork").Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        pool.map(_write_one, jobs)
    return dst
