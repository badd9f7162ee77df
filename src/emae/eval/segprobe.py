"""The frozen dense probe (``emae segprobe``): a linear classifier on a frozen encoder's patch features, with its
logits upsampled (bilinear) to the label resolution, as DINOv2 reports linear segmentation.

Bilinear upsampling commutes with a linear map, so the probe is a multinomial logistic regression on the features
bilinearly interpolated at label pixels. It is fitted on ``pixels_per_image`` labelled pixels drawn (seeded,
uniformly) from every training label map, to convergence with ``eval/logreg.py``'s L-BFGS (largest gradient entry
below ``tol``), on standardised and PCA-whitened features: with the L2 penalty on the whitened weights, L-BFGS
converges in hundreds of iterations instead of thousands (the features of a random encoder have a condition number
around 1e13). Its L2 strength C is the one of ``c_grid`` with the best mIoU on a
held-out ``holdout`` share of the training *images* (seeded; never the validation set); the probe is then refit on
every training image with it, and its mIoU, per-class IoU, pixel accuracy and mean class accuracy on the
validation set are computed at full label resolution from every labelled pixel.

The feature maps (the frozen encoder's last map, see :mod:`emae.eval.segfeatures`) are extracted once and, with
``feature_cache``, kept on disk; they are held in memory (N x D x h x w floats per split). Position embeddings (ViT,
PVT) are resampled (bicubic) when ``img_size`` differs from the pre-training size (``pretrain_img_size`` in the
metrics).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config.dense import SegDataConfig, SegprobeConfig, SegProbeSection
from ..data.seg_transforms import SegEvalTransform
from ..engine.atomic import save_atomic
from ..engine.device import resolve_device
from ..errors import ConfigError, DataError
from ..interop.load import Loaded
from ..models.dense import map_stride
from ..viz.segmentation import save_segmentation_picture
from .common import norm_stats, write_metrics
from .logreg import LogRegOptions, feature_stats, fit_logistic
from .segfeatures import cached_maps, dense_encoder, features_at, sample_pixels
from .seginference import upsample
from .segmetrics import confusion_matrix, segmentation_metrics

ABSENT = -1e4  # logit of a class the training pixels never show: never predicted
EIGEN_FLOOR = 1e-6  # whitening drops the feature directions with a smaller share of the largest variance


def check_holdout(p: SegProbeSection, train_images: int) -> None:
    """A held-out split needs images on both sides (one-line error before any work)."""
    if len(p.grid) > 1 and (train_images < 2 or held_out_count(train_images, p.holdout) >= train_images):
        raise DataError(f"segprobe: {train_images} training image(s) are too few to hold out {p.holdout:.0%} for "
                        f"choosing C; give more images or one --C")


class LabelMaps:
    """The stored label maps of a source as (H, W) uint8 tensors, read from disk when indexed (a data set's label
    maps need not fit in memory)."""

    def __init__(self, source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.source.read_label(i))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def held_out_count(n: int, holdout: float) -> int:
    return max(1, round(holdout * n))


def probe_size(loaded: Loaded, train_src, d: SegDataConfig) -> tuple[int, int]:
    """``data.img_size``, or the first training image's size rounded down to a multiple of 32 (every encoder's
    maps tile it); it must be a multiple of the patch size."""
    if d.size is not None:
        size = d.size
    else:
        with Image.open(train_src.paths[0]) as img:
            w, h = img.size
        size = (max(32, h // 32 * 32), max(32, w // 32 * 32))
    p = loaded.config.model.patch_size
    if min(size) < 1 or size[0] % p or size[1] % p:
        raise ConfigError(f"--img-size {size[0]}x{size[1]} is not divisible by the patch size {p}")
    return size


def head_logits(weight: torch.Tensor, bias: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """(K, D) x (N, D, h, w) maps -> (N, K, h, w) logits."""
    return torch.einsum("kd,ndhw->nkhw", weight, fmap) + bias.view(1, -1, 1, 1)


def whitening(x: np.ndarray, floor: float = EIGEN_FLOOR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, projection (D, r)) of the training pixels' features: standardise, then PCA-whiten, dropping the
    directions whose variance is below ``floor`` times the largest (a random encoder's features are nearly
    collinear)."""
    mean, std = feature_stats(x)
    xs = (x - mean) / std
    eigval, eigvec = np.linalg.eigh(xs.T @ xs / len(xs))
    keep = eigval > floor * eigval.max()
    return mean, std, eigvec[:, keep] / np.sqrt(eigval[keep])


