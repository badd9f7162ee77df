"""Frozen features of a whole data set, extracted once (batched, inference mode) and optionally cached on disk.

The cache file name is a hash of everything the features depend on: the checkpoint (path, size, mtime), the
image folder and subset, the transform, the pooling and the precision.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from tqdm import tqdm

from ..engine.atomic import save_atomic
from ..engine.device import autocast


@torch.inference_mode()
def extract_features(encoder: torch.nn.Module, loader, device: torch.device, precision: str = "fp32",
                     progress: bool = False, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 features and (N,) labels, on the CPU, in the loader's order."""
    encoder.eval()
    feats, labels = [], []
    for imgs, y, _ in tqdm(loader, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True, leave=False):
        with autocast(device, precision):
            f = encoder(imgs.to(device, non_blocking=True))
        feats.append(f.float().cpu())
        labels.append(y)
    return torch.cat(feats).clone(), torch.cat(labels).clone()  # clone: ordinary tensors, usable with autograd


def checkpoint_identity(path: str) -> str:
    p = Path(path)
    if p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return path  # e.g. "random:0" (plus the model dims, hashed by the caller)


def cache_key(**parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(cache_dir: str | None, name: str, key: str, compute,
           memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute()`` once; with ``cache_dir`` the result is stored as ``<name>-<key>.pt`` and reused; with ``memo``
    (a dict) it is also kept there, in memory, under ``key``."""
    if memo is not None:
        if key not in memo:
            memo[key] = cached(cache_dir, name, key, compute)
        return memo[key]
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{name}-{key}.pt"
    if path.is_file():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            return d["features"], d["labels"]
        except Exception:  # noqa: BLE001 - a broken cache entry is recomputed
            os.unlink(path)
    feats, labels = compute()
    save_atomic({"features": feats, "labels": labels}, path)
    return feats, labels
