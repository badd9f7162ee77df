"""End-to-end fine-tuning, MAE's recipe (§A.3) with timm's kit, on the one training loop.

The checkpoint's encoder through the evaluation contract (:func:`emae.eval.backbone.build_classifier`; position
embedding resampled when the resolution changes); global average pooling + ``fc_norm`` or the cls token; head
trunc_normal(std 2e-5); AdamW (0.9, 0.999), weight decay 0.05, layer-wise lr decay (scale =
decay^(depth+1-layer_id)); drop path; RandAugment, random erasing (``create_transform``); mixup / cutmix with label
smoothing (``Mixup``); warmup + cosine per step; optional EMA of the weights (``ModelEmaV3``). Top-1 / top-5 on the
validation set after every epoch; the best weights are kept in ``best.pt``; run checkpoints resume the run in place
(exactly with ``data.num_workers=0``: the augmentation draws from the process's RNG, which they keep).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn

from ..archs import resolve_pool, traits
from ..config import FinetuneConfig, FinetuneTrainConfig
from ..data.compat import patch_timm_posterize
from ..engine.atomic import save_atomic
from ..engine.device import autocast, resolve_device, seed_everything
from ..engine.loop import Hook, Loop, StepInfo, StepLoss
from ..errors import CheckpointError
from ..interop.load import CLASSIFIER_FORMAT, CLASSIFIER_VERSION, Loaded
from .backbone import build_classifier
from .common import check_full_batch, eval_tf, image_size, norm_stats, write_metrics
from .data import loader
from .knn import classification_metrics
from .training import EpochRecords, TrainingRun, shuffled_loader


def keep_head(loaded: Loaded, num_classes: int, t: FinetuneTrainConfig) -> bool:
    """Whether the checkpoint's own classifier head is kept (it has one, it fits the classes, no --new-head); a
    one-line error for a head that does not fit and for a pooling the encoder does not have."""
    has_head = loaded.num_classes is not None
    if has_head and not t.new_head and loaded.num_classes != num_classes:
        raise CheckpointError(f"{loaded.path} has a classifier head for {loaded.num_classes} classes but the data has "
                              f"{num_classes} class folders; pass --new-head to replace it")
    resolve_pool(loaded.config.model.arch, t.pool)
    return has_head and not t.new_head


def check_finetune(loaded: Loaded, train_src, cfg: FinetuneConfig) -> None:
    """Everything that can be checked before any work: the head, the pooling, the batch."""
    keep_head(loaded, len(train_src.classes), cfg.train)
    check_full_batch(len(train_src), cfg.train.batch_size)


def classifier(loaded: Loaded, num_classes: int, t: FinetuneTrainConfig, img_size) -> tuple[nn.Module, list[str]]:
    """The fine-tuning model; a checkpoint's own head is kept only when it fits the classes."""
    keep = keep_head(loaded, num_classes, t)
    model, notes = build_classifier(loaded, num_classes, t.pool, t.drop_path, img_size, keep)
    if not keep:
        nn.init.trunc_normal_(model.head.weight, std=2e-5)
        nn.init.zeros_(model.head.bias)
    return model, notes


def layer_decay(loaded: Loaded, t: FinetuneTrainConfig) -> float:
    """``train.layer_decay``, or the encoder family's default (MAE's 0.65 for a ViT, UM-MAE's 0.85 for Swin / PVT)."""
    return t.layer_decay if t.layer_decay is not None else traits(loaded.config.model.arch).layer_decay


def optimizer(model: nn.Module, lr: float, t: FinetuneTrainConfig, decay: float) -> torch.optim.Optimizer:
    """AdamW with timm's layer-decay groups (``lr_scale`` per group, applied by the schedule)."""
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=t.weight_decay, layer_decay=decay,
                               betas=tuple(t.betas))


@torch.inference_mode()
def evaluate(model: nn.Module, val_loader, device: torch.device, precision: str) -> dict:
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for imgs, y, _ in val_loader:
        with autocast(device, precision):
            logits.append(model(imgs.to(device)).float().cpu())
        labels.append(y)
    model.train(was_training)
    return classification_metrics(torch.cat(logits), torch.cat(labels))


class EmaHook(Hook):
    """timm's ``ModelEmaV3`` of the weights, updated after every optimiser step; kept in checkpoints."""

    name = "ema"

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.ema = ModelEmaV3(model, decay=decay)

    def after_step(self, loop: Loop, info: StepInfo) -> None:
        self.ema.update(loop.model, step=loop.pos.step)

    def state_dict(self) -> dict:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.ema.module.load_state_dict(state)


