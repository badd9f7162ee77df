"""MAE's pre-training augmentation (RandomResizedCrop, bicubic, + horizontal flip) done crop-first, in uint8.

torchvision decodes the whole image, then draws the crop box, then crops, resizes, flips and converts to float.
Here the box is drawn first, from the image's header size, with the same draws in the same order
(``RandomResizedCrop.get_params``, then the flip's ``torch.rand(1) < 0.5``), so the same sample seed gives the same
box and flip. That allows:

- **DCT-scaled decoding** (``data.draft``): when the box is at least twice the output on both sides, a JPEG is
  decoded at 1/2, 1/4 or 1/8 scale (libjpeg-turbo through PIL's ``draft``), the smallest that keeps the box at or
  above the output size; the box is then resized from the reduced image. Only crops that large are affected: the
  others (every crop of an image under twice the output size) are decoded and resized exactly as torchvision does.
- **uint8 out**: the worker sends (C, H, W) uint8, a quarter of float32's bytes; :func:`normalize_uint8` turns a
  batch into torchvision's ``ToTensor`` + ``Normalize`` floats on the device, bit for bit.

``data.resize`` chooses the resampler of crops decoded at full scale: ``pil`` (torchvision's numbers) or ``torch``
(torch's uint8 antialiased bicubic: about 3x faster than PIL's on this CPU, within one level of it). DCT-scaled
crops are resized by PIL from their fractional box either way. ``data.decoder=simplejpeg`` decodes JPEGs without
PIL's overhead (:mod:`emae.data.jpeg`): the same pixels, so the same samples.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from .folder import MAX_PIXELS, ImageFiles, check_regular, finish_decode, open_image
from .jpeg import decode_jpeg, read_header, resolve_decoder

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's RandomResizedCrop default: MAE keeps it
DCT_FACTORS = (8, 4, 2)  # the JPEG reductions PIL's draft offers
RESIZERS = ("pil", "torch")


def draw_crop(height: int, width: int, scale: tuple[float, float], hflip: bool) -> tuple[tuple[int, int, int, int], bool]:
    """(top, left, h, w) and the flip for an image of ``height`` x ``width``, drawn from the CPU generator exactly as
    ``RandomResizedCrop`` then ``RandomHorizontalFlip`` draw them (call it under the sample's seed)."""
    box = T.RandomResizedCrop.get_params(torch.empty(1, 1, 1).expand(1, height, width), list(scale), list(RATIO))
    flip = hflip and bool(torch.rand(1) < 0.5)
    return box, flip


def dct_factor(box: tuple[int, int, int, int], size: tuple[int, int]) -> int:
    """The largest JPEG reduction (8, 4, 2, else 1) that keeps the box at or above ``size`` (height, width)."""
    _, _, h, w = box
    return next((k for k in DCT_FACTORS if h >= k * size[0] and w >= k * size[1]), 1)


def to_uint8(img: Image.Image) -> torch.Tensor:
    """A PIL image as a (C, H, W) uint8 tensor (the values ``ToTensor`` scales to [0, 1])."""
    return F.pil_to_tensor(img)


class CropSampler:
    """Draws, decodes, crops, resizes and flips one sample into (C, H, W) uint8; call it under the sample's seed.

    ``from_file`` takes a path or file object (it reads the header first, for DCT scaling); ``from_image`` an image
    already decoded (the in-memory cache, the embedded digits)."""

    def __init__(self, size: tuple[int, int], scale: tuple[float, float], hflip: bool, draft: bool = True,
                 resize: str = "pil", decoder: str = "pil") -> None:
        self.size, self.scale, self.hflip = (int(size[0]), int(size[1])), tuple(scale), hflip
        self.draft, self.resize, self.decoder = draft, resize, resolve_decoder(decoder)

    def from_file(self, fp, mode: str) -> torch.Tensor:
        if self.decoder == "simplejpeg":
            if isinstance(fp, (str, bytes, os.PathLike)):
                with open(fp, "rb") as f:
                    data = f.read()
            else:
                data = fp.read()
            out = self._from_jpeg(data, mode)
            if out is not None:
                return out
            fp = io.BytesIO(data)
        with open_image(fp) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:  # decoded at a reduced size first (folder.decode_image): draw on that
                return self.from_image(finish_decode(img, mode))
            box, flip = draw_crop(height, width, self.scale, self.hflip)
            factor = dct_factor(box, self.size) if self.draft and img.format == "JPEG" else 1
            if factor > 1:
                chosen = img.draft(None, (width // factor, height // factor))
                factor = round(width / chosen[1][2]) if chosen else 1  # the reduction the decoder will apply
            return self._crop(finish_decode(img, mode), box, flip, factor)

    def from_bytes(self, data: bytes, mode: str) -> torch.Tensor:
        return self.from_file(io.BytesIO(data), mode)

    def _from_jpeg(self, data: bytes, mode: str) -> torch.Tensor | None:
        """The sample through simplejpeg, or None (not a JPEG it decodes as PIL does, or too large, or refused
        mid-decode) with the generator as it was, so that the PIL path draws the same crop."""
        header = read_header(data, mode)
        if header is None or header.width * header.height > MAX_PIXELS:
            return None
        state = torch.random.get_rng_state()
        box, flip = draw_crop(header.height, header.width, self.scale, self.hflip)
        factor = dct_factor(box, self.size) if self.draft else 1
        pixels = decode_jpeg(data, header, factor)
        if pixels is None:
            torch.random.set_rng_state(state)
            return None
        factor = round(header.width / pixels.shape[1])  # the reduction the decoder applied
        if factor == 1 and self.resize == "torch":
            return _torch_crop(torch.from_numpy(pixels), box, flip, self.size)
        if factor == 1:  # crop first: only the box becomes a PIL image (crop then resize, as torchvision does)
            top, left, h, w = box
            region = np.ascontiguousarray(pixels[top:top + h, left:left + w])
            return self._crop(Image.fromarray(region[..., 0] if mode == "L" else region), (0, 0, h, w), flip, 1)
        return self._crop(Image.fromarray(pixels[..., 0] if mode == "L" else pixels), box, flip, factor)

    def from_image(self, img: Image.Image) -> torch.Tensor:
        box, flip = draw_crop(img.height, img.width, self.scale, self.hflip)
        return self._crop(img, box, flip, 1)

    def _crop(self, img: Image.Image, box: tuple[int, int, int, int], flip: bool, factor: int) -> torch.Tensor:
        """Crop ``box`` (full-resolution coordinates) of ``img`` (decoded at 1 / ``factor``) to the output size."""
        top, left, h, w = box
        oh, ow = self.size
        if factor > 1:  # the box in the reduced image, to sub-pixel precision (PIL takes a fractional box)
            s = 1.0 / factor
            out = img.resize((ow, oh), Image.BICUBIC, box=(left * s, top * s, (left + w) * s, (top + h) * s))
        elif self.resize == "torch":
            return _torch_crop(_hwc(img), box, flip, self.size)
        else:  # torchvision's own calls: the same pixels
            out = F.resized_crop(img, top, left, h, w, [oh, ow], T.InterpolationMode.BICUBIC, antialias=True)
        return to_uint8(F.hflip(out) if flip else out)


def _hwc(img: Image.Image) -> torch.Tensor:
    """A read-only (H, W, C) uint8 view of a PIL image's pixels."""
    with warnings.catch_warnings():  # read only: the crop is resized into a new tensor
        warnings.simplefilter("ignore", UserWarning)
        pixels = torch.from_numpy(np.asarray(img))
    return pixels.view(img.height, img.width, -1)


def _torch_crop(pixels: torch.Tensor, box: tuple[int, int, int, int], flip: bool,
                size: tuple[int, int]) -> torch.Tensor:
    """``data.resize=torch``: crop (H, W, C) uint8 ``pixels`` and resize with torch's uint8 antialiased bicubic
    (channels-last, AVX2); within one level of PIL's result."""
    pixels = pixels.permute(2, 0, 1)  # a (C, H, W) view of the HWC buffer
    top, left, h, w = box
    region = pixels[None, :, top:top + h, left:left + w]
    out = torch.nn.functional.interpolate(region, size=list(size), mode="bicubic", antialias=True)[0]
    return (out.flip(-1) if flip else out).contiguous()


class CroppedImages:
    """A torch Dataset over an image source whose items are ``(uint8 image, label, skipped paths)``; it takes the
    ``(index, seed)`` pairs of :class:`~emae.data.loader.ResumableSampler` like
    :class:`~emae.data.folder.TransformedImages` and gives the same samples (same crops and flips: the same draws
    under the same seed), as uint8. Files are read crop-first (:meth:`CropSampler.from_file`); sources that hold
    decoded images (the cache, the embedded digits) are cropped from those."""

    def __init__(self, source, crop: CropSampler) -> None:
        self.source = source
        self.crop = crop

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        if isinstance(self.source, ImageFiles):
            def read(path: str) -> torch.Tensor:  # every attempt starts from the sample's seed, as the old path did
                check_regular(path)
                return self._seeded(seed, lambda: self.crop.from_file(path, self.source.mode))

            img, i, skipped = self.source.read_first(index, read)
            return img, (self.source.labels[i] if self.source.labels else -1), skipped
        pil, label, skipped = self.source.fetch(index)
        return self._seeded(seed, lambda: self.crop.from_image(pil)), label, skipped

    @staticmethod
    def _seeded(seed: int | None, run):
        if seed is None:
            return run()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also queues CUDA seeds (slow)
            return run()


def upsampled_share(width: int, height: int, size: tuple[int, int], scale: tuple[float, float],
                    samples: int = 4000, seed: int = 0) -> float:
    """The share of crops of a ``width`` x ``height`` image that are smaller than ``size`` on some side (resized up,
    so blurrier than the output's resolution): the cost of pre-resized shards, computed from the crop draws."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.set_state(g.get_state())
        boxes = [draw_crop(height, width, scale, False)[0] for _ in range(samples)]
    return sum(h < size[0] or w < size[1] for _, _, h, w in boxes) / samples


__all__ = ["CropSampler", "CroppedImages", "RESIZERS", "dct_factor", "draw_crop", "upsampled_share"]
