"""The evaluation model: timm's ``VisionTransformer`` loaded from any checkpoint, and a frozen wrapper.

emae's encoder keys are timm's, so the weights load as they are; the position embedding is resampled
(bicubic, ``timm.layers.resample_abs_pos_embed``) when the evaluation resolution differs from pre-training.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointError
from ..interop.load import Loaded
from ..interop.official import encoder_state
from ..models import VIT_SIZES, encoder_dims
from .pyramid import frozen_pyramid, is_pyramid, pyramid_pool


class ViT(VisionTransformer):
    """timm's ViT with MAE's layer ids for layer-wise lr decay: cls, pos and patch_embed 0, block i i+1, and
    everything after the blocks (norm, fc_norm, head) depth+1, so that scale = decay^(depth+1-id)."""

    def group_matcher(self, coarse: bool = False) -> dict:
        # timm's own matcher merges the final norm into the last block (suffix 99999 = "previous group");
        # any other suffix after the block indices opens the group depth+1
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^fc_norm|^head", (100000,))])


def vit_kwargs(m: ModelConfig, img_size: tuple[int, int] | None = None) -> dict:
    width, depth, heads = encoder_dims(m)
    return dict(img_size=tuple(img_size or m.image_size), patch_size=m.patch_size, in_chans=m.in_chans,
                embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=m.mlp_ratio)


def build_vit(loaded: Loaded, num_classes: int = 0, global_pool: str = "token", fc_norm: bool | None = None,
              drop_path: float = 0.0, img_size: tuple[int, int] | None = None, keep_head: bool = False) -> ViT:
    """A timm ViT with the checkpoint's encoder (and ``fc_norm`` / ``head`` when it has them and they fit).

    ``fc_norm`` None follows timm: a new LayerNorm after average pooling, replacing the final norm (MAE's
    fine-tuning); a checkpoint that already has ``fc_norm`` keeps it. ``keep_head`` loads the checkpoint's head.
    """
    if loaded.config.model.arch not in VIT_SIZES:
        raise CheckpointError(f"{loaded.path} holds a {loaded.config.model.arch} encoder, not a ViT; pyramid encoders "
                              f"are built by emae.eval.pyramid")
    if fc_norm is None and "fc_norm.weight" in loaded.extras:
        fc_norm = True
    kwargs = vit_kwargs(loaded.config.model, img_size)
    vit = ViT(**kwargs, num_classes=num_classes, global_pool=global_pool, fc_norm=fc_norm,
              drop_path_rate=drop_path, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    vit.emae_kwargs = dict(kwargs, num_classes=num_classes, global_pool=global_pool, fc_norm=fc_norm)
    sd = encoder_state(loaded.state)
    sd.update({k: v for k, v in loaded.extras.items() if keep_head or k.startswith("fc_norm.")})
    own = vit.state_dict()
    if isinstance(vit.norm, nn.Identity):  # MAE's global-pool fine-tuning drops the final norm
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    if "fc_norm.weight" in sd and "fc_norm.weight" not in own:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc_norm.")}
    grid = vit.patch_embed.grid_size
    if sd["pos_embed"].shape != own["pos_embed"].shape:
        m = loaded.config.model
        old = (m.image_size[0] // m.patch_size, m.image_size[1] // m.patch_size)
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=list(grid), old_size=list(old),
                                                 num_prefix_tokens=1)
    missing, unexpected = vit.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "fc_norm."))]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        what = "lacks" if missing else "has an unexpected"
        raise CheckpointError(f"{loaded.path} {what} {first!r} for a timm ViT ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys)")
    return vit


class FrozenEncoder(nn.Module):
    """A ViT that never trains: no gradients, always in eval mode. Returns one feature vector per image:
    ``pool`` 'cls' (the cls token after the final norm) or 'avg' (mean of the patch tokens)."""

    def __init__(self, vit: VisionTransformer, pool: str = "cls") -> None:
        super().__init__()
        if pool not in ("cls", "avg"):
            raise ValueError(f"pool: {pool!r} is not 'cls' or 'avg'")
        vit.reset_classifier(0, global_pool="token" if pool == "cls" else "avg")
        self.vit = vit.requires_grad_(False).eval()
        self.pool = pool
        self.dim = vit.num_features

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vit.forward_head(self.vit.forward_features(imgs), pre_logits=True)


def resolve_pool(loaded: Loaded, pool: str | None) -> str:
    """The frozen-feature pooling: None is 'cls' for a ViT and 'avg' for a pyramid (which has no cls token: 'cls'
    is a one-line error there)."""
    if is_pyramid(loaded):
        return pyramid_pool(loaded, pool)
    return "cls" if pool is None else pool


def frozen_encoder(loaded: Loaded, pool: str | None = "cls",
                   img_size: tuple[int, int] | None = None) -> nn.Module:
    """The checkpoint's encoder with its own final norm (or its fc_norm, for a fine-tuned classifier); a pyramid
    encoder (Swin, PVT) on the full grid with the fine-tuning geometry, globally average-pooled
    (:func:`emae.eval.pyramid.frozen_pyramid`)."""
    pool = resolve_pool(loaded, pool)
    if is_pyramid(loaded):
        return frozen_pyramid(loaded, pool, img_size)
    fc_norm = "fc_norm.weight" in loaded.extras
    vit = build_vit(loaded, global_pool="token" if pool == "cls" else "avg", fc_norm=fc_norm, img_size=img_size)
    return FrozenEncoder(vit, pool)
