"""MAE's light decoder: project, fill removed positions with a shared mask token, unshuffle, predict pixels.

State-dict keys map one to one onto the official ``decoder_*`` keys (``embed`` <-> ``decoder_embed``, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from .init import init_mae_weights
from .pos_embed import sincos_2d
from .vit import LayerNorm, norm_of_blocks, transformer_blocks


class MAEDecoder(nn.Module):
    cls_token = True  # the first latent token is the encoder's cls token, with its own position (zeros)

    def __init__(
        self,
        grid: tuple[int, int],
        encoder_dim: int,
        out_dim: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.embed_dim = embed_dim
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.grid, self.cls_token), requires_grad=False)
        self.blocks = transformer_blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = LayerNorm(embed_dim)
        self.pred = nn.Linear(embed_dim, out_dim)
        self.grad_checkpointing = False  # activation checkpointing of the blocks
        self.fused_norm = False  # residual adds fused with the next layer norm (train.fused_norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.apply(init_mae_weights)
        nn.init.normal_(self.mask_token, std=0.02)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.embed_dim, self.grid, self.cls_token))

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (N, 1 + kept, De) with cls first; returns per-patch predictions (N, L, out_dim) in image order."""
        return self.decode(self.embed(latent), ids_restore)

    def decode(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """x (N, 1 + kept, D) embedded tokens, the kept ones in ``ids_keep`` order -> (N, L, out_dim)."""
        x = torch.cat([x[:, :1], self.unshuffle(x[:, 1:], ids_restore)], dim=1) + self.pos_embed
        return self.predict(x)[:, 1:]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Blocks, norm and the pixel projection on (N, T, D) tokens with their positions."""
        return self.pred(norm_of_blocks(self.blocks, x, self.norm, self.grad_checkpointing, self.fused_norm))

    def unshuffle(self, kept: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """kept (N, K, D) in ``ids_keep`` order -> (N, L, D) in image order, the mask token at the removed places."""
        n, length = ids_restore.shape
        tokens = torch.cat([kept, self.mask_token.expand(n, length - kept.shape[1], -1)], dim=1)
        return torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, kept.shape[-1]))
