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
    kept patch, in compact raster order, which is ``Mask.ids_keep``'s order (models_mae_swin.py / models_mae_pvt.py
    ``decoder_embed`` + ``decoder_expand``). Then MAE's light decoder on the kept tokens and a mask token at every
    removed patch, with no cls token, as the reference. Every kept token gets the position of its true patch; the
    reference adds the positions of the kept patches in *raster* order to the tokens in compact order, which
    differs whenever a row of cells keeps tokens in both of its rows (SPEC §3 "Caution"; tested)."""

    cls_token = False

    def __init__(self, grid: tuple[int, int], encoder_dim: int, out_dim: int, embed_dim: int = 512, depth: int = 2,
                 num_heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__(grid, encoder_dim, out_dim, embed_dim, depth, num_heads, mlp_ratio)
        self.embed = nn.Linear(encoder_dim, 4 * embed_dim)
        init_mae_weights(self.embed)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (N, h, w, C) last-stage tokens -> (N, L, out_dim) predictions in image order."""
        return self.predict(self.unshuffle(shuffle_tokens(self.embed(latent)), ids_restore) + self.pos_embed)


class SimMIMHead(nn.Module):
    """SimMIM's light head: a linear map of every last-stage token (stride 2p) to the pixels of its 2x2 patches, laid
    out by PixelShuffle(2) (models_simmim_swin.py / models_simmim_pvt.py ``decoder_pred`` + ``decoder_shuffle``)."""

    def __init__(self, encoder_dim: int, out_dim: int) -> None:
        super().__init__()
        self.pred = nn.Linear(encoder_dim, 4 * out_dim)
        init_mae_weights(self.pred)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor | None = None) -> torch.Tensor:
        """latent (N, h, w, C) -> (N, 2h * 2w, out_dim) predictions for every patch, image order."""
        return shuffle_tokens(self.pred(latent))