class EpochEvalHook(EpochRecords):
    """After every epoch: top-1 / top-5 on the validation set (and the EMA's); ``best.pt`` when the best weights
    improve."""

    def __init__(self, val_loader, describe: dict, out: Path, precision: str, ema: EmaHook | None = None) -> None:
        super().__init__()
        self.val_loader, self.describe, self.out, self.precision, self.ema = val_loader, describe, out, precision, ema

    def record(self, loop: Loop) -> dict:
        result = evaluate(loop.model, self.val_loader, loop.device, self.precision)
        record = {f"val_{k}": v for k, v in result.items()}
        candidates = [("model", result["top1"], loop.model)]
        if self.ema is not None:
            ema_result = evaluate(self.ema.ema.module, self.val_loader, loop.device, self.precision)
            record.update({f"ema_val_{k}": v for k, v in ema_result.items()})
            candidates.append(("ema", ema_result["top1"], self.ema.ema.module))
        weights, top1, module = max(candidates, key=lambda c: c[1])
        if self.best is None or top1 > self.best["top1"]:
            self.best = {"top1": top1, "top5": record["ema_val_top5" if weights == "ema" else "val_top5"],
                         "epoch": loop.pos.epoch, "weights": weights}
            save_atomic({"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "model": module.state_dict(),
                         **self.describe, **self.best}, self.out / "best.pt")
        return record

    def summary(self) -> dict:
        final = self.history[-1]
        return dict(top1=final["val_top1"], top5=final["val_top5"], best_top1=self.best["top1"],
                    best_epoch=self.best["epoch"])


def criterion_for(t: FinetuneTrainConfig, mixup: Mixup | None) -> nn.Module:
    if mixup is not None:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(t.smoothing) if t.smoothing > 0 else nn.CrossEntropyLoss()


def finetune(loaded: Loaded, train_src, val_src, out: Path, cfg: FinetuneConfig, resume: Path | None = None,
             progress: bool = True) -> dict:
    """Fine-tune into ``out`` (``resume``: a run checkpoint there to continue); returns the metrics it writes."""
    t, d = cfg.train, cfg.data
    check_finetune(loaded, train_src, cfg)
    device = resolve_device(t.device)
    seed_everything(t.seed)
    classes, size, (mean, std) = train_src.classes, image_size(loaded, d), norm_stats(loaded, d)
    start = time.perf_counter()

    patch_timm_posterize()
    train_tf = create_transform(size, is_training=True, auto_augment=t.aa or None, interpolation="bicubic",
                                re_prob=t.reprob, re_mode="pixel", re_count=1, mean=mean, std=std)
    train_loader = shuffled_loader(train_src, train_tf, t.batch_size, d.num_workers, t.seed)
    val_loader = loader(val_src, eval_tf(loaded, d), t.batch_size, d.num_workers)
    model, notes = classifier(loaded, len(classes), t, size)
    model = model.to(device)
    decay = layer_decay(loaded, t)
    describe = {"model_config": dataclasses.asdict(loaded.config.model) | {"img_size": list(size)},
                "classifier": model.spec(), "data": {"mean": mean, "std": std}, "classes": classes,
                "checkpoint": loaded.path}
    run = TrainingRun(out, cfg.to_dict(), t, device, {"command": "finetune", "config": cfg.to_dict(), **describe},
                      resume, progress)
    run.load_weights(model)
    lr = t.lr or t.base_lr * t.batch_size * t.accum_iter / 256
    opt = optimizer(model, lr, t, decay)
    mixup = (Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.smoothing, num_classes=len(classes))
             if t.mixup > 0 or t.cutmix > 0 else None)
    criterion = criterion_for(t, mixup)
    ema = EmaHook(model, t.ema) if t.ema else None
    evaluation = EpochEvalHook(val_loader, describe, out, t.precision, ema)

    def to_device(batch):
        imgs, y, _ = batch
        return imgs.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def step_loss(batch) -> StepLoss:
        imgs, y = batch
        if mixup is not None:
            imgs, y = mixup(imgs, y)
        loss = criterion(model(imgs), y)
        return StepLoss(loss, {"loss": loss}, imgs.shape[0])

    loop, result = run.fit(model, step_loss, to_device, opt, lr, train_loader,
                           [h for h in (ema, evaluation) if h is not None],
                           dict(command="finetune", train_images=len(train_src), val_images=len(val_src),
                                checkpoint=loaded.path, source=loaded.source, classes=len(classes), img_size=list(size),
                                layer_decay=decay, loaded=notes))
    return finetune_metrics(loaded, train_src, val_src, out, cfg, evaluation, result, decay, lr,
                            time.perf_counter() - start)


def finetune_metrics(loaded: Loaded, train_src, val_src, out: Path, cfg: FinetuneConfig, evaluation: EpochEvalHook,
                     result, decay: float, lr: float, seconds: float) -> dict:
    if not evaluation.history:  # stopped before its first epoch ended: nothing to report yet
        return {"command": "finetune", "stopped": result.signal, "global_step": result.global_step,
                "checkpoint": str(result.checkpoint)}
    final, best = evaluation.history[-1], evaluation.best
    options = {**cfg.to_dict()["train"], "layer_decay": decay}  # the decay that was used
    metrics = {
        "command": "finetune", "checkpoint": loaded.path, "source": loaded.source, "train": str(train_src.root),
        "val": str(val_src.root), "train_images": len(train_src), "val_images": len(val_src),
        "classes": len(train_src.classes), "top1": final["val_top1"], "top5": final["val_top5"],
        "best_top1": best["top1"], "best_top5": best["top5"], "best_epoch": best["epoch"],
        "best_weights": best["weights"], "best_checkpoint": str(out / "best.pt"), "epochs": cfg.train.epochs,
        "epochs_done": final["epoch"], "lr": lr, "seconds": round(seconds, 1), "options": options,
        "stopped": result.signal, "run_checkpoint": str(result.checkpoint),
    }
    write_metrics(out, metrics)
    return metrics
