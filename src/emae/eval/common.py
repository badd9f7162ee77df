"""What every evaluation shares: options, the run folder, metrics.json, transforms, frozen features."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler

from ..data import eval_transform
from ..engine.device import resolve_device
from ..engine.tracking import RunLog
from ..errors import ConfigError, DataError
from ..interop.load import Loaded
from .backbone import frozen_encoder, resolve_pool
from .data import loader
from .features import cache_key, cached, checkpoint_identity, extract_features

RUN_FILES = ("metrics.json", "log.jsonl", "best.pt", "head.pt", "wandb-id.txt", "tb")  # tb: TensorBoard events


@dataclass
class EvalOptions:
    batch_size: int = 256
    workers: int = 0  # loader processes; 0 is fastest for small images on few cores
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    seed: int = 0
    img_size: int | None = None  # evaluation resolution; None: the checkpoint's
    mean: list[float] | None = None  # None: the checkpoint's (emae) or ImageNet's
    std: list[float] | None = None
    crop_pct: float | None = None  # eval resize = size / crop_pct, centre crop; None: 0.875 from 128 px up, else 1
    max_train: int | None = None  # class-balanced subsets, for quick runs
    max_val: int | None = None
    pool: str | None = None  # frozen features: cls | avg; None: cls for a ViT, avg for a pyramid (its only one)
    feature_cache: str | None = None  # folder to keep frozen features in (knn and linprobe share them)
    progress: bool = True
    tensorboard: bool = True  # event files in RUN/tb (finetune, linprobe)
    wandb: bool = False  # also log to Weights & Biases (pip install 'emae[wandb]')
    wandb_project: str = "emae"
    wandb_name: str | None = None  # default: the run folder's name

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_run_dir(output: str | None, command: str, overwrite: bool = False) -> Path:
    """The results folder, created; results already in it (or in its ``seed-*`` folders) need ``overwrite``."""
    out = Path(output) if output else Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    folders = [out, *sorted(p for p in out.glob("seed-*") if p.is_dir())]
    existing = [d / f for d in folders for f in RUN_FILES if (d / f).exists()]
    if existing and not overwrite:
        raise ConfigError(f"output folder {out} already holds results ({existing[0].relative_to(out)}); "
                          "pass --overwrite")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_log(out: Path, opts: EvalOptions, config: dict) -> RunLog:
    """``out/log.jsonl`` plus TensorBoard / W&B as the options ask."""
    return RunLog(out, tensorboard=opts.tensorboard, wandb=opts.wandb, wandb_project=opts.wandb_project,
                  wandb_name=opts.wandb_name, config=config)


def check_full_batch(train_images: int, batch_size: int) -> None:
    """Training that drops the last partial batch needs at least one full batch."""
    if train_images < batch_size:
        raise DataError(f"{train_images} training images give no full batch of {batch_size}; lower --batch-size")


def write_metrics(out: Path, metrics: dict) -> Path:
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path


def image_size(loaded: Loaded, opts: EvalOptions) -> tuple[int, int]:
    if opts.img_size is None:
        return loaded.config.model.image_size
    if opts.img_size % loaded.config.model.patch_size:
        raise ConfigError(f"--img-size {opts.img_size} is not divisible by the patch size {loaded.config.model.patch_size}")
    return (opts.img_size, opts.img_size)


def norm_stats(loaded: Loaded, opts: EvalOptions) -> tuple[list[float], list[float]]:
    mean = opts.mean or loaded.config.data.mean
    std = opts.std or loaded.config.data.std
    chans = loaded.config.model.in_chans
    if len(mean) != chans or len(std) != chans:
        raise ConfigError(f"--mean / --std need {chans} values (one per input channel)")
    return list(mean), list(std)


def eval_tf(loaded: Loaded, opts: EvalOptions):
    size = image_size(loaded, opts)
    crop = opts.crop_pct if opts.crop_pct is not None else (0.875 if min(size) >= 128 else 1.0)
    return eval_transform(size, *norm_stats(loaded, opts), crop_ratio=crop)


def warmup_cosine_scheduler(opt: torch.optim.Optimizer, total: int, warmup: int, min_lr: float) -> CosineLRScheduler:
    """timm's cosine schedule per optimiser step: linear warmup from 0, then half-cosine to ``min_lr``."""
    # t_initial >= 2: timm warns that a 1-step cosine has no effect (it would not have either way)
    return CosineLRScheduler(opt, t_initial=max(2, total - warmup), lr_min=min_lr, warmup_t=warmup,
                             warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def with_pool(loaded: Loaded, opts: EvalOptions) -> EvalOptions:
    """``opts`` with the pooling resolved for this encoder (one-line error for a pooling it does not have)."""
    return replace(opts, pool=resolve_pool(loaded, opts.pool))


def frozen_features(loaded: Loaded, train_src, val_src, opts: EvalOptions,
                    memo: dict | None = None) -> dict[str, torch.Tensor]:
    """Eval-transform features and labels of both splits: ``train_feats``, ``train_labels``, ``val_feats``,
    ``val_labels`` (a split given as None is skipped); cached on disk when ``opts.feature_cache`` is set, and in
    ``memo`` (a dict, e.g. shared by the seeds of one command) when given."""
    opts = with_pool(loaded, opts)
    device = resolve_device(opts.device)
    tf = eval_tf(loaded, opts)
    encoder = None
    out = {}
    for name, src in (("train", train_src), ("val", val_src)):
        if src is None:
            continue
        key = cache_key(checkpoint=checkpoint_identity(loaded.path), model=loaded.config.model, data=str(src.root),
                        n=len(src), subset=getattr(src, "indices", None), transform=repr(tf), pool=opts.pool,
                        precision=opts.precision)

        def compute(src=src, name=name):
            nonlocal encoder
            encoder = encoder or frozen_encoder(loaded, opts.pool, image_size(loaded, opts)).to(device)
            dl = loader(src, tf, opts.batch_size, opts.workers)
            return extract_features(encoder, dl, device, opts.precision, opts.progress, desc=f"{name} features")

        out[f"{name}_feats"], out[f"{name}_labels"] = cached(opts.feature_cache, name, key, compute, memo)
    return out
