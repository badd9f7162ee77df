"""Segmentation inference: the whole image at once, or sliding windows whose overlapping logits are averaged (mmseg's
``slide`` mode); logits upsampled (bilinear) to the label's resolution, where the metrics are computed.

``model(images)`` must return logits (B, K, h, w) at its input's size, as
:class:`~emae.models.dense.SegmentationModel` does. A model built for one input size (timm's ViT) runs whole images
resized to that size, or windows of that size: windows at the bottom and right edge are shifted inside the image,
and an image smaller than the window is padded (0, bottom and right) and its logits cut back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..engine.device import autocast
from ..errors import ConfigError
from .segmetrics import confusion_matrix, segmentation_metrics

MODES = ("whole", "slide")


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, K, h, w) logits to ``size``; the same tensor when it fits."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one side: every ``stride``, the last one flush with the end (one window, at 0,
    when the side is not longer than the window)."""
    if length <= window:
        return [0]
    n = -(-(length - window) // stride) + 1
    return [min(i * stride, length - window) for i in range(n)]


@torch.no_grad()
def slide_logits(model, images: torch.Tensor, window: tuple[int, int], stride: tuple[int, int],
                 num_classes: int) -> torch.Tensor:
    """(B, K, H, W) logits of (B, C, H, W) images: the mean of the logits of every window covering each pixel."""
    b, _, h, w = images.shape
    wh, ww = window
    total = images.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = images.new_zeros((1, 1, h, w), dtype=torch.float32)
    for top in window_starts(h, wh, stride[0]):
        for left in window_starts(w, ww, stride[1]):
            crop = images[:, :, top:top + wh, left:left + ww]
            ch, cw = crop.shape[-2:]
            if (ch, cw) != (wh, ww):
                crop = F.pad(crop, (0, ww - cw, 0, wh - ch))
            total[:, :, top:top + ch, left:left + cw] += model(crop)[:, :, :ch, :cw].float()
            count[:, :, top:top + ch, left:left + cw] += 1
    return total / count


def check_inference(mode: str, window: tuple[int, int] | None, stride: tuple[int, int] | None) -> None:
    if mode not in MODES:
        raise ConfigError(f"inference mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "slide":
        if window is None or stride is None or min(*window, *stride) < 1:
            raise ConfigError("slide inference needs a window and a stride (height, width), all positive")
        if stride[0] > window[0] or stride[1] > window[1]:
            raise ConfigError(f"slide inference: a stride {list(stride)} larger than the window {list(window)} "
                              f"leaves pixels without a prediction")


@torch.no_grad()
def predict_logits(model, images: torch.Tensor, out_size: tuple[int, int] | None = None, mode: str = "whole",
                   window: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
                   num_classes: int | None = None) -> torch.Tensor:
    """Float32 logits (B, K, *out_size) (default: the input size) of ``images``, by ``mode`` 'whole' or 'slide'."""
    check_inference(mode, window, stride)
    if mode == "whole":
        logits = model(images).float()
    else:
        logits = slide_logits(model, images, window, stride, num_classes or model.num_classes)
    return upsample(logits, out_size or images.shape[-2:])


@torch.no_grad()
def evaluate_segmentation(model, loader, device: torch.device, num_classes: int, ignore_index: int,
                          class_names=None, mode: str = "whole", window: tuple[int, int] | None = None,
                          stride: tuple[int, int] | None = None, precision: str = "fp32",
                          progress: bool = False) -> dict:
    """:func:`~emae.eval.segmetrics.segmentation_metrics` of ``model`` (put in eval mode) over a loader of
    (images, labels, skipped) batches (:func:`~emae.data.segmentation.seg_collate`: stacked tensors or lists),
    at label resolution; ``skipped`` in the result counts the images the loader could not read."""
    check_inference(mode, window, stride)
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    skipped = 0
    for imgs, labels, bad in tqdm(loader, desc="segmentation eval", unit="batch", disable=not progress, leave=False):
        skipped += len(bad)
        pairs = [(imgs, labels)] if torch.is_tensor(imgs) and torch.is_tensor(labels) else [
            (img[None], label[None]) for img, label in zip(imgs, labels)]
        for x, y in pairs:
            with autocast(device, precision):
                logits = predict_logits(model, x.to(device), tuple(y.shape[-2:]), mode, window, stride, num_classes)
            conf += confusion_matrix(logits.argmax(1).cpu(), y, num_classes, ignore_index)
    return {**segmentation_metrics(conf, class_names), "skipped": skipped}


__all__ = ["MODES", "check_inference", "evaluate_segmentation", "predict_logits", "slide_logits", "upsample",
           "window_starts"]
