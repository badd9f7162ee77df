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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn
from tqdm import tqdm

from ..data import pretrain_transform
from ..engine.atomic import save_atomic
from ..engine.device import autocast, resolve_device, seed_everything
from ..errors import DataError, EmaeError
from ..interop.load import Loaded
from .backbone import FrozenEncoder, frozen_encoder
from .common import (EvalOptions, run_log, frozen_features, image_size, norm_stats, warmup_cosine_scheduler, with_pool,
                     write_metrics)
from .data import loader
from .knn import classification_metrics
from .logreg import LogRegOptions, logistic_probe


@dataclass
class ProbeOptions:
    epochs: int = 90
    warmup_epochs: float = 10
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256 unless lr is given
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    log_every: int = 50


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


def logreg_probe(loaded: Loaded, train_src, val_src, out: Path, opts: EvalOptions,
                 options: LogRegOptions | None = None) -> dict:
    """The ``logreg`` protocol: cached eval-transform features, logistic regression fitted to convergence.
    Writes ``out/metrics.json``, ``out/log.jsonl`` and the fitted head (with its standardisation) in ``out/head.pt``."""
    opts = with_pool(loaded, opts)
    options = options or LogRegOptions(seed=opts.seed)
    start = time.perf_counter()
    log = run_log(out, opts, {**opts.to_dict(), **options.to_dict()})
    log.write(type="start", command="linprobe", protocol="logreg", train_images=len(train_src),
              val_images=len(val_src), checkpoint=loaded.path, classes=len(train_src.classes), **options.to_dict())
    feats = frozen_features(loaded, train_src, val_src, opts)
    fit = logistic_probe(feats["train_feats"], feats["train_labels"], feats["val_feats"], feats["val_labels"], options)
    head = fit.pop("head")
    save_atomic({"format": "emae-logreg-head", "version": 1, **head, "class_names": train_src.classes,
                 "pool": opts.pool, "checkpoint": loaded.path, "C": fit["C"]}, out / "head.pt")
    metrics = {
        "command": "linprobe", "protocol": "logreg", "checkpoint": loaded.path, "source": loaded.source,
        "train": str(train_src.root), "val": str(val_src.root), "classes": len(train_src.classes), "pool": opts.pool,
        **fit, "seconds": round(time.perf_counter() - start, 1), "options": {**opts.to_dict(), **options.to_dict()},
    }
    write_metrics(out, metrics)
    log.write(type="end", **{k: metrics[k] for k in ("top1", "top5", "C", "iterations", "converged")})
    log.close()
    return metrics


def linear_probe(loaded: Loaded, train_src, val_src, out: Path, opts: EvalOptions, probe: ProbeOptions) -> dict:
    """The ``mae`` protocol: train the head on augmented images through the frozen encoder; per-epoch records in
    ``out/log.jsonl``, the last head in ``out/head.pt``, and metrics (the last epoch's, see the module doc)."""
    opts = with_pool(loaded, opts)
    device = resolve_device(opts.device)
    seed_everything(opts.seed)
    classes = train_src.classes
    num_classes = len(classes)
    start = time.perf_counter()

    tf = pretrain_transform(image_size(loaded, opts), (0.08, 1.0), True, *norm_stats(loaded, opts))
    train_loader = loader(train_src, tf, opts.batch_size, opts.workers, shuffle=True, drop_last=True, seed=opts.seed)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_src)} training images give no full batch of {opts.batch_size}; lower --batch-size")
    feats = frozen_features(loaded, None, val_src, opts)
    val_f, val_y = feats["val_feats"].to(device), feats["val_labels"].to(device)
    encoder = frozen_encoder(loaded, opts.pool, image_size(loaded, opts)).to(device)
    model = LinearProbe(encoder, num_classes).to(device)

    lr = probe.lr or probe.base_lr * opts.batch_size / 256
    opt = lars(model.head, lr, probe.weight_decay, probe.momentum)
    total = probe.epochs * steps_per_epoch
    sched = warmup_cosine_scheduler(opt, total, round(probe.warmup_epochs * steps_per_epoch), probe.min_lr)
    log = run_log(out, opts, {**opts.to_dict(), **asdict(probe)})
    log.write(type="start", command="linprobe", protocol="mae", lr=lr, steps_per_epoch=steps_per_epoch,
              train_images=len(train_src), val_images=len(val_src), checkpoint=loaded.path, classes=num_classes)

    bar = tqdm(total=total, unit="step", disable=not opts.progress, dynamic_ncols=True)
    step, best, history = 0, None, []
    for epoch in range(probe.epochs):
        model.train()
        epoch_loss = 0.0
        for imgs, y, _ in train_loader:
            x, y = imgs.to(device), y.to(device)
            sched.step_update(step)
            with autocast(device, opts.precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise EmaeError(f"linear probe loss is {loss.item()} at step {step}; lower the lr (--lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            epoch_loss += loss.item()
            bar.update(1)
            if step % probe.log_every == 0:
                log.write(type="train", step=step, epoch=epoch, loss=loss.item(), lr=opt.param_groups[0]["lr"])
        result = evaluate_head(model.head, val_f, val_y)
        record = {"epoch": epoch + 1, "train_loss": epoch_loss / steps_per_epoch, "lr": opt.param_groups[0]["lr"],
                  **{f"val_{k}": v for k, v in result.items()}}
        log.write(type="epoch", step=step, **record)
        history.append(record)
        bar.set_postfix(top1=f"{result['top1']:.2f}", refresh=False)
        best = record if best is None or result["top1"] > best["val_top1"] else best
    bar.close()
    final = history[-1]
    save_atomic({"format": "emae-linear-head", "version": 1, "head": model.head.state_dict(), "classes": classes,
                 "pool": opts.pool, "checkpoint": loaded.path, **final}, out / "head.pt")
    metrics = {
        "command": "linprobe", "protocol": "mae", "checkpoint": loaded.path, "source": loaded.source,
        "train": str(train_src.root), "val": str(val_src.root), "train_images": len(train_src),
        "val_images": len(val_src), "classes": num_classes, "top1": final["val_top1"], "top5": final["val_top5"],
        # the best epoch is chosen on the validation (test) set: optimistic, never the headline
        "best_top1_selected_on_val": best["val_top1"], "best_epoch": best["epoch"], "epochs": probe.epochs, "lr": lr,
        "seconds": round(time.perf_counter() - start, 1), "options": {**opts.to_dict(), **asdict(probe)},
    }
    write_metrics(out, metrics)
    log.write(type="end", **{k: metrics[k] for k in ("top1", "top5", "best_top1_selected_on_val", "best_epoch")})
    log.close()
    return metrics
