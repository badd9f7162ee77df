"""What every evaluation shares: the results folder, metrics.json, resolution and normalisation, transforms,
frozen features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..archs import resolve_pool
from ..config import EvalDataConfig, RunConfig
from ..data import eval_transform
from ..engine.device import resolve_device
from ..engine.session import default_run_dir
from ..errors import ConfigError, DataError
from ..interop.load import Loaded
from .backbone import frozen_encoder
from .data import loader
from .features import cache_key, cached, checkpoint_identity, extract_features

RESULT_FILES = ("metrics.json", "log.jsonl", "best.pt", "head.pt", "wandb-id.txt", "tb", "config.yaml")


def prepare_run_dir(output: str | None, command: str, overwrite: bool = False, resume: bool = False) -> Path:
    """The results folder, created; results already in it (or in its ``seed-*`` folders) need ``overwrite``
    (``resume``: a training command continues the runs there)."""
    out = Path(output) if output else default_run_dir(command)
    folders = [out, *sorted(p for p in out.glob("seed-*") if p.is_dir())]
    existing = [d / f for d in folders for f in RESULT_FILES if (d / f).exists()]
    existing += [p for d in folders for p in d.glob("checkpoint-*")]
    if resume:
        return out
    if existing and not overwrite:
        raise ConfigError(f"output folder {out} already holds results ({existing[0].relative_to(out)}); "
                          "pass --overwrite" + (" (or --resume auto to continue it)" if command != "knn" else ""))
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def check_full_batch(train_images: int, batch_size: int) -> None:
    """Training that drops the last partial batch needs at least one full batch."""
    if train_images < batch_size:
        raise DataError(f"{train_images} training images give no full batch of {batch_size}; lower --batch-size")


def write_metrics(out: Path, metrics: dict) -> Path:
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path


def image_size(loaded: Loaded, data: EvalDataConfig) -> tuple[int, int]:
    if data.img_size is None:
        return loaded.config.model.image_size
    if data.img_size % loaded.config.model.patch_size:
        raise ConfigError(f"--img-size {data.img_size} is not divisible by the patch size "
                          f"{loaded.config.model.patch_size}")
    return (data.img_size, data.img_size)


def norm_stats(loaded: Loaded, data: EvalDataConfig) -> tuple[list[float], list[float]]:
    mean = data.mean or loaded.config.data.mean
    std = data.std or loaded.config.data.std
    chans = loaded.config.model.in_chans
    if len(mean) != chans or len(std) != chans:
        raise ConfigError(f"--mean / --std need {chans} values (one per input channel)")
    return list(mean), list(std)


def eval_tf(loaded: Loaded, data: EvalDataConfig | None = None):
    data = data or EvalDataConfig()
    size = image_size(loaded, data)
    crop = data.crop_pct if data.crop_pct is not None else (0.875 if min(size) >= 128 else 1.0)
    return eval_transform(size, *norm_stats(loaded, data), crop_ratio=crop)


def frozen_features(loaded: Loaded, train_src, val_src, data: EvalDataConfig, run: RunConfig, pool: str | None,
                    feature_cache: str | None = None, progress: bool = False,
                    memo: dict | None = None) -> dict[str, torch.Tensor]:
    """Eval-transform features and labels of both splits: ``train_feats``, ``train_labels``, ``val_feats``,
    ``val_labels`` (a split given as None is skipped); cached on disk under ``feature_cache``, and in ``memo``
    (a dict, e.g. shared by the seeds of one command) when given."""
    pool = resolve_pool(loaded.config.model.arch, pool)
    device = resolve_device(run.device)
    tf = eval_tf(loaded, data)
    encoder = None
    out = {}
    for name, src in (("train", train_src), ("val", val_src)):
        if src is None:
            continue
        key = cache_key(checkpoint=checkpoint_identity(loaded.path), model=loaded.config.model, data=str(src.root),
                        n=len(src), subset=getattr(src, "indices", None), transform=repr(tf), pool=pool,
                        precision=run.precision)

        def compute(src=src, name=name):
            nonlocal encoder
            encoder = encoder or frozen_encoder(loaded, pool, image_size(loaded, data)).to(device)
            dl = loader(src, tf, run.batch_size, data.num_workers)
            return extract_features(encoder, dl, device, run.precision, progress, desc=f"{name} features")

        out[f"{name}_feats"], out[f"{name}_labels"] = cached(feature_cache, name, key, compute, memo)
    return out