def whitened(x: np.ndarray, transform: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    mean, std, proj = transform
    return ((x - mean) / std) @ proj


def full_head(clf, transform: tuple[np.ndarray, np.ndarray, np.ndarray],
              num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier fitted on whitened features as (K, D) weights and (K,) biases on the raw features (the
    whitening folded in), for every class; classes absent from the training pixels get the logit ``ABSENT``."""
    mean, std, proj = transform
    coef, intercept = np.asarray(clf.coef_), np.asarray(clf.intercept_)
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row, logits (0, z) decide the same way
        coef, intercept = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    raw = (proj @ coef.T) / std[:, None]  # (D, classes seen)
    weight = np.zeros((num_classes, len(mean)))
    bias = np.full(num_classes, ABSENT)
    seen = np.asarray(clf.classes_).astype(np.int64)
    weight[seen], bias[seen] = raw.T, intercept - mean @ raw
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def probe_confusion(weight, bias, maps: torch.Tensor, labels, num_classes: int, ignore_index: int,
                    keep: list[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The confusion matrix of the probe over images (maps (N, D, h, w), labels at full resolution), and the
    predictions of the images ``keep``."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    preds = []
    for i, label in enumerate(labels):
        pred = upsample(head_logits(weight, bias, maps[i:i + 1]), tuple(label.shape)).argmax(1)[0]
        conf += confusion_matrix(pred, label, num_classes, ignore_index)
        if i in keep:
            preds.append(pred)
    return conf, preds


def picture_indices(n: int, shown: int) -> list[int]:
    """``shown`` images spread evenly over ``n`` (consecutive frames of a video look alike)."""
    shown = min(shown, n)
    return [i * n // shown for i in range(shown)]


def training_pixels(maps: torch.Tensor, labels: list[torch.Tensor], n: int, ignore_index: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (P, D) float64, classes (P,), image of each row (P,)) of ``n`` labelled pixels per image, drawn
    from the seed and the image's position alone."""
    xs, ys, owner = [], [], []
    for i, label in enumerate(labels):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        rows, cols = sample_pixels(label, n, ignore_index, g)
        xs.append(features_at(maps[i].double(), rows, cols, tuple(label.shape)))
        ys.append(label[rows, cols])
        owner.append(torch.full((rows.numel(),), i))
    return torch.cat(xs).numpy(), torch.cat(ys).numpy(), torch.cat(owner).numpy()


def choose_c(z, y, owner, transform, maps, labels, p: SegProbeSection, seed: int, num_classes: int,
             ignore_index: int, fit_opts: LogRegOptions) -> tuple[float, dict]:
    """The C of the grid with the best held-out mIoU (ties: pixel accuracy) of fits on the other training images'
    whitened pixels ``z``, and every candidate's figures."""
    if len(p.grid) == 1:
        return float(p.grid[0]), {}
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = sorted(order[:held_out_count(n, p.holdout)])
    fit_rows = ~np.isin(owner, held)
    results, best, chosen = {}, None, None
    for c in sorted(p.grid):
        clf = fit_logistic(z[fit_rows], y[fit_rows], c, fit_opts)
        weight, bias = full_head(clf, transform, num_classes)
        conf, _ = probe_confusion(weight, bias, maps[held], [labels[i] for i in held], num_classes, ignore_index)
        m = segmentation_metrics(conf)
        results[repr(c)] = {"miou": m["miou"], "pixel_acc": m["pixel_acc"], "iterations": int(np.max(clf.n_iter_))}
        score = (m["miou"] or 0.0, m["pixel_acc"] or 0.0)
        if best is None or score > best:
            best, chosen = score, float(c)
    return chosen, {"held_out_images": len(held), "candidates": results}


def segprobe(loaded: Loaded, train_src, val_src, out: Path, cfg: SegprobeConfig, progress: bool = False) -> dict:
    """Fit the probe on ``train_src``, score it on ``val_src`` (:class:`~emae.data.segmentation.SegmentationFiles`
    of one layout); writes ``out/metrics.json`` (``miou``, ``per_class_iou``, ``pixel_acc``, ``mean_class_acc``,
    ``confusion``, ``C``, ``iterations``, ``converged``, ...), ``out/head.pt`` and ``out/segprobe.png``."""
    p, r, d = cfg.probe, cfg.run, cfg.data
    start = time.perf_counter()
    check_holdout(p, len(train_src))
    layout = train_src.layout
    k, ignore = layout.num_classes, layout.ignore_index
    size = probe_size(loaded, train_src, d)
    mean, std = norm_stats(loaded, d)
    tf = SegEvalTransform(mean, std, size=size)
    device = resolve_device(r.device)
    encoder = None

    def encoder_fn():
        nonlocal encoder
        encoder = encoder or dense_encoder(loaded, size).to(device)
        return encoder

    maps = {name: cached_maps(loaded, src, tf, name, encoder_fn, r.batch_size, d.num_workers, device,
                              r.precision, p.feature_cache, progress)
            for name, src in (("segtrain", train_src), ("segval", val_src))}
    extracted = time.perf_counter()
    labels = {"segtrain": LabelMaps(train_src), "segval": LabelMaps(val_src)}
    x, y, owner = training_pixels(maps["segtrain"], labels["segtrain"], p.pixels_per_image, ignore, r.seed)
    if len(np.unique(y)) < 2:
        raise DataError(f"segprobe: the training pixels show {len(np.unique(y))} class; the probe needs at least 2")
    fit_opts = LogRegOptions(tol=p.tol, max_iter=p.max_iter, seed=r.seed)
    transform = whitening(x)
    z = whitened(x, transform)
    del x
    c, selection = choose_c(z, y, owner, transform, maps["segtrain"], labels["segtrain"], p, r.seed, k, ignore,
                            fit_opts)
    clf = fit_logistic(z, y, c, fit_opts)
    iterations = int(np.max(clf.n_iter_))
    weight, bias = full_head(clf, transform, k)
    shown = picture_indices(len(val_src), p.picture_images)
    conf, preds = probe_confusion(weight, bias, maps["segval"], labels["segval"], k, ignore, keep=shown)
    fitted = time.perf_counter()
    result = segmentation_metrics(conf, layout.class_names)
    if shown:
        images = [tf(*val_src.fetch(i)[:2])[0] for i in shown]
        shown_labels = [labels["segval"][i] for i in shown]
        save_segmentation_picture(out / "segprobe.png", images, shown_labels, preds, layout.class_names, mean, std,
                                  ignore, layout.palette)
    save_atomic({"format": "emae-segprobe-head", "version": 1, "weight": weight, "bias": bias,
                 "class_names": list(layout.class_names), "ignore_index": ignore, "img_size": list(size),
                 "mean": mean, "std": std, "checkpoint": loaded.path, "C": c}, out / "head.pt")
    fmap = maps["segtrain"].shape
    metrics = {
        "command": "segprobe", "checkpoint": loaded.path, "source": loaded.source, "train": train_src.root,
        "val": val_src.root, "layout": layout.name, "classes": k, "ignore_index": ignore,
        "train_images": len(train_src), "val_images": len(val_src), "img_size": list(size),
        "pretrain_img_size": list(loaded.config.model.image_size), "feature_map": [fmap[2], fmap[3]],
        "dim": fmap[1], "stride": map_stride(size, (fmap[2], fmap[3])),
        "pixels_per_image": p.pixels_per_image, "train_pixels": int(len(y)), "whitened_dims": int(z.shape[1]),
        **result,
        "C": c, "holdout": selection, "iterations": iterations, "converged": iterations < p.max_iter,
        "tol": p.tol, "seconds": round(time.perf_counter() - start, 1),
        "seconds_features": round(extracted - start, 1), "seconds_fit": round(fitted - extracted, 1),
        "options": cfg.to_dict(),
    }
    write_metrics(out, metrics)
    return metrics


__all__ = ["check_holdout", "full_head", "head_logits", "probe_confusion", "segprobe",
           "training_pixels", "whitened", "whitening"]
