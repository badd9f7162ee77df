"""Swin Transformer (T/S/B/L) for UM-MAE, SimMIM and fine-tuning, as UM-MAE's ``models_mae_swin.py`` builds it.

timm's ``SwinTransformerBlock`` with one change: the relative-position table is dropped and
:class:`~emae.models.pyramid.PositionMLP` computes the bias from the true coordinates of the tokens in each
(shifted) window, per image (the regular grid of SimMIM and fine-tuning once for the whole batch, as the reference
does). The MLP's shape does not depend on the window, so a model pre-trained with window 8 on the compact grid loads
into window 16 at fine-tuning unchanged. Stem: 4x4-stride conv + LayerNorm; merges: LayerNorm + 2x2 conv (the
reference's ``PatchMerge``, not timm's ``PatchMerging``). Windows larger than a stage's grid shrink to it (no shift).
LayerNorm eps as the reference has them: 1e-6 in the stem, the merges and the final norm (its ``norm_layer``), the
default 1e-5 inside the blocks (``SwinBlock`` is built without it).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention, window_partition
from torch import nn

from ..archs import stage_grids, stage_windows
from .pyramid import ConvMerge, PositionMLP, PyramidEncoder, merge_coords
from .vit import run_blocks

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class CoordWindowAttention(WindowAttention):
    """timm's window attention with a per-call bias (set by the block from coordinates) instead of the table."""

    def __init__(self, dim: int, num_heads: int, window_size: int, pos_hidden: int = 32) -> None:
        super().__init__(dim, num_heads, window_size=window_size, qkv_bias=True)
        del self.relative_position_bias_table
        self.pos_mlp = PositionMLP(num_heads, pos_hidden)
        self.bias: torch.Tensor | None = None

    def _get_rel_pos_bias(self) -> torch.Tensor:
        return self.bias


class CoordSwinBlock(SwinTransformerBlock):
    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, shift: bool,
                 mlp_ratio: float, drop_path: float, pos_hidden: int = 32) -> None:
        super().__init__(dim, resolution, num_heads, window_size=window, shift_size=window // 2 if shift else 0,
                         mlp_ratio=mlp_ratio, drop_path=drop_path)
        self.attn = CoordWindowAttention(dim, num_heads, self.window_size[0], pos_hidden)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C), coords (B or 1, H, W, 2): the coordinates go through the same shift and windows as x."""
        if any(self.shift_size):
            coords = torch.roll(coords, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        win = window_partition(coords, self.window_size).reshape(-1, self.window_area, 2)
        bias = self.attn.pos_mlp.bias(win, win).to(x.dtype)
        if coords.shape[0] != x.shape[0]:  # one regular grid for the batch: the same bias for every image
            bias = bias.repeat(x.shape[0], 1, 1, 1)
        self.attn.bias = bias
        try:
            return super().forward(x)
        finally:
            self.attn.bias = None


class SwinStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, resolution: tuple[int, int], depth: int, heads: int, window: int,
                 mlp_ratio: float, drop_paths: list[float], downsample: bool, pos_hidden: int = 32) -> None:
        super().__init__()
        self.downsample = ConvMerge(in_dim, dim, norm=True) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            CoordSwinBlock(dim, resolution, heads, window, i % 2 == 1, mlp_ratio, dp, pos_hidden)
            for i, dp in enumerate(drop_paths[:depth]))
        self.grad_checkpointing = False  # activation checkpointing of the blocks (train.activation_checkpointing)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(self.downsample, nn.Identity):
            x, coords = self.downsample(x), merge_coords(coords)
        return run_blocks(self.blocks, x, self.grad_checkpointing, coords), coords


class SwinEncoder(PyramidEncoder):
    def __init__(self, img_size: tuple[int, int], patch_size: int = 16, in_chans: int = 3, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: int = 3, window_size: int = 8,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, compact: bool = True, pos_hidden: int = 32) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, compact)
        self.window_size = window_size
        self.stem = PatchEmbed(None, self.stride, in_chans, embed_dim, norm_layer=LayerNorm, output_fmt="NHWC",
                               strict_img_size=False)
        grids = stage_grids(self.grid, compact)
        windows = stage_windows(grids, window_size)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.stages = nn.ModuleList(
            SwinStage(dims[max(i - 1, 0)], dims[i], grids[i], depths[i], num_heads * 2**i, windows[i], mlp_ratio,
                      rates[sum(depths[:i]):], downsample=i > 0, pos_hidden=pos_hidden) for i in range(len(depths)))
        self.num_features = dims[-1]
        self.norm = LayerNorm(dims[-1])
        self.reset_parameters()

    def hidden_token(self) -> torch.Tensor:
        """UM-MAE's secondary-mask token goes through the stem's norm (models_mae_swin.py
        ``self.patch_embed.norm(self.vis_mask_token)``); SimMIM's replaces the normalised tokens as it is
        (models_simmim_swin.py)."""
        return self.stem.norm(self.mask_token) if self.compact else self.mask_token
