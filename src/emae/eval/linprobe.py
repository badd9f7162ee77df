"""Linear probing of a frozen encoder. Two protocols:

- ``logreg`` (the default): features of the un-augmented images (eval transform) are extracted once, then a
  multinomial logistic regression is fitted *to convergence* on the standardised features, its L2 strength chosen
  on a held-out 10% of the training set (``eval/logreg.py``). Minutes on a CPU; deterministic.
- ``mae``: MAE's protocol (§A.2) for paper comparisons: BatchNorm1d(affine=False) + Linear, LARS, linear warmup
  then cosine, every epoch the training images (RandomResizedCrop + flip) go through the frozen encoder (hours on a
  CPU). The headline is the last epoch's accuracy: the best epoch on the validation set is selection on the test
  set, so it is kept in metrics.json only, as ``best_top1_selected_on_val``.

The validation set always uses the eval transform, so its features are extracted once in both protocols.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn

from ..archs import resolve_pool
from ..config import LinprobeConfig
from ..data import pretrain_transform
from ..engine.atomic import save_atomic
from ..engine.device import resolve_device, seed_everything
from ..engine.loop import Loop, StepLoss
from ..engine.tracking import RunLog
from ..errors import DataError
from ..interop.load import Loaded
from .backbone import FrozenEncoder, frozen_encoder
from .common import frozen_features, image_size, norm_stats, write_metrics
from .knn import classification_metrics
from .logreg import C_GRID, LogRegOptions, logistic_probe
from .training import EpochRecords, TrainingRun, shuffled_loader


class LinearHead(nn.Sequential):
    """BatchNorm1d without affine weights (eps 1e-6), then Linear with trunc_normal(std 0.01) weights."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(self[1].weight, std=0.01)
        nn.init.zeros_(self[1].bias)


class LinearProbe(nn.Module):
    """Frozen encoder + trainable head; ``train()`` only ever reaches the head."""

    def __init__(self, encoder: FrozenEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = LinearHead(encoder.dim, num_classes)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(imgs))


def lars(head: nn.Module, lr: float, weight_decay: float = 0.0, momentum: float = 0.9) -> Lars:
    """timm LARS, adapting (trust ratio) only matrices, as MAE's LARS does; biases get plain momentum SGD."""
    params = [p for p in head.parameters() if p.requires_grad]
    return Lars([{"params": [p for p in params if p.ndim > 1], "always_adapt": True},
                 {"params": [p for p in params if p.ndim <= 1]}],
                lr=lr, momentum=momentum, weight_decay=weight_decay)


@torch.no_grad()
def evaluate_head(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, batch: int = 4096) -> dict:
    head.eval()
    return classification_metrics(torch.cat([head(feats[i:i + batch]) for i in range(0, feats.shape[0], batch)]), labels)


def logreg_options(cfg: LinprobeConfig, seed: int) -> LogRegOptions:
    p = cfg.probe
    return LogRegOptions(c_grid=tuple(p.c_grid or C_GRID), holdout=p.holdout, tol=p.tol, max_iter=p.max_iter, seed=seed)


def logreg_probe(loaded: Loaded, train_src, val_src, out: Path, cfg: LinprobeConfig, progress: bool = False) -> dict:
    """The ``logreg`` protocol: cached eval-transform features, logistic regression fitted to convergence.
    Writes ``out/metrics.json``, ``out/log.jsonl`` and the fitted head (with its standardisation) in ``out/head.pt``."""
    t, p = cfg.train, cfg.probe
    pool = resolve_pool(loaded.config.model.arch, p.pool)
    options = logreg_options(cfg, t.seed)
    start = time.perf_counter()
    log = RunLog(out, tensorboard=t.tensorboard, wandb=t.wandb, wandb_project=t.wandb_project,
                 wandb_name=t.wandb_name, config=cfg.to_dict())
    log.write(type="start", command="linprobe", protocol="logreg", train_images=len(train_src),
              val_images=len(val_src), checkpoint=loaded.path, classes=len(train_src.classes), **options.to_dict())
    feats = frozen_features(loaded, train_src, val_src, cfg.data, t, pool, p.feature_cache, progress)
    fit = logistic_probe(feats["train_feats"], feats["train_labels"], feats["val_feats"], feats["val_labels"], options)
    head = fit.pop("head")
    save_atomic({"format": "emae-logreg-head", "version": 1, **head, "class_names": train_src.classes,
                 "pool": pool, "checkpoint": loaded.path, "C": fit["C"]}, out / "head.pt")
    metrics = {
        "command": "linprobe", "protocol": "logreg", "checkpoint": loaded.path, "source": loaded.source,
        "train": str(train_src.root), "val": str(val_src.root), "classes": len(train_src.classes), "pool": pool,
        **fit, "seconds": round(time.perf_counter() - start, 1), "options": cfg.to_dict(),
    }
    write_metrics(out, metrics)
    log.write(type="end", **{k: metrics[k] for k in ("top1", "top5", "C", "iterations", "converged")})
    log.close()
    return metrics


