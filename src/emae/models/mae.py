"""A masked autoencoder as a composition: mask strategy + encoder + decoder + loss.

MAE, EMAE and UM-MAE differ only in the pieces handed to :class:`MaskedAutoencoder`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..masks import Mask, MaskFn, random_mask
from .decoder import MAEDecoder
from .vit import ViTEncoder


@dataclass
class MAEOutput:
    loss: torch.Tensor  # the total that is optimised
    pred: torch.Tensor  # (N, L, p*p*C) predictions in the loss's target space, image order
    target: torch.Tensor  # (N, L, p*p*C)
    mask: Mask
    terms: dict[str, torch.Tensor]  # the loss's named parts ("loss", and e.g. "recon", "consistency")


class MaskedAutoencoder(nn.Module):
    def __init__(
        self,
        encoder: ViTEncoder,
        decoder: MAEDecoder,
        loss: nn.Module,
        mask_fn: MaskFn = random_mask,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.loss = loss
        self.mask_fn = mask_fn
        self.mask_ratio = mask_ratio

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.grid

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every encoder and decoder block (recomputed in backward); pyramid encoders
        checkpoint the blocks of each stage."""
        for module in self.modules():
            if hasattr(module, "grad_checkpointing"):
                module.grad_checkpointing = enable

    def set_fused_norm(self, enable: bool = True) -> int:
        """train.fused_norm: residual adds fused with the next layer norm in every ViT block stack (encoder and
        decoder; pyramid encoders keep theirs). Returns the stacks it applies to."""
        stacks = [m for m in self.modules() if hasattr(m, "fused_norm")]
        for module in stacks:
            module.fused_norm = enable
        return len(stacks)

    def no_weight_decay(self) -> set[str]:
        return {"encoder.cls_token", "encoder.pos_embed", "encoder.mask_token", "decoder.mask_token", "decoder.pos_embed"}

    def check_input(self, imgs: torch.Tensor) -> None:
        expected = (self.encoder.in_chans, *self.encoder.img_size)
        if imgs.ndim != 4 or tuple(imgs.shape[1:]) != expected:
            raise ConfigError(f"input images have shape {tuple(imgs.shape)}, the model expects (B, {', '.join(map(str, expected))})")

    def make_mask(
        self, batch: int, noise: torch.Tensor | None = None, generator: torch.Generator | None = None, device=None
    ) -> Mask:
        return self.mask_fn(batch, self.grid, self.mask_ratio, noise=noise, generator=generator, device=device)

    def forward(
        self,
        imgs: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        mask: Mask | None = None,
    ) -> MAEOutput:
        self.check_input(imgs)
        if mask is None:
            mask = self.make_mask(imgs.shape[0], noise, generator, imgs.device)
        latent = self.encoder.encode_masked(imgs, mask)  # UM-MAE / SimMIM encoders also use mask tokens
        pred = self.decoder(latent, mask.ids_restore)
        target = self.loss.target(imgs)
        if mask.parts > 1:
            target = target.repeat_interleave(mask.parts, dim=0)
        terms = self.loss(pred, target, mask)
        return MAEOutput(terms["loss"], pred, target, mask, terms)

    def extract_features(self, imgs: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Encoder on the whole image, no masking. ``pool``: 'cls', 'avg' (mean patch token) or 'none' (all tokens);
        a pyramid encoder (no cls token) takes 'avg' or 'none'."""
        return self.encoder.extract_features(imgs, pool)
