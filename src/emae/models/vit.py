"""ViT encoder that runs on a subset of patch tokens (MAE) or on all of them (features, fine-tuning).

Built from timm's ``PatchEmbed`` and ``Block``; the state-dict keys are timm's ``VisionTransformer`` keys
(``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..masks.compact import gather_tokens
from .fused import can_fuse, fused_blocks
from .init import init_mae_weights, init_patch_embed
from .pos_embed import sincos_2d

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def transformer_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0) -> nn.ModuleList:
    """Pre-norm timm blocks with qkv bias and LayerNorm eps 1e-6; drop path grows linearly with depth."""
    rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path] * depth
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm, drop_path=r) for r in rates
    )


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpointing: bool = False, *args) -> torch.Tensor:
    """``x = blk(x, *args)`` for each block; with ``checkpointing`` (and gradients on) each block's activations
    are recomputed in backward instead of kept (same numbers, less memory)."""
    if not (checkpointing and torch.is_grad_enabled()):
        for blk in blocks:
            x = blk(x, *args)
        return x
    for blk in blocks:
        x = checkpoint(blk, x, *args, use_reentrant=False)
    return x


def norm_of_blocks(blocks: nn.ModuleList, x: torch.Tensor, norm: nn.Module, checkpointing: bool = False,
                   fused: bool = False) -> torch.Tensor:
    """``norm(run_blocks(blocks, x))``; with ``fused`` (train.fused_norm) each residual add is fused with the norm
    after it (models/fused.py), unless activations are checkpointed."""
    if fused and not (checkpointing and torch.is_grad_enabled()) and can_fuse(blocks, norm):
        return fused_blocks(blocks, x, norm)
    return norm(run_blocks(blocks, x, checkpointing))


class ViTEncoder(nn.Module):
    """Patch embedding + fixed sin-cos positions + cls token + Transformer blocks + final norm."""

    def __init__(
        self,
        img_size: tuple[int, int] = (224, 224),
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(tuple(img_size), patch_size, in_chans, embed_dim)
        self.grid: tuple[int, int] = tuple(self.patch_embed.grid_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed, not trained; kept as a parameter so checkpoints carry it, like MAE and timm.
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.grid), requires_grad=False)
        self.blocks = transformer_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path)
        self.norm = LayerNorm(embed_dim)
        self.grad_checkpointing = False  # activation checkpointing of the blocks (train.activation_checkpointing)
        self.fused_norm = False  # residual adds fused with the next layer norm (train.fused_norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.apply(init_mae_weights)
        init_patch_embed(self.patch_embed.proj)
        nn.init.normal_(self.cls_token, std=0.02)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.embed_dim, self.grid))

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.img_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, D) patch tokens with their positions added."""
        return self.patch_embed(imgs) + self.pos_embed[:, 1:]

    def forward(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None, parts: int = 1) -> torch.Tensor:
        """Encode the kept patches (all of them when ``ids_keep`` is None); returns (N, 1 + kept, D), cls first."""
        x = self.embed(imgs)
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep, parts)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return norm_of_blocks(self.blocks, x, self.norm, self.grad_checkpointing, self.fused_norm)

    def encode_masked(self, imgs: torch.Tensor, mask) -> torch.Tensor:
        """The masked autoencoder's entry point (every encoder has one): the kept patches of ``mask``."""
        return self.forward(imgs, mask.ids_keep, mask.parts)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """All tokens, no masking: (B, 1 + L, D)."""
        return self.forward(imgs)

    def forward_intermediates(self, imgs: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's contract for dense heads: the patch tokens after the blocks ``indices`` (an int: the last n; None:
        all) as (B, D, H / p, W / p) maps (``output_fmt`` "NLC": (B, L, D)), the final norm on each with ``norm``;
        with ``intermediates_only`` False, also the final normalised tokens (B, 1 + L, D), cls first."""
        from timm.models._features import feature_take_indices

        take, _ = feature_take_indices(len(self.blocks), indices)
        x = self.embed(imgs)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in take:
                y = (self.norm(x) if norm else x)[:, 1:]
                out.append(y.transpose(1, 2).reshape(y.shape[0], -1, *self.grid) if output_fmt == "NCHW" else y)
        return out if intermediates_only else (self.norm(x), out)

    @torch.no_grad()
    def extract_features(self, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """As :meth:`MaskedAutoencoder.extract_features`: 'cls', 'avg' (mean patch token) or 'none' (all tokens)."""
        return pool_tokens(self.forward_features(imgs), pool, cls_token=True)


def pool_tokens(tokens: torch.Tensor, pool: str, cls_token: bool) -> torch.Tensor:
    """One vector per image from an encoder's output, in emae's one pooling vocabulary: 'cls' (the cls token),
    'avg' (the mean of the patch tokens; 'mean' is its old spelling) or 'none' (the tokens as they are).
    ``tokens``: (B, 1 + L, D) with a cls token, else (B, L, D) or (B, h, w, D)."""
    from ..config.typed import renamed

    pool = renamed("pool", pool)
    if pool == "none":
        return tokens
    if pool == "avg":
        patches = tokens[:, 1:] if cls_token else tokens.flatten(1, -2)
        return patches.mean(dim=1)
    if pool == "cls" and cls_token:
        return tokens[:, 0]
    from ..errors import ConfigError

    allowed = "'cls', 'avg' or 'none'" if cls_token else "'avg' or 'none' (no cls token)"
    raise ConfigError(f"pool: {pool!r} is not allowed for this encoder; use {allowed}")


class UMViTEncoder(ViTEncoder):
    """UM-MAE on a plain ViT: the kept tokens of a uniform mask, with the secondarily masked ones replaced by a
    learnable token after patch embedding and *before* the position embedding, so it carries its true position."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)

    def encode_masked(self, imgs: torch.Tensor, mask) -> torch.Tensor:
        """(B, C, H, W) + a :class:`~emae.masks.Mask` -> (N, 1 + kept, D), cls first."""
        x = gather_tokens(self.patch_embed(imgs), mask.ids_keep, mask.parts)
        if mask.secondary is not None:
            x = torch.where(mask.secondary.unsqueeze(-1).bool(), self.mask_token.to(x.dtype), x)
        x = x + self.pos_embed[0, 1:][mask.ids_keep]  # each token's true position
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return norm_of_blocks(self.blocks, x, self.norm, self.grad_checkpointing, self.fused_norm)
