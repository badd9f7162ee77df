"""Heads for pyramid encoders: UM-MAE's decoder (back to one token per kept patch, then MAE's light decoder) and
SimMIM's linear prediction head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import MAEDecoder
from .init import init_mae_weights


def shuffle_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, h, w, 4 D) -> (N, 2h * 2w, D): PixelShuffle(2), tokens in raster order of the (2h, 2w) grid."""
    return F.pixel_shuffle(x.permute(0, 3, 1, 2), 2).flatten(2).transpose(1, 2)


class UMDecoder(MAEDecoder):
    """Linear(C -> 4 D) + PixelShuffle(2) turns the last stage (stride 2p on the compact grid) into one token per
    kept patch, in compact raster order, which is ``Mask.ids_keep``'s order. :meth:`MAEDecoder.decode` then
    appends mask tokens, un-shuffles with ``ids_restore`` and adds the position embedding in *image* order, so
    every kept token gets the position of its true patch (the reference adds positions to the visible tokens in
    compact raster order instead). The cls slot holds the mean of the kept tokens."""

    def __init__(self, grid: tuple[int, int], encoder_dim: int, out_dim: int, embed_dim: int = 512, depth: int = 2,
                 num_heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__(grid, encoder_dim, out_dim, embed_dim, depth, num_heads, mlp_ratio)
        self.embed = nn.Linear(encoder_dim, 4 * embed_dim)
        init_mae_weights(self.embed)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (N, h, w, C) last-stage tokens -> (N, L, out_dim) predictions in image order."""
        x = shuffle_tokens(self.embed(latent))
        return self.decode(torch.cat([x.mean(dim=1, keepdim=True), x], dim=1), ids_restore)


class SimMIMHead(nn.Module):
    """SimMIM's light head: a linear map of every last-stage token (stride 2p) to the pixels of its 2x2 patches."""

    def __init__(self, encoder_dim: int, out_dim: int) -> None:
        super().__init__()
        self.pred = nn.Linear(encoder_dim, 4 * out_dim)
        init_mae_weights(self.pred)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor | None = None) -> torch.Tensor:
        """latent (N, h, w, C) -> (N, 2h * 2w, out_dim) predictions for every patch, image order."""
        return shuffle_tokens(self.pred(latent))
