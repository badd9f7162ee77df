"""Semantic segmentation fine-tuning (``emae segment``) on the one training loop.

The checkpoint's encoder through the evaluation contract (:func:`emae.eval.backbone.build_classifier` at the crop
size, its final norm kept; position embeddings resampled, and the run's log says so), ViTDet's simple feature
pyramid for a plain ViT or the four stage maps of Swin / PVT, a UperNet-style head
(:class:`~emae.models.dense.SegmentationModel`); AdamW with layer-wise lr decay through timm's groups (as
``emae finetune``), warmup then cosine, drop path; cross-entropy that ignores the ignore label. Image and label move
together through random scale, crop and flip, drawn per sample from a seed (``ResumableSampler``), so a stopped run
resumes bit for bit with any number of loader workers. Every ``eval_every`` epochs and at the end: mIoU, per-class
IoU, pixel accuracy, mean class accuracy and the confusion matrix on val at label resolution (whole image or
sliding windows), and the picture image | ground truth | prediction.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from ..archs import traits
from ..config import SegmentConfig
from ..data.loader import ResumableSampler, ignore_stop_signals
from ..data.seg_transforms import SegEvalTransform, SegTrainTransform
from ..data.segmentation import SegmentationDataset, seg_collate
from ..engine.device import resolve_device, seed_everything
from ..engine.loop import Loop, StepLoss
from ..errors import DataError
from ..interop.load import Loaded
from ..models.dense import SegmentationModel
from ..viz.segmentation import save_segmentation_picture
from .backbone import build_classifier
from .common import norm_stats, write_metrics
from .seginference import evaluate_segmentation, predict_logits
from .training import EpochRecords, TrainingRun


def crop_and_base(cfg: SegmentConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    crop = cfg.data.size
    base = cfg.train.base_size
    return crop, (crop if base is None else (base[0], base[-1]))


def segmentation_model(loaded: Loaded, num_classes: int, cfg: SegmentConfig) -> tuple[SegmentationModel, list[str]]:
    """The network at the crop size; also what of the checkpoint did not load as it is."""
    t, (crop, _) = cfg.train, crop_and_base(cfg)
    backbone, notes = build_classifier(loaded, 0, "avg", t.drop_path, crop, fc_norm=False)
    model = SegmentationModel(backbone, num_classes, crop, loaded.config.model.in_chans, t.neck_dim, t.head_dim,
                              t.ppm, t.dropout)
    return model, notes


class SegEvalHook(EpochRecords):
    """Every ``eval_every`` epochs and at the last one: the segmentation metrics on val (``result``: the newest)."""

    def __init__(self, val_loader, cfg: SegmentConfig, layout, device: torch.device) -> None:
        super().__init__()
        self.val_loader, self.cfg, self.layout, self.device = val_loader, cfg, layout, device
        self.result: dict | None = None

    def evaluate(self, model) -> dict:
        t, (crop, _) = self.cfg.train, crop_and_base(self.cfg)
        stride = (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
        was_training = model.training
        result = evaluate_segmentation(model, self.val_loader, self.device, self.layout.num_classes,
                                       self.layout.ignore_index, self.layout.class_names, t.eval_mode,
                                       crop if t.eval_mode == "slide" else None,
                                       stride if t.eval_mode == "slide" else None, t.precision)
        model.train(was_training)
        return result

    def record(self, loop: Loop) -> dict:
        if loop.pos.epoch % self.cfg.train.eval_every and not loop.done and loop.pos.batch == 0:
            return {}
        self.result = self.evaluate(loop.model)
        self.best = self.result  # the newest, not the best: the validation set is the test set here
        return {f"val_{k}": self.result[k] for k in ("miou", "pixel_acc", "mean_class_acc")}

    def summary(self) -> dict:
        return {} if self.result is None else {k: self.result[k] for k in ("miou", "pixel_acc", "mean_class_acc")}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "result": self.result}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.result = state.get("result")


def eval_transform(loaded: Loaded, cfg: SegmentConfig) -> SegEvalTransform:
    """Whole images resized to the crop (a ViT is built for one size), or fitted into the base size for sliding
    windows; labels stay at their own resolution."""
    crop, base = crop_and_base(cfg)
    mean, std = norm_stats(loaded, cfg.data)
    return SegEvalTransform(mean, std, size=crop if cfg.train.eval_mode == "whole" else base)


def segment(loaded: Loaded, train_src, val_src, out: Path, cfg: SegmentConfig, resume: Path | None = None,
            progress: bool = True) -> dict:
    """Fine-tune for segmentation into ``out`` (``resume``: a run checkpoint there to continue); writes and returns
    the metrics (``miou``, ``per_class_iou``, ``pixel_acc``, ``mean_class_acc``, ``confusion``, ...)."""
    t, d = cfg.train, cfg.data
    layout = train_src.layout
    if len(train_src) < t.batch_size:
        raise DataError(f"{len(train_src)} training images give no full batch of {t.batch_size}; lower --batch-size")
    device = resolve_device(t.device)
    seed_everything(t.seed)
    crop, base = crop_and_base(cfg)
    mean, std = norm_stats(loaded, d)
    start = time.perf_counter()
    train_tf = SegTrainTransform(crop, mean, std, layout.ignore_index, base, tuple(t.scale), t.hflip)
    dataset = SegmentationDataset(train_src, train_tf)
    sampler = ResumableSampler(len(dataset), t.batch_size, t.seed)
    train_loader = DataLoader(dataset, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                              num_workers=d.num_workers, collate_fn=seg_collate, persistent_workers=d.num_workers > 0,
                              worker_init_fn=ignore_stop_signals, pin_memory=device.type == "cuda",
                              generator=torch.Generator().manual_seed(t.seed))  # leaves the global RNG alone
    val_loader = DataLoader(SegmentationDataset(val_src, eval_transform(loaded, cfg)), batch_size=1,
                            num_workers=d.num_workers, collate_fn=seg_collate, generator=torch.Generator())
    model, notes = segmentation_model(loaded, layout.num_classes, cfg)
    model = model.to(device)
    decay = t.layer_decay if t.layer_decay is not None else traits(loaded.config.model.arch).layer_decay
    run = TrainingRun(out, cfg.to_dict(), t, device, {"command": "segment", "config": cfg.to_dict()}, resume,
                      progress)
    run.load_weights(model)
    for note in notes if resume is None else ():
        print(f"segment: {note}", flush=True)
    lr = t.lr or t.base_lr * t.batch_size * t.accum_iter / 256
    opt = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=t.weight_decay, layer_decay=decay,
                              betas=tuple(t.betas))
    evaluation = SegEvalHook(val_loader, cfg, layout, device)

    def to_device(batch):
        imgs, labels, _ = batch
        return imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def step_loss(batch) -> StepLoss:
        imgs, labels = batch
        loss = F.cross_entropy(model(imgs).float(), labels, ignore_index=layout.ignore_index)
        return StepLoss(loss, {"loss": loss}, imgs.shape[0])

    loop, result = run.fit(model, step_loss, to_device, opt, lr, train_loader, [evaluation],
                           dict(command="segment", train_images=len(train_src), val_images=len(val_src),
                                checkpoint=loaded.path, source=loaded.source, classes=layout.num_classes,
                                crop=list(crop), base_size=list(base), layer_decay=decay, loaded=notes,
                                params=sum(p.numel() for p in model.parameters())))
    if evaluation.result is None:
        return {"command": "segment", "stopped": result.signal, "global_step": result.global_step,
                "checkpoint": str(result.checkpoint)}
    picture(model, val_src, loaded, cfg, layout, out, device, mean, std)
    metrics = {
        "command": "segment", "checkpoint": loaded.path, "source": loaded.source, "train": str(train_src.root),
        "val": str(val_src.root), "layout": layout.name, "classes": layout.num_classes,
        "ignore_index": layout.ignore_index, "train_images": len(train_src), "val_images": len(val_src),
        "crop": list(crop), "base_size": list(base), "pretrain_img_size": list(loaded.config.model.image_size),
        "interpolated": notes, **evaluation.result, "epochs": t.epochs, "epochs_done": loop.pos.epoch,
        "evaluations": [r for r in evaluation.history if "val_miou" in r], "lr": lr, "layer_decay": decay,
        "seconds": round(time.perf_counter() - start, 1), "stopped": result.signal,
        "run_checkpoint": str(result.checkpoint), "options": cfg.to_dict(),
    }
    write_metrics(out, metrics)
    return metrics


@torch.no_grad()
def picture(model, val_src, loaded: Loaded, cfg: SegmentConfig, layout, out: Path, device, mean, std) -> None:
    """image | ground truth | prediction of the first ``picture_images`` validation images: ``out/segment.png``."""
    n = min(cfg.train.picture_images, len(val_src))
    if n == 0:
        return
    tf, (crop, _) = eval_transform(loaded, cfg), crop_and_base(cfg)
    model.eval()
    images, labels, preds = [], [], []
    for i in torch.linspace(0, len(val_src) - 1, n).round().long().tolist():
        x, y = tf(*val_src.fetch(i)[:2])
        mode = cfg.train.eval_mode
        stride = (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
        logits = predict_logits(model, x[None].to(device), tuple(y.shape), mode, crop if mode == "slide" else None,
                                stride if mode == "slide" else None, layout.num_classes)
        images.append(x)
        labels.append(y)
        preds.append(logits.argmax(1)[0].cpu())
    save_segmentation_picture(out / "segment.png", images, labels, preds, layout.class_names, mean, std,
                              layout.ignore_index, layout.palette)
