"""Frozen dense features for the segmentation probe: the encoder's last feature map per image, extracted once
(batched, inference mode) and optionally cached on disk, and the bilinear interpolation of a map at label pixels.

The encoder is the frozen evaluation model (:func:`~emae.eval.backbone.frozen_encoder`: its final norm, position
embeddings resampled to the probe's resolution), used through timm's ``forward_intermediates``: the last map it
gives (a ViT: the last block's patch tokens at stride = patch size; Swin / PVT: the last stage at stride 32), with
the final norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.segmentation import SegmentationDataset, seg_collate
from ..engine.device import autocast
from ..interop.load import Loaded
from .backbone import frozen_encoder
from .features import cache_key, cached, checkpoint_identity


class FrozenDense(nn.Module):
    """A frozen encoder's last feature map: (B, C, H, W) images -> (B, D, H / s, W / s), final norm applied."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenDense:
        return super().train(False)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            maps = self.encoder.forward_intermediates(imgs, indices=1, norm=True, output_fmt="NCHW",
                                                      intermediates_only=True)
        return maps[-1]


def dense_encoder(loaded: Loaded, img_size: tuple[int, int]) -> FrozenDense:
    """The checkpoint's frozen encoder at ``img_size`` (the module inside the evaluation wrapper that has timm's
    ``forward_intermediates``)."""
    frozen = frozen_encoder(loaded, None, img_size)
    inner = next(m for m in frozen.modules() if hasattr(m, "forward_intermediates"))
    return FrozenDense(inner)


@torch.inference_mode()
def extract_maps(encoder: nn.Module, source, transform, batch_size: int, workers: int, device: torch.device,
                 precision: str = "fp32", progress: bool = False, desc: str = "features") -> torch.Tensor:
    """(N, D, h, w) float32 maps of every image of ``source`` (eval transform, file order), on the CPU."""
    loader = DataLoader(SegmentationDataset(source, transform), batch_size=batch_size, num_workers=workers,
                        collate_fn=seg_collate, persistent_workers=False)
    maps = []
    for imgs, _, _ in tqdm(loader, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True, leave=False):
        if not torch.is_tensor(imgs):
            raise ValueError("dense features need every image resized to one size (give the transform a size)")
        with autocast(device, precision):
            maps.append(encoder(imgs.to(device, non_blocking=True)).float().cpu())
    return torch.cat(maps).clone()


def cached_maps(loaded: Loaded, source, transform, name: str, encoder_fn, batch_size: int, workers: int,
                device: torch.device, precision: str, cache_dir: str | None, progress: bool) -> torch.Tensor:
    """:func:`extract_maps`, stored as ``<cache_dir>/<name>-<key>.pt`` when ``cache_dir`` is set; the key hashes the
    checkpoint, the model dims, the split and subset, the transform and the precision. ``encoder_fn()`` builds the
    encoder only when something must be extracted."""
    key = cache_key(checkpoint=checkpoint_identity(loaded.path), model=loaded.config.model, data=str(source.root),
                    n=len(source), subset=source.indices, transform=repr(transform), kind="dense-last-map-norm",
                    precision=precision)

    def compute():
        maps = extract_maps(encoder_fn(), source, transform, batch_size, workers, device, precision, progress,
                            desc=f"{name} features")
        return maps, torch.tensor(maps.shape)

    return cached(cache_dir, name, key, compute)[0]


def pixel_grid(rows: torch.Tensor, cols: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """grid_sample coordinates (1, 1, n, 2) of pixel centres (rows, cols) of an image of ``size`` (H, W)."""
    h, w = size
    x = (2 * cols.double() + 1) / w - 1
    y = (2 * rows.double() + 1) / h - 1
    return torch.stack([x, y], dim=-1).view(1, 1, -1, 2)


def features_at(fmap: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, D): the (D, h, w) map bilinearly upsampled to ``size`` (align_corners=False, as ``F.interpolate``), read
    at the pixels (rows, cols), without building the full-size map."""
    grid = pixel_grid(rows, cols, size).to(fmap.dtype)
    out = F.grid_sample(fmap[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.contiguous()


def sample_pixels(label: torch.Tensor, n: int, ignore_index: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of ``n`` labelled pixels of an (H, W) label map, drawn uniformly without replacement (all of
    them when there are fewer), in raster order."""
    idx = torch.nonzero(label.flatten() != ignore_index).squeeze(1)
    if idx.numel() > n:
        idx = idx[torch.randperm(idx.numel(), generator=generator)[:n]].sort().values
    return idx // label.shape[1], idx % label.shape[1]


__all__ = ["FrozenDense", "cached_maps", "dense_encoder", "extract_maps", "features_at", "pixel_grid", "sample_pixels"]
