"""Shared parts of the pyramid encoders (Swin, PVT) for masked image modelling, as UM-MAE's reference builds them.

A pyramid encoder takes an image-like input (the compact half-size image of UM-MAE's kept patches, or the full
image for SimMIM and fine-tuning), embeds it with a non-overlapping stem of stride ``p / 4`` (``p`` =
``model.patch_size``, the mask / loss token), replaces hidden tokens with a learnable ``mask_token`` right after the
stem, and runs 4 stages of non-overlapping 2x2 merges (total stride ``2 p``). Nothing overlaps a token boundary
before the mask token is in place, so no hidden pixel reaches a visible token.

Every stem token carries its *true* (row, col) on the full stem grid; a merged token takes the coordinate of its
top-left input, halved (the reference's ``pos_hw[:, 0::2, 0::2] / 2``). Swin turns coordinate differences into an
attention bias (:class:`PositionMLP`), PVT gathers a fixed sin-cos table at them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..archs import stem_stride
from ..masks import Mask
from ..masks.compact import compact_grid, pack_image, true_coords
from .init import init_mae_weights, init_patch_embed
from .vit import pool_tokens


def signed_log(d: torch.Tensor) -> torch.Tensor:
    return torch.sign(d) * torch.log1p(d.abs())


class PositionMLP(nn.Sequential):
    """Relative-position bias from coordinates (the reference's ``posmlp``: 1x1 convs 2 -> hidden -> heads, ReLU, on
    sign(d) log(1 + |d|) of d = key - query)."""

    def __init__(self, num_heads: int, hidden: int = 32) -> None:
        super().__init__(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_heads))

    def bias(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q (B, N, 2), k (B, M, 2) coordinates -> (B, heads, N, M) attention bias."""
        d = (k[:, None] - q[:, :, None]).to(self[0].weight.dtype)  # coordinates are float32
        return self(signed_log(d)).permute(0, 3, 1, 2)


