"""Semantic-segmentation metrics from a confusion matrix (rows: ground truth, columns: prediction) that leaves out
the pixels labelled with the ignore value.

Conventions (mmseg's): a class's IoU is TP / (TP + FP + FN), defined when the class is in the ground truth or the
prediction (union > 0); **mIoU is the mean over those classes** (a class predicted but absent from the ground truth
counts with IoU 0; a class in neither is left out). Pixel accuracy = TP / labelled pixels; a class's accuracy is its
recall TP / (TP + FN), defined when it is in the ground truth, and the mean class accuracy is the mean over those.
All in percent; undefined values are None (JSON null).
"""

from __future__ import annotations

import torch

MIOU_CONVENTION = "mean IoU over the classes present in the ground truth or the prediction"


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(K, K) int64 counts of (ground truth, prediction) pairs over the pixels whose target is not ``ignore_index``.
    ``pred`` and ``target`` are class-id tensors of the same shape; a target outside the classes is an error."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"class ids must lie in 0..{num_classes - 1} (or be the ignore value {ignore_index})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes).cpu()


def _percent(x: torch.Tensor) -> list[float | None]:
    return [None if torch.isnan(v) else round(100.0 * float(v), 4) for v in x]


def _nanmean(x: torch.Tensor) -> float | None:
    x = x[~torch.isnan(x)]
    return round(100.0 * float(x.mean()), 4) if x.numel() else None


def segmentation_metrics(conf: torch.Tensor, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
    """``miou``, ``pixel_acc``, ``mean_class_acc`` (percent), ``per_class_iou`` and ``per_class_acc`` ({class name:
    percent or None}), ``classes_in_miou``, ``pixels`` (labelled pixels counted) and ``confusion`` (the matrix as a
    nested list, rows = ground truth), from a confusion matrix (see the module doc)."""
    conf = conf.to(torch.float64)
    k = conf.shape[0]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} confusion matrix")
    tp, gt, pred = conf.diagonal(), conf.sum(dim=1), conf.sum(dim=0)
    union = gt + pred - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    total = conf.sum()
    return {
        "miou": _nanmean(iou),
        "pixel_acc": round(100.0 * float(tp.sum() / total), 4) if total > 0 else None,
        "mean_class_acc": _nanmean(acc),
        "per_class_iou": dict(zip(names, _percent(iou))),
        "per_class_acc": dict(zip(names, _percent(acc))),
        "classes_in_miou": int((union > 0).sum()),
        "miou_convention": MIOU_CONVENTION,
        "pixels": int(total),
        "confusion": conf.long().tolist(),
    }


__all__ = ["MIOU_CONVENTION", "confusion_matrix", "segmentation_metrics"]
