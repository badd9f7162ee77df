"""Linear probing (MAE §A.2): frozen encoder in eval mode, cls feature, BatchNorm1d(affine=False) + Linear,
LARS, linear warmup then cosine.

Two protocols:

- standard: every epoch, RandomResizedCrop + flip images go through the frozen encoder (hours on a CPU);
- ``fast``: features of the un-augmented training images (eval transform) are extracted once, then the head is
  fitted on them for many epochs (minutes). No augmentation, so it is a different, usually slightly lower,
  number than the standard protocol.

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
from ..engine.log import JsonlLog
from ..engine.device import autocast, resolve_device, seed_everything
from ..errors import DataError, EmaeError
from ..interop.load import Loaded
from .backbone import FrozenEncoder, frozen_encoder
from .common import (EvalOptions, frozen_features, image_size, norm_stats, warmup_cosine_scheduler, with_pool,
                     write_metrics)
from .data import loader
from .knn import classification_metrics


@dataclass
class ProbeOptions:
    epochs: int = 90
    warmup_epochs: float = 10
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256 unless lr is given
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    fast: bool = False
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


def linear_probe(loaded: Loaded, train_src, val_src, out: Path, opts: EvalOptions, probe: ProbeOptions) -> dict:
    """Train the head; per-epoch records in ``out/log.jsonl``, the best head in ``out/head.pt``, and metrics."""
    opts = with_pool(loaded, opts)
    device = resolve_device(opts.device)
    seed_everything(opts.seed)
    classes = train_src.classes
    num_classes = len(classes)
    start = time.perf_counter()

    # features: val always once; train once (fast) or through the encoder each epoch (standard)
    feats = frozen_features(loaded, train_src if probe.fast else None, val_src, opts)
    val_f, val_y = feats["val_feats"].to(device), feats["val_labels"].to(device)
    encoder = frozen_encoder(loaded, opts.pool, image_size(loaded, opts)).to(device)
    model = LinearProbe(encoder, num_classes).to(device)

    if probe.fast:
        train_f, train_y = feats["train_feats"].to(device), feats["train_labels"].to(device)
        n = train_f.shape[0]
        steps_per_epoch = n // opts.batch_size
    else:
        tf = pretrain_transform(image_size(loaded, opts), (0.08, 1.0), True, *norm_stats(loaded, opts))
        train_loader = loader(train_src, tf, opts.batch_size, opts.workers, shuffle=True, drop_last=True, seed=opts.seed)
        steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_src)} training images give no full batch of {opts.batch_size}; lower --batch-size")

    lr = probe.lr or probe.base_lr * opts.batch_size / 256
    opt = lars(model.head, lr, probe.weight_decay, probe.momentum)
    total = probe.epochs * steps_per_epoch
    sched = warmup_cosine_scheduler(opt, total, round(probe.warmup_epochs * steps_per_epoch), probe.min_lr)
    log = JsonlLog(out / "log.jsonl")
    log.write(type="start", command="linprobe", protocol="fast" if probe.fast else "standard", lr=lr,
              steps_per_epoch=steps_per_epoch, train_images=len(train_src), val_images=len(val_src),
              checkpoint=loaded.path, classes=num_classes)

    g = torch.Generator().manual_seed(opts.seed)
    threads = torch.get_num_threads()
    if probe.fast and device.type == "cpu":  # tiny ops: intra-op threads only add waits (long on a busy CPU)
        torch.set_num_threads(1)
    try:
        bar = tqdm(total=total, unit="step", disable=not opts.progress, dynamic_ncols=True)
        step, best, history = 0, None, []
        for epoch in range(probe.epochs):
            model.train()
            if probe.fast:
                perm = torch.randperm(n, generator=g)[: steps_per_epoch * opts.batch_size].to(device)
                batches = ((train_f[idx], train_y[idx]) for idx in perm.split(opts.batch_size))
            else:
                batches = ((imgs.to(device), y.to(device)) for imgs, y, _ in train_loader)
            epoch_loss = 0.0
            for x, y in batches:
                sched.step_update(step)
                with autocast(device, opts.precision):
                    logits = model.head(x) if probe.fast else model(x)
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
            if best is None or result["top1"] > best["val_top1"]:
                best = record
                save_atomic({"format": "emae-linear-head", "version": 1, "head": model.head.state_dict(),
                             "classes": classes, "pool": opts.pool, "checkpoint": loaded.path, **record}, out / "head.pt")
        bar.close()
    finally:
        torch.set_num_threads(threads)
    final = history[-1]
    metrics = {
        "command": "linprobe", "protocol": "fast (cached un-augmented features)" if probe.fast else "standard",
        "checkpoint": loaded.path, "source": loaded.source, "train": str(train_src.root), "val": str(val_src.root),
        "train_images": len(train_src), "val_images": len(val_src), "classes": num_classes,
        "top1": final["val_top1"], "top5": final["val_top5"], "best_top1": best["val_top1"],
        "best_epoch": best["epoch"], "epochs": probe.epochs, "lr": lr, "seconds": round(time.perf_counter() - start, 1),
        "options": {**opts.to_dict(), **asdict(probe)},
    }
    write_metrics(out, metrics)
    log.write(type="end", **{k: metrics[k] for k in ("top1", "top5", "best_top1", "best_epoch")})
    return metrics

