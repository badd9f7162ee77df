"""JPEG decoding on the training device (``data.decode=device``).

The loader's workers only read each file's bytes and draw its augmentation (the RandomResizedCrop box and the
flip) under the sample's seed, in exactly the order the CPU transform draws them; the training process then
decodes the whole batch at once with ``torchvision.io.decode_jpeg`` (nvJPEG on a GPU), then crops, resizes and
flips the whole batch in one batched resampling (:mod:`emae.data.resample`: two matrix products, no per-image
loop) and normalises, on the device. Workers stop being the bottleneck when many GPUs share few cores.

Files that the device decoder cannot take (PNG and other formats, CMYK JPEGs, progressive-decoder failures)
are decoded by the worker with PIL instead, so every image the CPU path reads is read here too. A file that
fails on the device is decoded again on the host; one that fails there too is skipped and reported like the
CPU path's unreadable files.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError
from .batch import normalize_levels
from .crop import draw_crop
from .folder import load_image, open_image
from .resample import pad_to_batch, resized_crops

JPEG_MODES = {"L", "RGB"}  # colour spaces nvJPEG decodes; CMYK / YCCK go through PIL
READ_MODES = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB, 4: ImageReadMode.RGB_ALPHA}


@dataclass
class EncodedBatch:
    """A batch as the workers leave it: per image either JPEG bytes (1-D uint8) or decoded pixels (C, H, W uint8),
    with its crop box (top, left, height, width) and flip flag."""

    payloads: list[torch.Tensor]
    encoded: list[bool]
    boxes: torch.Tensor  # (B, 4) long
    flips: torch.Tensor  # (B,) bool
    paths: list[str]

    def __len__(self) -> int:
        return len(self.payloads)

    def pin_memory(self) -> EncodedBatch:
        return EncodedBatch([p.pin_memory() for p in self.payloads], self.encoded, self.boxes, self.flips, self.paths)


class EncodedImages:
    """A torch Dataset over an :class:`~emae.data.folder.ImageFiles` source whose items are
    ``(payload, is_jpeg, box, flip, path, label, skipped)``; it takes ``(index, seed)`` pairs like
    :class:`~emae.data.folder.TransformedImages`."""

    def __init__(self, source, size: tuple[int, int], scale: tuple[float, float], hflip: bool) -> None:
        self.source = source
        self.size = size
        self.scale = tuple(scale)
        self.hflip = hflip
        self.channels = {"L": 1, "RGB": 3, "RGBA": 4}[source.mode]

    def __len__(self) -> int:
        return len(self.source)

    def _read(self, path: str) -> tuple[torch.Tensor, bool, tuple[int, int]]:
        """(payload, is JPEG bytes, (height, width)); raises on files PIL cannot open."""
        with open(path, "rb") as f:
            data = f.read()
        with open_image(io.BytesIO(data)) as img:  # the header only
            fmt, mode, (w, h) = img.format, img.mode, img.size
        if fmt == "JPEG" and mode in JPEG_MODES and self.channels in (1, 3):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), True, (h, w)
        pixels = TF.pil_to_tensor(load_image(path, self.source.mode))
        return pixels, False, (pixels.shape[1], pixels.shape[2])

    def __getitem__(self, item):
        index, seed = item
        (payload, is_jpeg, (h, w)), i, skipped = self.source.read_first(index, self._read)
        path = self.source.paths[i]
        with torch.random.fork_rng(devices=[]):  # the same draws, in the same order, as the CPU transform
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues CUDA seeds (slow)
            box, flip = draw_crop(h, w, self.scale, self.hflip)
        label = self.source.labels[i] if self.source.labels else -1
        return payload, is_jpeg, box, flip, path, label, skipped


def collate_encoded(batch):
    payloads, encoded, boxes, flips, paths, labels, skipped = zip(*batch)
    enc = EncodedBatch(list(payloads), list(encoded), torch.tensor(boxes), torch.tensor(flips), list(paths))
    return enc, torch.tensor(labels), [p for s in skipped for p in s]


def _decode_jpegs(datas: list[torch.Tensor], mode: ImageReadMode, device: torch.device) -> list[torch.Tensor | None]:
    """Decode on ``device`` in one call; on failure, image by image, then on the host; None where all fail."""
    if not datas:
        return []
    try:
        return list(decode_jpeg(datas, mode=mode, device=device))
    except RuntimeError:
        out: list[torch.Tensor | None] = []
        for data in datas:
            try:
                out.append(decode_jpeg(data, mode=mode, device=device))
            except RuntimeError:
                try:
                    out.append(decode_image(data, mode=mode).to(device))
                except RuntimeError:
                    out.append(None)
        return out


def decode_batch(
    batch: EncodedBatch, size: tuple[int, int], mean: list[float], std: list[float], device: torch.device
) -> tuple[torch.Tensor, list[str]]:
    """The normalised (B, C, H, W) float batch on ``device`` and the paths that could not be decoded (a failed slot
    takes the next decodable image of the batch, as the CPU path takes the next readable file)."""
    channels = len(mean)
    mode = READ_MODES[channels]
    jpeg_slots = [i for i, e in enumerate(batch.encoded) if e]
    # the encoded bytes stay on the host: decode_jpeg reads them there and decodes on ``device`` (nvJPEG)
    decoded = _decode_jpegs([batch.payloads[i] for i in jpeg_slots], mode, device)
    images: list[torch.Tensor | None] = [None] * len(batch)
    for i, img in zip(jpeg_slots, decoded):
        images[i] = img
    for i, e in enumerate(batch.encoded):
        if not e:
            images[i] = batch.payloads[i].to(device, non_blocking=True)
    failed = [batch.paths[i] for i, img in enumerate(images) if img is None]
    if len(failed) == len(batch):
        raise DataError(f"no image of a batch could be decoded, e.g. {failed[0]}")
    order = [next(k % len(batch) for k in range(i, i + len(batch)) if images[k % len(batch)] is not None)
             for i in range(len(batch))]
    pixels = pad_to_batch([images[j] for j in order])  # one batched crop + resize + flip for the whole batch
    out = resized_crops(pixels, batch.boxes[order], size, batch.flips[order], levels=True)
    return normalize_levels(out, mean, std), failed
