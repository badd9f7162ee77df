"""Segmentation pictures: one row per image, image | ground truth | prediction, in the class palette, with a legend
naming the classes shown (and the ignore colour, black, where the ground truth has unlabelled pixels).

Palettes: CamVid's usual colours (SegNet-Tutorial's), or for any other class count the PASCAL VOC colour map
(the bit-interleaved one) from its second entry on, so that no class is black.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]
CAMVID_PALETTE: tuple[Colour, ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0), (192, 128, 128),
    (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
IGNORE_COLOUR: Colour = (0, 0, 0)
COLUMNS = ("image", "ground truth", "prediction")


def default_palette(num_classes: int) -> tuple[Colour, ...]:
    """A fixed colour per class: PASCAL VOC's colour map for ids 1..num_classes (id 0, black, is the ignore colour)."""
    out = []
    for i in range(1, num_classes + 1):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


def colourise(label: torch.Tensor | np.ndarray, palette: tuple[Colour, ...], ignore_index: int) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; the ignore value (and anything outside the palette) is black."""
    label = np.asarray(label, dtype=np.int64)
    table = np.array([*palette, IGNORE_COLOUR], dtype=np.uint8)
    idx = np.where((label >= 0) & (label < len(palette)) & (label != ignore_index), label, len(palette))
    return table[idx]


def _display_image(img: torch.Tensor, size: tuple[int, int], mean: list[float], std: list[float]) -> np.ndarray:
    """A normalised (C, h, w) image, un-normalised and resized (bilinear) to ``size``, as (H, W, 3) uint8."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    x = (img.float().cpu() * s + m).clamp(0, 1)
    x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x[:3].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _legend(width: int, entries: list[tuple[str, Colour]], font) -> Image.Image:
    """Colour swatches with their names, wrapped into lines of ``width`` pixels."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    swatch, gap, line = 10, 12, 16
    rows: list[list[tuple[str, Colour, int]]] = [[]]
    x = 4
    for name, colour in entries:
        w = swatch + 4 + int(draw.textlength(name, font=font))
        if rows[-1] and x + w > width - 4:
            rows.append([])
            x = 4
        rows[-1].append((name, colour, x))
        x += w + gap
    out = Image.new("RGB", (width, line * len(rows) + 6), "white")
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        y = 4 + r * line
        for name, colour, x in row:
            draw.rectangle([x, y + 1, x + swatch, y + 1 + swatch], fill=colour, outline=(90, 90, 90))
            draw.text((x + swatch + 4, y + 6), name, fill="black", font=font, anchor="lm")
    return out


def segmentation_picture(images, labels, preds, class_names: list[str] | tuple[str, ...],
                         mean: list[float], std: list[float], ignore_index: int,
                         palette: tuple[Colour, ...] | None = None, height: int | None = None) -> Image.Image:
    """Rows of image | ground truth | prediction. ``images``: normalised (C, h, w) tensors (any size: each is shown
    resized to its label's size); ``labels`` / ``preds``: (H, W) class-id maps at label resolution. Every row is
    scaled to ``height`` pixels (default: the first label's height, at most 240). The legend lists the classes
    present in the rows shown."""
    palette = palette or default_palette(len(class_names))
    if len(palette) < len(class_names):
        raise ValueError(f"palette: {len(palette)} colours for {len(class_names)} classes")
    height = height or min(240, int(labels[0].shape[-2]))
    pad, header = 2, 16
    cells, present, has_ignore = [], set(), False
    for img, label, pred in zip(images, labels, preds):
        label, pred = np.asarray(label), np.asarray(pred)
        size = label.shape[-2:]
        width = max(1, round(size[1] * height / size[0]))
        row = [_display_image(img, size, mean, std), colourise(label, palette, ignore_index),
               colourise(pred, palette, ignore_index)]
        resample = [Image.BILINEAR, Image.NEAREST, Image.NEAREST]
        cells.append([Image.fromarray(c).resize((width, height), r) for c, r in zip(row, resample)])
        shown = np.unique(np.concatenate([label.ravel(), pred.ravel()]))
        present |= {int(v) for v in shown if 0 <= v < len(class_names)}
        has_ignore |= bool((label == ignore_index).any())
    width = max(row[0].width for row in cells)
    body_w = 3 * width + 4 * pad
    font = ImageFont.load_default(size=11)
    entries = [(class_names[i], palette[i]) for i in sorted(present)]
    entries += [("ignore", IGNORE_COLOUR)] if has_ignore else []
    legend = _legend(body_w, entries, font)
    total_h = header + len(cells) * (height + pad) + pad + legend.height
    out = Image.new("RGB", (body_w, total_h), "white")
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(COLUMNS):
        draw.text((pad + i * (width + pad) + width / 2, header / 2 + 1), name, fill="black", font=font, anchor="mm")
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            out.paste(cell, (pad + c * (width + pad), header + pad + r * (height + pad)))
    out.paste(legend, (0, total_h - legend.height))
    return out


def save_segmentation_picture(path: str | Path, *args, **kwargs) -> Path:
    """:func:`segmentation_picture` written to ``path`` (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    segmentation_picture(*args, **kwargs).save(path)
    return path


__all__ = ["CAMVID_PALETTE", "COLUMNS", "IGNORE_COLOUR", "colourise", "default_palette", "save_segmentation_picture",
           "segmentation_picture"]
