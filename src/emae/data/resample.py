"""One batched RandomResizedCrop on the device: every image's crop box resized to the output in two matrix products.

Each image gets a (out_h, H) and an (out_w, W) matrix of antialiased bicubic weights, computed as torch's
``interpolate(..., mode="bicubic", antialias=True)`` computes them on the cropped image (Keys' cubic, a = -0.5, the
support widened by the scale when shrinking, taps limited to the crop and renormalised); the batch is resized by
``Wy @ (X @ Wx^T)`` (batched matmuls: tensor cores on a GPU), the flip is a reversed ``Wx``. A box may be fractional
(a crop of a DCT-scaled decode): its taps are then those of the pixels it overlaps. The images are zero-padded to
one (B, C, H, W) tensor; padding never receives weight.
"""

from __future__ import annotations

import torch


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (PIL's and torch's bicubic)."""
    a = -0.5
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def axis_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out: int, flip: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """(B, out, in_size) weights that resize ``[start, start + length)`` of each row of an axis of ``in_size`` pixels
    to ``out`` pixels (float64 arithmetic, float32 result); ``flip``: the outputs in reverse order."""
    start, length = start.double()[:, None, None], length.double()[:, None, None]
    scale = length / out
    support = torch.where(scale >= 1, 2 * scale, torch.full_like(scale, 2.0))
    invscale = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    i = torch.arange(out, dtype=torch.float64, device=start.device)[None, :, None]
    p = torch.arange(in_size, dtype=torch.float64, device=start.device)[None, None, :]
    lo, hi = torch.floor(start), torch.ceil(start + length)  # the pixels the box overlaps
    center = scale * (i + 0.5)  # in the box's coordinates, as torch computes on the cropped image
    rel = p - start
    first = torch.clamp(torch.floor(center - support + 0.5), min=0)
    last = torch.floor(center + support + 0.5)
    taps = (rel >= first) & (rel < last) & (p >= lo) & (p < hi)
    w = torch.where(taps, _cubic((rel - center + 0.5) * invscale), torch.zeros((), dtype=torch.float64,
                                                                                 device=start.device))
    w = w / w.sum(-1, keepdim=True)
    if flip is not None:
        w = torch.where(flip[:, None, None], w.flip(1), w)
    return w.float()


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int],
                  flips: torch.Tensor | None = None, levels: bool = False) -> torch.Tensor:
    """(B, C, out_h, out_w) float: each image's box (top, left, height, width; may be fractional) resized with
    antialiased bicubic weights, flipped where ``flips``. ``levels``: rounded and clamped to 8-bit levels after each
    pass (columns first), as PIL's and torch's uint8 resizes do; otherwise the float result of a float resize."""
    _, _, h, w = images.shape
    boxes = boxes.to(images.device, torch.float64)
    flips = flips.to(images.device) if flips is not None else None
    wy = axis_weights(boxes[:, 0], boxes[:, 2], h, size[0])
    wx = axis_weights(boxes[:, 1], boxes[:, 3], w, size[1], flips)
    x = torch.matmul(images.float(), wx.transpose(1, 2)[:, None])  # (B, C, H, out_w)
    if levels:
        to_levels(x)
    x = torch.matmul(wy[:, None], x)
    return to_levels(x) if levels else x


def pad_to_batch(images: list[torch.Tensor]) -> torch.Tensor:
    """Images of different sizes (C, H_i, W_i) in one zero-padded (B, C, max H, max W) tensor (same dtype, device)."""
    c = images[0].shape[0]
    h, w = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    out = images[0].new_zeros((len(images), c, h, w))
    for k, img in enumerate(images):
        out[k, :, : img.shape[1], : img.shape[2]] = img
    return out


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Round and clamp to the 8-bit levels a uint8 resize would give (kept as float)."""
    return x.round_().clamp_(0, 255)