class HeadEvalHook(EpochRecords):
    """After every epoch: the head on the cached validation features."""

    def __init__(self, head: nn.Module, val_feats: torch.Tensor, val_labels: torch.Tensor) -> None:
        super().__init__()
        self.head, self.val_feats, self.val_labels = head, val_feats, val_labels

    def record(self, loop: Loop) -> dict:
        result = evaluate_head(self.head, self.val_feats, self.val_labels)
        self.head.train()
        if self.best is None or result["top1"] > self.best["val_top1"]:
            self.best = {"epoch": loop.pos.epoch, **{f"val_{k}": v for k, v in result.items()}}
        return {f"val_{k}": v for k, v in result.items()}

    def summary(self) -> dict:
        final = self.history[-1]
        return dict(top1=final["val_top1"], top5=final["val_top5"], best_top1_selected_on_val=self.best["val_top1"],
                    best_epoch=self.best["epoch"])


def linear_probe(loaded: Loaded, train_src, val_src, out: Path, cfg: LinprobeConfig, resume: Path | None = None,
                 progress: bool = True) -> dict:
    """The ``mae`` protocol: train the head on augmented images through the frozen encoder, on the one training
    loop; per-epoch records in ``out/log.jsonl``, the last head in ``out/head.pt``, and metrics (the last epoch's,
    see the module doc). ``resume``: a run checkpoint in ``out`` to continue."""
    t, p, d = cfg.train, cfg.probe, cfg.data
    pool = resolve_pool(loaded.config.model.arch, p.pool)
    device = resolve_device(t.device)
    seed_everything(t.seed)
    classes = train_src.classes
    start = time.perf_counter()

    tf = pretrain_transform(image_size(loaded, d), (0.08, 1.0), True, *norm_stats(loaded, d))
    train_loader = shuffled_loader(train_src, tf, t.batch_size, d.num_workers, t.seed)
    if train_loader.sampler.batches_per_epoch == 0:
        raise DataError(f"{len(train_src)} training images give no full batch of {t.batch_size}; lower --batch-size")
    feats = frozen_features(loaded, None, val_src, d, t, pool, p.feature_cache, progress)
    val_f, val_y = feats["val_feats"].to(device), feats["val_labels"].to(device)
    encoder = frozen_encoder(loaded, pool, image_size(loaded, d)).to(device)
    model = LinearProbe(encoder, len(classes)).to(device)
    run = TrainingRun(out, cfg.to_dict(), t, device, {"command": "linprobe", "config": cfg.to_dict()}, resume,
                      progress)
    run.load_weights(model)
    lr = t.lr or t.base_lr * t.batch_size * t.accum_iter / 256
    opt = lars(model.head, lr, t.weight_decay, t.momentum)
    evaluation = HeadEvalHook(model.head, val_f, val_y)

    def to_device(batch):
        imgs, y, _ = batch
        return imgs.to(device), y.to(device)

    def step_loss(batch) -> StepLoss:
        x, y = batch
        loss = F.cross_entropy(model(x).float(), y)
        return StepLoss(loss, {"loss": loss}, x.shape[0])

    _, result = run.fit(model, step_loss, to_device, opt, lr, train_loader, [evaluation],
                        dict(command="linprobe", protocol="mae", train_images=len(train_src), val_images=len(val_src),
                             checkpoint=loaded.path, classes=len(classes)))
    if not evaluation.history:
        return {"command": "linprobe", "protocol": "mae", "stopped": result.signal, "global_step": result.global_step}
    final, best = evaluation.history[-1], evaluation.best
    save_atomic({"format": "emae-linear-head", "version": 1, "head": model.head.state_dict(), "classes": classes,
                 "pool": pool, "checkpoint": loaded.path, **final}, out / "head.pt")
    metrics = {
        "command": "linprobe", "protocol": "mae", "checkpoint": loaded.path, "source": loaded.source,
        "train": str(train_src.root), "val": str(val_src.root), "train_images": len(train_src),
        "val_images": len(val_src), "classes": len(classes), "top1": final["val_top1"], "top5": final["val_top5"],
        # the best epoch is chosen on the validation (test) set: optimistic, never the headline
        "best_top1_selected_on_val": best["val_top1"], "best_epoch": best["epoch"], "epochs": t.epochs, "lr": lr,
        "seconds": round(time.perf_counter() - start, 1), "options": cfg.to_dict(), "stopped": result.signal,
    }
    write_metrics(out, metrics)
    return metrics
