"""Swin Transformer (T/S/B/L) for UM-MAE, SimMIM and fine-tuning, built from timm's Swin blocks.

timm's ``SwinTransformerBlock`` and ``PatchMerging`` as they are; only the window attention's bias changes: the
relative-position table is dropped and :class:`~emae.models.pyramid.PositionMLP` computes the bias from the true
coordinates of the tokens in each (shifted) window, per image. The MLP's shape does not depend on the window, so
a model pre-trained with window 8 on the compact grid loads into window 16 at fine-tuning unchanged.
Windows larger than a stage's grid shrink to the grid (no shift), as in Swin.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock, WindowAttention, window_partition
from torch import nn

from ..errors import ConfigError
from .pyramid import PositionMLP, PyramidEncoder, init_pyramid_weights, pool_coords, stage_grids
from .vit import run_blocks

# stage-1 width, depths, stage-1 heads (doubling every stage)
SWIN_SIZES: dict[str, tuple[int, tuple[int, ...], int]] = {
    "swin_t": (96, (2, 2, 6, 2), 3),
    "swin_s": (96, (2, 2, 18, 2), 3),
    "swin_b": (128, (2, 2, 18, 2), 4),
    "swin_l": (192, (2, 2, 18, 2), 6),
}


def stage_windows(grids: list[tuple[int, int]], window: int) -> list[int]:
    """The window of every stage (the window, or the whole grid when smaller); an error if it does not tile."""
    out = []
    for i, (h, w) in enumerate(grids):
        win = min(window, h, w)
        if h % win or w % win:
            raise ConfigError(f"model.window_size: {window} does not divide the {h}x{w} token grid of stage {i + 1} "
                              f"(the compact grid in UM-MAE pre-training); choose a window that tiles every stage")
        out.append(win)
    return out


class CoordWindowAttention(WindowAttention):
    """timm's window attention with a per-call bias (set by the block from coordinates) instead of the table."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True) -> None:
        super().__init__(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias)
        del self.relative_position_bias_table
        self.pos_mlp = PositionMLP(num_heads)
        self.bias: torch.Tensor | None = None

    def _get_rel_pos_bias(self) -> torch.Tensor:
        return self.bias


class CoordSwinBlock(SwinTransformerBlock):
    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, shift: bool,
                 mlp_ratio: float, drop_path: float) -> None:
        super().__init__(dim, resolution, num_heads, window_size=window, shift_size=window // 2 if shift else 0,
                         mlp_ratio=mlp_ratio, drop_path=drop_path)
        self.attn = CoordWindowAttention(dim, num_heads, self.window_size[0])

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C), coords (B, H, W, 2): the coordinates go through the same shift and windows as x."""
        if any(self.shift_size):
            coords = torch.roll(coords, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        win = window_partition(coords, self.window_size).reshape(-1, self.window_area, 2)
        self.attn.bias = self.attn.pos_mlp.bias(win, win).to(x.dtype)
        try:
            return super().forward(x)
        finally:
            self.attn.bias = None


class SwinStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, resolution: tuple[int, int], depth: int, heads: int, window: int,
                 mlp_ratio: float, drop_paths: list[float], downsample: bool) -> None:
        super().__init__()
        self.downsample = PatchMerging(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(CoordSwinBlock(dim, resolution, heads, window, i % 2 == 1, mlp_ratio, dp)
                                    for i, dp in enumerate(drop_paths[:depth]))
        self.grad_checkpointing = False  # activation checkpointing of the blocks (train.activation_checkpointing)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(self.downsample, nn.Identity):
            x, coords = self.downsample(x), pool_coords(coords, 2) / 2
        return run_blocks(self.blocks, x, self.grad_checkpointing, coords), coords


class SwinEncoder(PyramidEncoder):
    def __init__(self, img_size: tuple[int, int], patch_size: int = 16, in_chans: int = 3, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: int = 3, window_size: int = 8,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, compact: bool = True) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, compact)
        self.window_size = window_size
        self.stem = PatchEmbed(None, self.stride, in_chans, embed_dim, norm_layer=nn.LayerNorm, output_fmt="NHWC",
                               strict_img_size=False)
        grids = stage_grids(self.grid, compact)
        windows = stage_windows(grids, window_size)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.stages = nn.ModuleList(
            SwinStage(dims[max(i - 1, 0)], dims[i], grids[i], depths[i], num_heads * 2**i, windows[i], mlp_ratio,
                      rates[sum(depths[:i]):], downsample=i > 0) for i in range(len(depths)))
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(dims[-1])
        self.apply(init_pyramid_weights)
        self.init_tokens()
