"""End-to-end fine-tuning, MAE's recipe (§A.3) with timm's kit.

timm ``VisionTransformer`` from the checkpoint's encoder (position embedding resampled when the resolution
changes); global average pooling + ``fc_norm`` or the cls token; head trunc_normal(std 2e-5); AdamW (0.9, 0.999),
weight decay 0.05, layer-wise lr decay (scale = decay^(depth+1-layer_id)); drop path; RandAugment, random erasing
(``create_transform``); mixup / cutmix with label smoothing (``Mixup``); warmup + cosine per step
(``CosineLRScheduler``); optional EMA of the weights (``ModelEmaV3``). Top-1 / top-5 on the validation set after
every epoch; the best weights are kept in ``best.pt``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from ..data.compat import patch_timm_posterize
from ..engine.atomic import save_atomic
from ..engine.device import autocast, resolve_device, seed_everything
from ..errors import CheckpointError, ConfigError, EmaeError
from ..interop.load import CLASSIFIER_FORMAT, Loaded
from .backbone import build_vit
from .pyramid import PyramidClassifier, is_pyramid, pyramid_classifier
from .common import (EvalOptions, check_full_batch, eval_tf, image_size, norm_stats, run_log,
                     warmup_cosine_scheduler, write_metrics)
from .data import loader
from .knn import classification_metrics


@dataclass
class FinetuneOptions:
    epochs: int = 100
    warmup_epochs: float = 5
    base_lr: float = 5e-4  # lr = base_lr * batch_size * accum_iter / 256 unless lr is given
    lr: float | None = None
    min_lr: float = 1e-6
    layer_decay: float | None = None  # None: 0.65 for a ViT (MAE), 0.85 for Swin / PVT (UM-MAE's Makefile)
    weight_decay: float = 0.05
    drop_path: float = 0.1
    pool: str = "avg"  # avg (global pool + fc_norm) | cls
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    reprob: float = 0.25
    aa: str | None = "rand-m9-mstd0.5-inc1"
    ema: float | None = None  # EMA decay of the weights, e.g. 0.9999; None: off
    clip_grad: float | None = None
    new_head: bool = False  # replace a checkpoint's classifier head
    log_every: int = 20


def keep_head(loaded: Loaded, num_classes: int, ft: FinetuneOptions) -> bool:
    """Whether the checkpoint's own classifier head is kept (it has one, it fits the classes, no --new-head); a
    one-line error for a head that does not fit and for a pooling the encoder does not have."""
    has_head = loaded.num_classes is not None
    if has_head and not ft.new_head and loaded.num_classes != num_classes:
        raise CheckpointError(f"{loaded.path} has a classifier head for {loaded.num_classes} classes but the data has "
                              f"{num_classes} class folders; pass --new-head to replace it")
    if is_pyramid(loaded) and ft.pool != "avg":
        raise ConfigError(f"--pool {ft.pool}: pyramid encoders have no cls token; use --pool avg")
    return has_head and not ft.new_head


def check_finetune(loaded: Loaded, train_src, opts: EvalOptions, ft: FinetuneOptions) -> None:
    """Everything that can be checked before any work: the head, the pooling, the batch."""
    keep_head(loaded, len(train_src.classes), ft)
    if (ft.mixup > 0 or ft.cutmix > 0) and opts.batch_size % 2:
        raise ConfigError(f"--batch-size {opts.batch_size} must be even for mixup / cutmix")
    check_full_batch(len(train_src), opts.batch_size)


def classifier(loaded: Loaded, num_classes: int, ft: FinetuneOptions, img_size) -> nn.Module:
    """The fine-tuning model; a checkpoint's own head is kept only when it fits the classes."""
    keep = keep_head(loaded, num_classes, ft)
    if is_pyramid(loaded):
        model = pyramid_classifier(loaded, num_classes, ft.drop_path, img_size, keep)
        if not keep:
            nn.init.trunc_normal_(model.head.weight, std=2e-5)
            nn.init.zeros_(model.head.bias)
        return model
    pool = {"avg": "avg", "cls": "token"}[ft.pool]
    vit = build_vit(loaded, num_classes, pool, drop_path=ft.drop_path, img_size=img_size, keep_head=keep)
    if not keep:
        nn.init.trunc_normal_(vit.head.weight, std=2e-5)
        nn.init.zeros_(vit.head.bias)
    return vit


PYRAMID_LAYER_DECAY = 0.85  # UM-MAE Makefile: finetune_{mae,simmim}_{swin_tiny,pvt_small}_256_*: --layer_decay 0.85
VIT_LAYER_DECAY = 0.65  # MAE's ViT-B recipe


def layer_decay(model: nn.Module, ft: FinetuneOptions) -> float:
    """``ft.layer_decay``, or by default MAE's for a ViT and UM-MAE's for a pyramid classifier."""
    if ft.layer_decay is not None:
        return ft.layer_decay
    return PYRAMID_LAYER_DECAY if isinstance(model, PyramidClassifier) else VIT_LAYER_DECAY


def optimizer(model: nn.Module, lr: float, ft: FinetuneOptions) -> torch.optim.Optimizer:
    """AdamW with timm's layer-decay groups (``lr_scale`` per group, applied by the timm scheduler)."""
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=ft.weight_decay, layer_decay=layer_decay(model, ft),
                               betas=(0.9, 0.999))


@torch.inference_mode()
def evaluate(model: nn.Module, val_loader, device: torch.device, precision: str) -> dict:
    model.eval()
    logits, labels = [], []
    for imgs, y, _ in val_loader:
        with autocast(device, precision):
            logits.append(model(imgs.to(device)).float().cpu())
        labels.append(y)
    return classification_metrics(torch.cat(logits), torch.cat(labels))


