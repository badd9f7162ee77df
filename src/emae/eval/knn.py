"""Weighted k-NN on frozen features (as in InstDisc / DINO): cosine similarity, votes weighted by exp(sim / T)
(the scores: :func:`emae.engine.metrics.knn_scores`, which the pre-training monitor uses too).

Optionally the features are first centred on the training-set mean (both splits, by the same vector). Cosine
similarity measures angles from the origin, so a large offset common to all features (frequent in frozen
transformer features: a few dominant dimensions) squeezes every angle towards 0, and the ranking of neighbours
then follows the Euclidean distance of what is left rather than its direction. Centring removes the offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine.metrics import knn_scores, topk_accuracy


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1, top-5 (percent) and cross-entropy of class scores."""
    top1, top5 = topk_accuracy(logits, labels)
    return {"top1": top1, "top5": top5, "loss": F.cross_entropy(logits, labels).item()}


CENTERINGS = {"none": ("none",), "train-mean": ("train-mean",), "both": ("none", "train-mean")}


def effective_ks(ks: tuple[int, ...], train_images: int) -> tuple[tuple[int, ...], str | None]:
    """The neighbour counts actually used (capped at the training-set size, duplicates merged, order kept) and a
    warning naming the capped ones (None when nothing was capped)."""
    used = tuple(dict.fromkeys(min(k, train_images) for k in ks))
    capped = [k for k in ks if k > train_images]
    if not capped:
        return used, None
    return used, (f"--k {', '.join(map(str, capped))} capped to {train_images}, the number of training images; "
                  f"reported as k={train_images}")


def knn_eval(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
             test_labels: torch.Tensor, num_classes: int, ks: tuple[int, ...] = (20, 200),
             temperature: float = 0.07, center: bool = False) -> dict[str, dict[str, float]]:
    """{"k=20": {"top1": ..., "top5": ...}, ...} in percent, under the k actually used (at most the training-set
    size). ``center``: subtract the training features' mean from both splits first."""
    if center:
        mean = train_feats.float().mean(0)
        train_feats, test_feats = train_feats.float() - mean, test_feats.float() - mean
    results = {}
    for k in effective_ks(ks, train_feats.shape[0])[0]:
        scores = knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature)
        top1, top5 = topk_accuracy(scores, test_labels)
        results[f"k={k}"] = {"top1": top1, "top5": top5}
    return results


def knn_run(loaded, train_src, val_src, out, cfg, progress: bool = False, memo: dict | None = None) -> dict:
    """Extract (or reuse cached) frozen features of both splits, classify val by k-NN, write ``out/metrics.json``.
    ``cfg``: a :class:`~emae.config.KnnConfig`; ``knn.center``: none | train-mean | both. Uncentred results sit under
    ``"k=<k>"``, centred ones under ``"centred"`` -> ``"k=<k>"``. ``memo``: features kept in memory between calls
    (several seeds)."""
    import time

    from ..archs import resolve_pool
    from .common import frozen_features, write_metrics

    k = cfg.knn
    pool = resolve_pool(loaded.config.model.arch, k.pool)
    start = time.perf_counter()
    ks = tuple(k.k)
    _, warning = effective_ks(ks, len(train_src))
    f = frozen_features(loaded, train_src, val_src, cfg.data, cfg.run, pool, k.feature_cache, progress, memo)
    results: dict = {}
    for mode in CENTERINGS[k.center]:
        r = knn_eval(f["train_feats"], f["train_labels"], f["val_feats"], f["val_labels"], len(train_src.classes),
                     ks, k.temperature, center=mode == "train-mean")
        results.update(r if mode == "none" else {"centred": r})
    metrics = {
        "command": "knn", "checkpoint": loaded.path, "source": loaded.source, "train": str(train_src.root),
        "val": str(val_src.root), "train_images": len(train_src), "val_images": len(val_src),
        "classes": len(train_src.classes), "temperature": k.temperature, "pool": pool, "center": k.center,
        "k_requested": list(ks), **results, "warnings": [warning] if warning else [],
        "seconds": round(time.perf_counter() - start, 1), "options": cfg.to_dict(),
    }
    write_metrics(out, metrics)
    return metrics
