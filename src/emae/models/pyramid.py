"""Shared parts of the pyramid encoders (Swin, PVT-v2) for masked image modelling on a regular grid.

A pyramid encoder takes an image-like input (the compact half-size image of UM-MAE's kept patches, or the full
image for SimMIM and fine-tuning), embeds it with a stem of stride ``p / 4`` (``p`` = ``model.patch_size``, the
mask / loss token), replaces hidden tokens with a learnable ``mask_token`` right after the stem, and runs 4 stages
(total stride ``8 p / 4 = 2 p``). Positions enter only through attention biases computed from the *true* token
coordinates: a :class:`PositionMLP` (2 -> 32 -> heads, ReLU, as in the UM-MAE reference) on
sign(d) * log(1 + |d|) of coordinate differences d. Coordinates are in units of the current stage's tokens; a
stage's coordinates are the 2x2 means of the previous stage's, halved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..masks import Mask
from ..masks.compact import compact_grid, pack_image, true_coords

NUM_STAGES = 4


def signed_log(d: torch.Tensor) -> torch.Tensor:
    return torch.sign(d) * torch.log1p(d.abs())


class PositionMLP(nn.Sequential):
    """Relative-position bias from coordinates: (.., 2) differences -> (.., heads)."""

    def __init__(self, num_heads: int, hidden: int = 32) -> None:
        super().__init__(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_heads))

    def bias(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q (B, N, 2), k (B, M, 2) coordinates -> (B, heads, N, M) attention bias."""
        return self(signed_log(q[:, :, None] - k[:, None])).permute(0, 3, 1, 2)


def grid_coords(batch: int, h: int, w: int, device=None) -> torch.Tensor:
    """(batch, h, w, 2) float (row, col) of a regular grid."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([rows, cols], dim=-1).float().expand(batch, -1, -1, -1)


def pool_coords(coords: torch.Tensor, k: int) -> torch.Tensor:
    """Mean coordinate of every k x k block, same units: (B, h, w, 2) -> (B, h/k, w/k, 2)."""
    if k == 1:
        return coords
    return F.avg_pool2d(coords.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1)


def stem_coords(coords: torch.Tensor, u: int) -> torch.Tensor:
    """Mask-token coordinates (B, h, w, 2) -> stem-token coordinates (B, h u, w u, 2): every mask token covers
    u x u stem tokens, at its true position times u plus their offset inside the patch."""
    offset = grid_coords(1, u, u, coords.device).repeat(1, coords.shape[1], coords.shape[2], 1)
    return coords.repeat_interleave(u, 1).repeat_interleave(u, 2) * u + offset


def stem_stride(patch_size: int) -> int:
    if patch_size % 4:
        raise ConfigError(f"model.patch_size: {patch_size} is not allowed for a pyramid encoder; it must be a multiple "
                          f"of 4 (the stem has stride patch_size / 4 and the last stage 2 x patch_size)")
    return patch_size // 4


def stage_grids(grid: tuple[int, int], compact: bool) -> list[tuple[int, int]]:
    """Token grid of every stage for a mask-token grid ``grid`` (halved when the encoder runs on the compact grid)."""
    h, w = compact_grid(grid) if compact else grid
    return [(h * 4 >> i, w * 4 >> i) for i in range(NUM_STAGES)]


class PyramidEncoder(nn.Module):
    """Stem + mask token + 4 stages + final norm; subclasses build ``stem`` and ``stages``.

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

    def init_tokens(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)

    def run_stages(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x, coords = stage(x, coords)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor, coords: torch.Tensor | None = None,
                         hidden: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W); coords (N, H/p, W/p, 2) true mask-token coordinates (None: a regular grid); hidden
        (N, H/p, W/p) 1 where the mask token replaces the tokens. Returns (N, H/2p, W/2p, C_last)."""
        tokens = self.stem(x)  # (N, h, w, D)
        u = self.patch_size // self.stride  # stem tokens per mask token side
        n, h, w, _ = tokens.shape
        coords = grid_coords(n, h, w, x.device) if coords is None else stem_coords(coords, u)
        if hidden is not None:
            hide = hidden.repeat_interleave(u, 1).repeat_interleave(u, 2).unsqueeze(-1).bool()
            tokens = torch.where(hide, self.mask_token.to(tokens.dtype), tokens)
        return self.run_stages(tokens, coords)

    def encode_masked(self, imgs: torch.Tensor, mask: Mask) -> torch.Tensor:
        """The masked-modelling forward: UM-MAE's compact grid, or SimMIM's full grid with mask tokens."""
        if self.compact:
            hidden = None if mask.secondary is None else mask.secondary.unflatten(1, compact_grid(self.grid))
            return self.forward_features(pack_image(imgs, mask, self.patch_size), true_coords(mask, self.grid), hidden)
        return self.forward_features(imgs, None, mask.mask.unflatten(1, self.grid))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_features(imgs)

    @torch.no_grad()
    def extract_features(self, imgs: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        """'mean' (global average of the last stage) or 'none' ((B, h, w, C) last-stage tokens); no cls token."""
        tokens = self.forward_features(imgs)
        if pool == "mean":
            return tokens.mean(dim=(1, 2))
        if pool == "none":
            return tokens
        raise ConfigError(f"pool: {pool!r} is not allowed for a pyramid encoder (no cls token); use 'mean' or 'none'")


def init_pyramid_weights(module: nn.Module) -> None:
    """Swin / PVT init: trunc-normal(0.02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