def finetune(loaded: Loaded, train_src, val_src, out: Path, opts: EvalOptions, ft: FinetuneOptions) -> dict:
    check_finetune(loaded, train_src, opts, ft)
    device = resolve_device(opts.device)
    seed_everything(opts.seed)
    classes = train_src.classes
    num_classes = len(classes)
    size = image_size(loaded, opts)
    mean, std = norm_stats(loaded, opts)
    use_mixup = ft.mixup > 0 or ft.cutmix > 0
    start = time.perf_counter()

    patch_timm_posterize()
    train_tf = create_transform(size, is_training=True, auto_augment=ft.aa or None, interpolation="bicubic",
                                re_prob=ft.reprob, re_mode="pixel", re_count=1, mean=mean, std=std)
    train_loader = loader(train_src, train_tf, opts.batch_size, opts.workers, shuffle=True, drop_last=True,
                          seed=opts.seed)
    val_loader = loader(val_src, eval_tf(loaded, opts), opts.batch_size, opts.workers)
    steps_per_epoch = len(train_loader)

    model = classifier(loaded, num_classes, ft, size).to(device)
    ft = replace(ft, layer_decay=layer_decay(model, ft))  # the metrics record the decay that was used
    lr = ft.lr or ft.base_lr * opts.batch_size / 256
    opt = optimizer(model, lr, ft)
    total = ft.epochs * steps_per_epoch
    sched = warmup_cosine_scheduler(opt, total, round(ft.warmup_epochs * steps_per_epoch), ft.min_lr)
    mixup = Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, label_smoothing=ft.smoothing,
                  num_classes=num_classes) if use_mixup else None
    if mixup is not None:
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif ft.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(ft.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    ema = ModelEmaV3(model, decay=ft.ema) if ft.ema else None
    scaler = torch.amp.GradScaler(device.type, enabled=opts.precision == "fp16")

    log = run_log(out, opts, {**opts.to_dict(), **asdict(ft)})
    log.write(type="start", command="finetune", lr=lr, steps_per_epoch=steps_per_epoch, train_images=len(train_src),
              val_images=len(val_src), checkpoint=loaded.path, source=loaded.source, classes=num_classes,
              img_size=list(size))
    bar = tqdm(total=total, unit="step", disable=not opts.progress, dynamic_ncols=True)
    step, best, history = 0, None, []
    for epoch in range(ft.epochs):
        model.train()
        epoch_loss, window = 0.0, 0.0
        for imgs, y, _ in train_loader:
            sched.step_update(step)
            imgs, y = imgs.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if mixup is not None:
                imgs, y = mixup(imgs, y)
            with autocast(device, opts.precision):
                loss = criterion(model(imgs), y)
            if not math.isfinite(loss.item()):
                raise EmaeError(f"fine-tuning loss is {loss.item()} at step {step}; lower the lr or use fp32 / bf16")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if ft.clip_grad:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), ft.clip_grad)
            scaler.step(opt)
            scaler.update()
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            epoch_loss += loss.item()
            window += loss.item()
            bar.update(1)
            if step % ft.log_every == 0:
                log.write(type="train", step=step, epoch=epoch, loss=window / ft.log_every, lr=max_lr(opt))
                bar.set_postfix(loss=f"{window / ft.log_every:.3f}", refresh=False)
                window = 0.0
        record = {"epoch": epoch + 1, "train_loss": epoch_loss / steps_per_epoch, "lr": max_lr(opt),
                  **{f"val_{k}": v for k, v in evaluate(model, val_loader, device, opts.precision).items()}}
        candidates = [("model", record["val_top1"], model)]
        if ema is not None:
            ema_result = evaluate(ema.module, val_loader, device, opts.precision)
            record.update({f"ema_val_{k}": v for k, v in ema_result.items()})
            candidates.append(("ema", ema_result["top1"], ema.module))
        log.write(type="epoch", step=step, **record)
        history.append(record)
        weights, top1, module = max(candidates, key=lambda c: c[1])
        if best is None or top1 > best["top1"]:
            best = {"top1": top1, "top5": record["ema_val_top5" if weights == "ema" else "val_top5"],
                    "epoch": epoch + 1, "weights": weights}
            save_atomic({"format": CLASSIFIER_FORMAT, "version": 1, "model": module.state_dict(),
                         "model_config": asdict(loaded.config.model) | {"img_size": list(size)},
                         "vit": model.emae_kwargs, "data": {"mean": mean, "std": std}, "classes": classes,
                         "checkpoint": loaded.path, **best}, out / "best.pt")
        bar.set_postfix(top1=f"{record['val_top1']:.2f}", best=f"{best['top1']:.2f}", refresh=False)
    bar.close()
    final = history[-1]
    metrics = {
        "command": "finetune", "checkpoint": loaded.path, "source": loaded.source, "train": str(train_src.root),
        "val": str(val_src.root), "train_images": len(train_src), "val_images": len(val_src), "classes": num_classes,
        "top1": final["val_top1"], "top5": final["val_top5"], "best_top1": best["top1"], "best_top5": best["top5"],
        "best_epoch": best["epoch"], "best_weights": best["weights"], "best_checkpoint": str(out / "best.pt"),
        "epochs": ft.epochs, "lr": lr, "seconds": round(time.perf_counter() - start, 1),
        "options": {**opts.to_dict(), **asdict(ft)},
    }
    write_metrics(out, metrics)
    log.write(type="end", **{k: metrics[k] for k in ("top1", "top5", "best_top1", "best_epoch")})
    log.close()
    return metrics


def max_lr(opt: torch.optim.Optimizer) -> float:
    """The lr of the least-decayed group (the head's): what the schedule says."""
    return max(g["lr"] for g in opt.param_groups)
