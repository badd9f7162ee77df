"""Helpers for the evaluation and interop tests: tiny labelled folders and checkpoints in every format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import emae
from emae.engine.checkpoint import FORMAT, FORMAT_VERSION

from helpers import tiny_config, write_images

# ViT-Tiny width (so heads are inferable from the named sizes), 2 blocks, 16 px with 4 px patches
SMALL = ["model.arch=vit_tiny", "model.depth=2", "model.img_size=16", "model.patch_size=4",
         "model.decoder_embed_dim=64", "model.decoder_depth=1", "model.decoder_num_heads=2"]


def labelled_data(root: Path, classes=("a", "b"), n_train: int = 12, n_val: int = 6, size: int = 20) -> Path:
    write_images(root / "train", n_train, size, classes, seed=0)
    write_images(root / "val", n_val, size, classes, seed=1)
    return root


def colour_data(root: Path, n_train: int = 16, n_val: int = 8, size: int = 16) -> Path:
    """Trivially separable: class 'red' is reddish noise, class 'blue' bluish noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            name, base = (("red", (220, 30, 30)), ("blue", (30, 30, 220)))[i % 2]
            pix = np.clip(np.array(base) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            (root / split / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pix).save(root / split / name / f"{i:03d}.png")
    return root


def perturbed_model(*overrides: str, seed: int = 0) -> emae.MaskedAutoencoder:
    """A model with non-trivial biases and norms, so a swapped or dropped key cannot hide behind the init."""
    torch.manual_seed(seed)
    model = emae.build_model(emae.load_config(None, list(overrides or SMALL))).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    return model


def save_emae_checkpoint(path: Path, *overrides: str, seed: int = 0) -> Path:
    cfg = tiny_config(*overrides)
    torch.manual_seed(seed)
    model = emae.build_model(cfg)
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "method": cfg.method, "config": cfg.to_dict(),
                "model": model.state_dict()}, path)
    return path