def grid_coords(batch: int, h: int, w: int, device=None) -> torch.Tensor:
    """(batch, h, w, 2) float (row, col) of a regular grid."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([rows, cols], dim=-1).float().expand(batch, -1, -1, -1)


def merge_coords(coords: torch.Tensor) -> torch.Tensor:
    """Coordinates after a 2x2 merge, in the new stage's units: the top-left input's, halved (B, h/2, w/2, 2)."""
    return coords[:, 0::2, 0::2] / 2


def stem_coords(coords: torch.Tensor, u: int) -> torch.Tensor:
    """Mask-token coordinates (B, h, w, 2) -> stem-token coordinates (B, h u, w u, 2): every mask token covers
    u x u stem tokens, at its true position times u plus their offset inside the patch."""
    offset = grid_coords(1, u, u, coords.device).repeat(1, coords.shape[1], coords.shape[2], 1)
    return coords.repeat_interleave(u, 1).repeat_interleave(u, 2) * u + offset


class ConvMerge(nn.Module):
    """The reference's ``PatchMerge``: (optional LayerNorm on each token, then) a 2x2 stride-2 convolution;
    (B, H, W, C_in) -> (B, H/2, W/2, C_out). Swin normalises first, PVT does not."""

    def __init__(self, in_dim: int, out_dim: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, eps=1e-6) if norm else nn.Identity()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PyramidEncoder(nn.Module):
    """Stem + mask token + positions + 4 stages + final norm; subclasses build ``stem`` and ``stages``.

    ``compact`` True: UM-MAE (runs on the packed kept patches); False: SimMIM and fine-tuning (full image).
    """

    stem: nn.Module
    stages: nn.ModuleList
    norm: nn.Module

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int, compact: bool):
        super().__init__()
        self.patch_size, self.in_chans, self.compact = patch_size, in_chans, compact
        self.img_size = tuple(img_size)
        self.grid: tuple[int, int] = (img_size[0] // patch_size, img_size[1] // patch_size)  # mask tokens, full image
        self.stride = stem_stride(patch_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, embed_dim))

    def hidden_token(self) -> torch.Tensor:
        """What replaces a hidden stem token (the raw mask token; Swin's UM-MAE normalises it)."""
        return self.mask_token

    def add_positions(self, tokens: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Absolute positions after the mask token is in place (PVT); Swin has none."""
        return tokens

    def run_stages(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x, coords = stage(x, coords)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor, coords: torch.Tensor | None = None,
                         hidden: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W); coords (N, H/p, W/p, 2) true mask-token coordinates (None: the regular grid, shared by the
        batch); hidden (N, H/p, W/p) 1 where the mask token replaces the tokens. Returns (N, H/2p, W/2p, C_last)."""
        tokens = self.stem(x)  # (N, h, w, D)
        u = self.patch_size // self.stride  # stem tokens per mask token side
        _, h, w, _ = tokens.shape
        coords = grid_coords(1, h, w, x.device) if coords is None else stem_coords(coords, u)
        if hidden is not None:
            hide = hidden.repeat_interleave(u, 1).repeat_interleave(u, 2).unsqueeze(-1).bool()
            tokens = torch.where(hide, self.hidden_token().to(tokens.dtype), tokens)
        return self.run_stages(self.add_positions(tokens, coords), coords)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's contract for dense heads, on the regular grid (no masking): the outputs of the stages ``indices``
        (an int: the last n; None: all 4) as (B, C_i, H / s_i, W / s_i) maps (``output_fmt`` "NHWC": as they are),
        strides ``s_i`` = stem stride x 2^i; ``norm`` puts the final norm on the last stage's. With
        ``intermediates_only`` False, also the final (normalised) last-stage tokens, as ``forward_features``."""
        from timm.models._features import feature_take_indices

        take, last = feature_take_indices(len(self.stages), indices)
        tokens = self.stem(x)
        coords = grid_coords(1, tokens.shape[1], tokens.shape[2], x.device)
        x = self.add_positions(tokens, coords)
        out = []
        for i, stage in enumerate(self.stages):
            x, coords = stage(x, coords)
            if i in take:
                y = self.norm(x) if norm and i == len(self.stages) - 1 else x
                out.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        return out if intermediates_only else (self.norm(x), out)

    @property
    def feature_strides(self) -> list[int]:
        """Pixels per token of each stage's output."""
        return [self.stride * 2**i for i in range(len(self.stages))]

    @property
    def feature_dims(self) -> list[int]:
        return [stage.blocks[0].norm1.normalized_shape[0] for stage in self.stages]

    def encode_masked(self, imgs: torch.Tensor, mask: Mask) -> torch.Tensor:
        """The masked-modelling forward: UM-MAE's compact grid (secondary-masked tokens hidden), or SimMIM's full
        grid with every removed (and, for uniform masks, secondary-masked) token hidden."""
        if self.compact:
            hidden = None if mask.secondary is None else mask.secondary.unflatten(1, compact_grid(self.grid))
            return self.forward_features(pack_image(imgs, mask, self.patch_size), true_coords(mask, self.grid), hidden)
        hidden = mask.mask
        if mask.secondary is not None:
            hidden = hidden.scatter(1, mask.ids_keep, mask.secondary.to(hidden.dtype))
        return self.forward_features(imgs, None, hidden.unflatten(1, self.grid))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_features(imgs)

    @torch.no_grad()
    def extract_features(self, imgs: torch.Tensor, pool: str = "avg") -> torch.Tensor:
        """'avg' (global average of the last stage) or 'none' ((B, h, w, C) last-stage tokens); no cls token."""
        return pool_tokens(self.forward_features(imgs), pool, cls_token=False)

    def reset_parameters(self) -> None:
        """The reference's init (models_mae_swin.py / models_mae_pvt.py ``initialize_weights``): mask token
        normal(0.02); xavier-uniform Linear layers, zero biases, unit LayerNorms; He-normal (fan-out) convolutions,
        the position MLP included (1x1 convs there); the stem conv xavier-uniform as the Linear layer it is."""
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_mae_weights)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, PositionMLP):
                for layer in (module[0], module[2]):
                    nn.init.normal_(layer.weight, std=math.sqrt(2.0 / layer.out_features))
                    nn.init.zeros_(layer.bias)
        init_patch_embed(self.stem.proj)
