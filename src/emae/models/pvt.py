"""PVT (v1 style) for UM-MAE, SimMIM and fine-tuning, as UM-MAE's ``models_mae_pvt.py`` builds it.

Non-overlapping 4x4-stride stem (no norm) and 2x2 conv merges; fixed 2-D sin-cos absolute positions of the full
stem grid, gathered at every token's true position and added after the mask token is in place; blocks of
spatial-reduction attention (keys and values from ``avg_pool(sr) -> 1x1 conv -> LayerNorm``) and a plain MLP; one
final norm. The reduction's weights do not depend on the ratio, so the ratios change between pre-training
([4, 2, 1, 1] on the compact grid) and fine-tuning ([8, 4, 2, 1] on the full grid) with no new layer; the
position table becomes trainable for fine-tuning, as in the reference's ``models_pvt.py``. LayerNorm eps 1e-5 in the
blocks (``PVTBlock`` is built without the ``norm_layer``), 1e-6 in the final norm, as the reference.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed
from torch import nn

from ..archs import PVT_PRETRAIN_SR, stage_grids
from .pos_embed import sincos_2d
from .pyramid import ConvMerge, PyramidEncoder, merge_coords
from .vit import run_blocks

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class SRAttention(nn.Module):
    """Attention of every token to the ``sr_ratio``-pooled grid (PVT's spatial reduction, the reference's way)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        r = x.transpose(1, 2).reshape(b, c, *hw)
        if self.sr_ratio > 1:
            r = F.avg_pool2d(r, self.sr_ratio)
        r = self.norm(self.sr(r).flatten(2).transpose(1, 2))
        k, v = self.kv(r).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class PVTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SRAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PVTStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, sr_ratio: int,
                 drop_paths: list[float], downsample: bool) -> None:
        super().__init__()
        self.downsample = ConvMerge(in_dim, dim, norm=False) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(PVTBlock(dim, heads, mlp_ratio, sr_ratio, dp) for dp in drop_paths[:depth])
        self.grad_checkpointing = False  # activation checkpointing of the blocks (train.activation_checkpointing)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(self.downsample, nn.Identity):
            x, coords = self.downsample(x), merge_coords(coords)
        b, h, w, c = x.shape
        x = run_blocks(self.blocks, x.reshape(b, h * w, c), self.grad_checkpointing, (h, w))
        return x.reshape(b, h, w, c), coords


class PVTEncoder(PyramidEncoder):
    def __init__(self, img_size: tuple[int, int], patch_size: int = 16, in_chans: int = 3,
                 dims: tuple[int, ...] = (64, 128, 320, 512), depths: tuple[int, ...] = (3, 4, 6, 3),
                 heads: tuple[int, ...] = (1, 2, 5, 8), mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
                 sr_ratios: tuple[int, ...] = PVT_PRETRAIN_SR, drop_path: float = 0.0, compact: bool = True) -> None:
        super().__init__(img_size, patch_size, in_chans, dims[0], compact)
        self.stem = PatchEmbed(None, self.stride, in_chans, dims[0], output_fmt="NHWC", strict_img_size=False)
        self.stem_grid = (img_size[0] // self.stride, img_size[1] // self.stride)  # the full image's stem tokens
        # fixed in pre-training (kept as a parameter so checkpoints carry it, like ViT's); fine-tuning trains it
        self.pos_embed = nn.Parameter(sincos_2d(dims[0], self.stem_grid, cls_token=False), requires_grad=False)
        stage_grids(self.grid, compact)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.stages = nn.ModuleList(
            PVTStage(dims[max(i - 1, 0)], dims[i], depths[i], heads[i], mlp_ratios[i], sr_ratios[i],
                     rates[sum(depths[:i]):], downsample=i > 0) for i in range(len(depths)))
        self.num_features = dims[-1]
        self.norm = LayerNorm(dims[-1])
        self.reset_parameters()

    @property
    def sr_ratios(self) -> list[int]:
        return [stage.blocks[0].attn.sr_ratio for stage in self.stages]

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], self.stem_grid, cls_token=False))

    def add_positions(self, tokens: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """The sin-cos entry of each stem token's true position (the reference compacts the table with the tokens)."""
        idx = (coords[..., 0] * self.stem_grid[1] + coords[..., 1]).long()
        return tokens + self.pos_embed[0][idx].to(tokens.dtype)
