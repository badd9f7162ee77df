"""Semantic segmentation on any encoder with timm's ``forward_intermediates``: a neck to a feature pyramid, a light
UperNet-style head, logits upsampled (bilinear) to the input size.

The backbone is probed once (a zero image at the fine-tuning size, in eval mode, no gradients): the maps it gives
and their strides decide the neck, with no test of the encoder's family.

- **One stride** (a plain ViT: every block's map at stride = patch size): the last block's map goes through ViTDet's
  simple feature pyramid (:class:`SimpleFeaturePyramid`, Li et al. 2022): maps at strides 4, 8, 16, 32 by 2x2
  stride-2 deconvolutions (LayerNorm + GELU between two) or max-pooling, relative to the patch size, each followed
  by a 1x1 and a 3x3 convolution with LayerNorm (no bias), as detectron2's ``SimpleFeaturePyramid``.
- **Several strides** (Swin, PVT): the last map of each stride (the 4 stage outputs) goes to the head as it is.

:class:`UperHead` (mmseg's ``UPerHead``): a 1x1 lateral convolution per level to ``head_dim`` (the coarsest level
through a pyramid pooling module instead, if ``ppm``), top-down addition (bilinear upsampling to the finer level's
size, so odd sizes such as 11x15 -> 5x7 work), a 3x3 convolution per level, every level upsampled to the finest and
concatenated, a 3x3 fuse, dropout, a 1x1 classifier. Its convolutions have LayerNorm (channels) + ReLU instead of
mmseg's BatchNorm, so a sample's logits do not depend on the rest of its batch.

Layer-wise lr decay: :meth:`SegmentationModel.group_matcher` is the backbone's, under ``backbone.``, with the neck
and head in the backbone's top group; timm's ``create_optimizer_v2(model, "adamw", layer_decay=d)`` (what
``emae finetune`` calls) then gives the backbone's layers decay^(top - id) and the neck and head scale 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from ..errors import ConfigError

PYRAMID_STRIDES = (4, 8, 16, 32)
PPM_SCALES = (1, 2, 3, 6)
TOP_GROUP = (100000,)  # the layer-id suffix that puts the neck and head in the backbone's last group


def conv_norm(in_dim: int, out_dim: int, kernel: int, act: bool = True) -> nn.Sequential:
    """Conv (no bias) + LayerNorm over channels (+ ReLU)."""
    layers = [nn.Conv2d(in_dim, out_dim, kernel, padding=kernel // 2, bias=False), LayerNorm2d(out_dim)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if act else nn.Sequential(*layers)


def _power_of_two(n: float) -> bool:
    return n >= 1 and float(n).is_integer() and (int(n) & (int(n) - 1)) == 0


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: one (B, C, H/s, W/s) map -> (B, out_dim, H/t, W/t) for every t in
    ``strides``. Finer levels come from log2(s/t) deconvolutions (each halving the width), coarser ones from
    max-pooling by t/s, the same level from the map itself."""

    def __init__(self, in_dim: int, in_stride: int, out_dim: int = 256,
                 strides: tuple[int, ...] = PYRAMID_STRIDES) -> None:
        super().__init__()
        self.in_stride, self.strides = in_stride, tuple(strides)
        self.levels = nn.ModuleList()
        for t in self.strides:
            if not _power_of_two(max(t, in_stride) / min(t, in_stride)):
                raise ConfigError(f"simple feature pyramid: stride {t} from a map at stride {in_stride} needs a "
                                  f"power-of-two ratio (a ViT with patch size 4, 8, 16 or 32)")
            ops: list[nn.Module] = []
            dim = in_dim
            if t < in_stride:
                for i in range(int(math.log2(in_stride // t))):
                    if i:
                        ops += [LayerNorm2d(dim), nn.GELU()]
                    ops.append(nn.ConvTranspose2d(dim, max(dim // 2, 1), kernel_size=2, stride=2))
                    dim = max(dim // 2, 1)
            elif t > in_stride:
                ops.append(nn.MaxPool2d(kernel_size=t // in_stride, stride=t // in_stride))
            ops += [conv_norm(dim, out_dim, 1, act=False), conv_norm(out_dim, out_dim, 3, act=False)]
            self.levels.append(nn.Sequential(*ops))

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        (x,) = maps
        return [level(x) for level in self.levels]


class PyramidPooling(nn.Module):
    """PSPNet's pooling module (mmseg's ``PPM`` + bottleneck): the map, average-pooled to each of ``scales`` (square
    grids), 1x1 conv, upsampled back, concatenated with the map, 3x3 conv to ``dim``."""

    def __init__(self, in_dim: int, dim: int, scales: tuple[int, ...] = PPM_SCALES) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_norm(in_dim, dim, 1)) for s in scales)
        self.bottleneck = conv_norm(in_dim + len(scales) * dim, dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(p(x), size=size, mode="bilinear", align_corners=False) for p in self.pools]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UperHead(nn.Module):
    """Maps at increasing strides -> logits (B, K, h, w) at the finest map's size (see the module doc)."""

    def __init__(self, in_dims: list[int], num_classes: int, dim: int = 128, ppm: bool = True,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_dims[-1], dim) if ppm else None
        lateral = in_dims[:-1] if ppm else in_dims
        self.laterals = nn.ModuleList(conv_norm(d, dim, 1) for d in lateral)
        self.fpn_convs = nn.ModuleList(conv_norm(dim, dim, 3) for _ in lateral)
        self.fuse = conv_norm(len(in_dims) * dim, dim, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        lat = [conv(x) for conv, x in zip(self.laterals, maps)]
        if self.ppm is not None:
            lat.append(self.ppm(maps[-1]))
        for i in range(len(lat) - 1, 0, -1):  # top-down
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="bilinear",
                                                    align_corners=False)
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat)] + lat[len(self.fpn_convs):]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))


def map_stride(size: tuple[int, int], grid: tuple[int, int]) -> int:
    """Pixels per map cell: exact where a side divides, else the nearest power of two (stride-2 merges floor odd
    sides: 176 px -> 5 rows at stride 32)."""
    for s, g in zip(size, grid):
        if s % g == 0:
            return s // g
    return 2 ** round(math.log2(size[0] / grid[0]))


@torch.no_grad()
def dense_levels(backbone: nn.Module, img_size: tuple[int, int], in_chans: int = 3,
                 norm: bool = True) -> list[tuple[int, int, int]]:
    """(index, channels, stride) of every map ``backbone.forward_intermediates`` gives for a zero image of
    ``img_size``, run once in eval mode (no gradients, no random numbers drawn)."""
    was_training = backbone.training
    p = next(backbone.parameters())
    x = torch.zeros(1, in_chans, *img_size, device=p.device, dtype=p.dtype)
    try:
        backbone.eval()
        maps = backbone.forward_intermediates(x, indices=None, norm=norm, output_fmt="NCHW", intermediates_only=True)
    finally:
        backbone.train(was_training)
    return [(i, m.shape[1], map_stride(tuple(img_size), tuple(m.shape[-2:]))) for i, m in enumerate(maps)]


def _prefixed(spec, prefix: str = "backbone"):
    """A timm group-matcher spec (a regex, or a list of (regex, suffix)) for the parameters under ``prefix.``."""
    def one(pattern: str) -> str:
        return rf"^{prefix}\.(?:{pattern.replace('^', '')})"

    if isinstance(spec, str):
        return one(spec)
    return [(one(p), suffix) for p, suffix in spec]


class SegmentationModel(nn.Module):
    """``backbone`` (anything with timm's ``forward_intermediates``, built for ``img_size``) + neck + UperNet head;
    ``forward(images)`` -> logits (B, num_classes, H, W) at the input size. ``norm``: the backbone's final norm on
    the maps that have it (timm: every map; Swin / PVT: the last stage). Attributes: ``indices`` (the maps used),
    ``feature_strides`` and ``feature_dims`` (what the head receives), ``single_scale`` (True: a ViT's one map
    through the simple feature pyramid)."""

    def __init__(self, backbone: nn.Module, num_classes: int, img_size: tuple[int, int], in_chans: int = 3,
                 neck_dim: int = 256, head_dim: int = 128, ppm: bool = True, dropout: float = 0.1,
                 norm: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes: {num_classes} must be positive")
        if hasattr(backbone, "reset_classifier"):
            backbone.reset_classifier(0)  # no classifier head: its weights would never get a gradient
        self.backbone, self.num_classes, self.norm = backbone, num_classes, norm
        self.img_size = tuple(img_size)
        levels = dense_levels(backbone, self.img_size, in_chans, norm)
        strides = sorted({s for _, _, s in levels})
        self.single_scale = len(strides) == 1
        if self.single_scale:
            index, dim, stride = levels[-1]
            self.indices = [index]
            self.neck: nn.Module = SimpleFeaturePyramid(dim, stride, neck_dim)
            self.feature_strides, self.feature_dims = list(PYRAMID_STRIDES), [neck_dim] * len(PYRAMID_STRIDES)
        else:
            last = {s: (i, d) for i, d, s in levels}  # the last map of every stride
            self.indices = [last[s][0] for s in strides]
            self.neck = nn.Identity()
            self.feature_strides, self.feature_dims = strides, [last[s][1] for s in strides]
        self.decode_head = UperHead(self.feature_dims, num_classes, head_dim, ppm, dropout)

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The maps the head receives, finest first."""
        maps = self.backbone.forward_intermediates(images, indices=self.indices, norm=self.norm, output_fmt="NCHW",
                                                   intermediates_only=True)
        return self.neck(list(maps))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.forward_features(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def group_matcher(self, coarse: bool = False) -> dict:
        """The backbone's layer groups under ``backbone.``; the neck and the head join its last (top) group."""
        groups = {name: _prefixed(spec) for name, spec in self.backbone.group_matcher(coarse).items()}
        last = list(groups)[-1]
        spec = groups[last] if isinstance(groups[last], list) else [(groups[last], None)]
        groups[last] = [*spec, (r"^neck\.|^decode_head\.", TOP_GROUP)]
        return groups

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in inner}


__all__ = ["PPM_SCALES", "PYRAMID_STRIDES", "PyramidPooling", "SegmentationModel", "SimpleFeaturePyramid", "UperHead",
           "dense_levels", "map_stride"]
