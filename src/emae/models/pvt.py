"""PVT-v2 for UM-MAE, SimMIM and fine-tuning, built from timm's PVT-v2 blocks and overlapping patch embeddings.

Spatial-reduction ratios are [4, 2, 1, 1] in UM-MAE pre-training (on the compact grid) and PVT's usual
[8, 4, 2, 1] on the full grid (SimMIM, fine-tuning), as the UM-MAE paper does. Attention gets a bias from the true
coordinates, :class:`~emae.models.pyramid.PositionMLP` on (query, reduced key) pairs; a reduced key's coordinate is
the mean over its sr x sr block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import Attention, Block, OverlapPatchEmbed
from torch import nn

from .pyramid import PositionMLP, PyramidEncoder, init_pyramid_weights, pool_coords, stage_grids
from .vit import run_blocks

# widths, depths, heads, mlp ratios (timm / the PVT-v2 paper); pvt_v2_s is PVT-S's size (= b2)
PVT_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[float, ...]]] = {
    "pvt_v2_b0": ((32, 64, 160, 256), (2, 2, 2, 2), (1, 2, 5, 8), (8, 8, 4, 4)),
    "pvt_v2_b1": ((64, 128, 320, 512), (2, 2, 2, 2), (1, 2, 5, 8), (8, 8, 4, 4)),
    "pvt_v2_s": ((64, 128, 320, 512), (3, 4, 6, 3), (1, 2, 5, 8), (8, 8, 4, 4)),
    "pvt_v2_b2": ((64, 128, 320, 512), (3, 4, 6, 3), (1, 2, 5, 8), (8, 8, 4, 4)),
}
PRETRAIN_SR = (4, 2, 1, 1)  # UM-MAE, compact grid
FULL_SR = (8, 4, 2, 1)  # full grid: SimMIM and fine-tuning


class CoordAttention(Attention):
    """timm's PVT-v2 spatial-reduction attention plus a bias from coordinates (set by the block)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__(dim, num_heads, sr_ratio, qkv_bias=True)
        self.pos_mlp = PositionMLP(num_heads)
        self.bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        if self.sr is not None:
            x = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, *feat_size)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class CoordPVTBlock(Block):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float) -> None:
        super().__init__(dim, num_heads, mlp_ratio, sr_ratio, qkv_bias=True, drop_path=drop_path)
        self.attn = CoordAttention(dim, num_heads, sr_ratio)
        self.sr_ratio = sr_ratio

    def forward(self, x: torch.Tensor, feat_size: list[int], coords: torch.Tensor) -> torch.Tensor:
        keys = pool_coords(coords, self.sr_ratio).flatten(1, 2)
        self.attn.bias = self.attn.pos_mlp.bias(coords.flatten(1, 2), keys).to(x.dtype)
        try:
            return super().forward(x, feat_size)
        finally:
            self.attn.bias = None


class PVTStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, sr_ratio: int,
                 drop_paths: list[float], downsample: bool) -> None:
        super().__init__()
        self.downsample = OverlapPatchEmbed(3, 2, in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(CoordPVTBlock(dim, heads, mlp_ratio, sr_ratio, dp) for dp in drop_paths[:depth])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.grad_checkpointing = False  # activation checkpointing of the blocks (train.activation_checkpointing)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(self.downsample, nn.Identity):
            x, coords = self.downsample(x.permute(0, 3, 1, 2)), pool_coords(coords, 2) / 2
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        x = run_blocks(self.blocks, x, self.grad_checkpointing, [h, w], coords)
        return self.norm(x).reshape(b, h, w, c), coords


class PVTEncoder(PyramidEncoder):
    def __init__(self, img_size: tuple[int, int], patch_size: int = 16, in_chans: int = 3,
                 dims: tuple[int, ...] = (64, 128, 320, 512), depths: tuple[int, ...] = (3, 4, 6, 3),
                 heads: tuple[int, ...] = (1, 2, 5, 8), mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
                 sr_ratios: tuple[int, ...] = PRETRAIN_SR, drop_path: float = 0.0, compact: bool = True) -> None:
        super().__init__(img_size, patch_size, in_chans, dims[0], compact)
        # PVT-v2's stem: overlapping conv, kernel 2 * stride - 1 (7 at stride 4; 3 at stride 1)
        self.stem = OverlapPatchEmbed(max(2 * self.stride - 1, 3), self.stride, in_chans, dims[0])
        stage_grids(self.grid, compact)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.stages = nn.ModuleList(
            PVTStage(dims[max(i - 1, 0)], dims[i], depths[i], heads[i], mlp_ratios[i], sr_ratios[i],
                     rates[sum(depths[:i]):], downsample=i > 0) for i in range(len(depths)))
        self.num_features = dims[-1]
        self.norm = nn.Identity()  # every stage ends with its own norm
        self.apply(init_pyramid_weights)
        self.init_tokens()
