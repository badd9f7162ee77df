"""The evaluation model of any checkpoint, through one contract (timm's): ``forward_features``,
``forward_head(x, pre_logits)``, ``forward_intermediates`` (dense heads), ``reset_classifier``, ``no_weight_decay``
and ``group_matcher`` (layer ids for layer-wise lr decay).

:func:`build_classifier` picks the builder of the checkpoint's encoder family (:data:`BUILDERS`): timm's
``VisionTransformer`` for a ViT (emae's encoder keys are timm's, so the weights load as they are; the position
embedding is resampled, bicubic, when the resolution changes), :class:`~emae.eval.pyramid.PyramidClassifier` for
Swin / PVT. Everything above (fine-tuning, frozen features, segmentation, ``emae.load``) calls the contract only.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..archs import family, resolve_pool
from ..config import ModelConfig
from ..errors import CheckpointError
from ..interop.load import Loaded
from ..interop.official import encoder_state
from ..models import encoder_dims
from .pyramid import pyramid_classifier

TIMM_POOL = {"cls": "token", "avg": "avg"}  # emae's pooling names -> timm's global_pool


class ViT(VisionTransformer):
    """timm's ViT with MAE's layer ids for layer-wise lr decay: cls, pos and patch_embed 0, block i i+1, and
    everything after the blocks (norm, fc_norm, head) depth+1, so that scale = decay^(depth+1-id)."""

    def group_matcher(self, coarse: bool = False) -> dict:
        # timm's own matcher merges the final norm into the last block (suffix 99999 = "previous group");
        # any other suffix after the block indices opens the group depth+1
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm|^fc_norm|^head", (100000,))])

    def spec(self) -> dict:
        """The arguments that rebuild this classifier (kept in a fine-tuned checkpoint)."""
        return dict(img_size=list(self.patch_embed.img_size), patch_size=self.patch_embed.patch_size[0],
                    in_chans=self.patch_embed.proj.in_channels, embed_dim=self.embed_dim, depth=len(self.blocks),
                    num_heads=self.blocks[0].attn.num_heads, mlp_ratio=self.blocks[0].mlp.fc1.out_features /
                    self.embed_dim, num_classes=self.num_classes, global_pool=self.global_pool,
                    fc_norm=not isinstance(self.fc_norm, nn.Identity))


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
    return vit_classifier(loaded, num_classes, global_pool, fc_norm, drop_path, img_size, keep_head)[0]


def vit_classifier(loaded: Loaded, num_classes: int = 0, global_pool: str = "token", fc_norm: bool | None = None,
                   drop_path: float = 0.0, img_size: tuple[int, int] | None = None,
                   keep_head: bool = False) -> tuple[ViT, list[str]]:
    """:func:`build_vit`, and what did not load as it is (the position embedding, resampled)."""
    if fc_norm is None and "fc_norm.weight" in loaded.extras:
        fc_norm = True
    vit = ViT(**vit_kwargs(loaded.config.model, img_size), num_classes=num_classes, global_pool=global_pool,
              fc_norm=fc_norm, drop_path_rate=drop_path, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    sd = encoder_state(loaded.state)
    sd.update({k: v for k, v in loaded.extras.items() if keep_head or k.startswith("fc_norm.")})
    own = vit.state_dict()
    if isinstance(vit.norm, nn.Identity):  # MAE's global-pool fine-tuning drops the final norm
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    if "fc_norm.weight" in sd and "fc_norm.weight" not in own:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc_norm.")}
    notes = []
    if sd["pos_embed"].shape != own["pos_embed"].shape:
        m = loaded.config.model
        old = (m.image_size[0] // m.patch_size, m.image_size[1] // m.patch_size)
        grid = vit.patch_embed.grid_size
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=list(grid), old_size=list(old),
                                                 num_prefix_tokens=1)
        notes.append(f"pos_embed resampled from {old[0]}x{old[1]} to {grid[0]}x{grid[1]} patches (bicubic)")
    missing, unexpected = vit.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "fc_norm."))]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        what = "lacks" if missing else "has an unexpected"
        raise CheckpointError(f"{loaded.path} {what} {first!r} for a timm ViT ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys)")
    return vit, notes


def _vit_builder(loaded: Loaded, num_classes: int, pool: str, drop_path: float, img_size, keep_head: bool,
                 fc_norm: bool | None):
    return vit_classifier(loaded, num_classes, TIMM_POOL[pool], fc_norm, drop_path, img_size, keep_head)


def _pyramid_builder(loaded: Loaded, num_classes: int, pool: str, drop_path: float, img_size, keep_head: bool,
                     fc_norm: bool | None):
    return pyramid_classifier(loaded, num_classes, drop_path, img_size, keep_head, fc_norm=fc_norm is not False)


BUILDERS = {"vit": _vit_builder, "swin": _pyramid_builder, "pvt": _pyramid_builder}


def build_classifier(loaded: Loaded, num_classes: int = 0, pool: str | None = "avg", drop_path: float = 0.0,
                     img_size: tuple[int, int] | None = None, keep_head: bool = False,
                     fc_norm: bool | None = None) -> tuple[nn.Module, list[str]]:
    """The checkpoint's encoder as a classifier with the contract above, and what did not load as it is.
    ``pool``: 'avg' (global average + ``fc_norm``, fine-tuning) or 'cls'; ``fc_norm`` False keeps the encoder's
    final norm and adds none (frozen features)."""
    pool = resolve_pool(loaded.config.model.arch, pool)
    return BUILDERS[family(loaded.config.model.arch)](loaded, num_classes, pool, drop_path, img_size, keep_head,
                                                      fc_norm)


class FrozenEncoder(nn.Module):
    """An encoder that never trains: no gradients, always in eval mode. One feature vector per image: ``pool``
    'cls' (the cls token after the final norm) or 'avg' (the mean of the patch tokens; a fine-tuned classifier's
    ``fc_norm`` of it), i.e. the classifier's pre-logits."""

    def __init__(self, model: nn.Module, pool: str = "cls") -> None:
        super().__init__()
        model.reset_classifier(0, TIMM_POOL[pool])
        self.model = model.requires_grad_(False).eval()
        self.pool = pool
        self.dim = model.num_features

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.forward_head(self.model.forward_features(imgs), pre_logits=True)


def frozen_encoder(loaded: Loaded, pool: str | None = "cls", img_size: tuple[int, int] | None = None) -> FrozenEncoder:
    """The checkpoint's encoder with its own final norm (or its fc_norm, for a fine-tuned classifier); a pyramid
    encoder (Swin, PVT) on the full grid with the fine-tuning geometry, globally average-pooled."""
    pool = resolve_pool(loaded.config.model.arch, pool)
    fc_norm = "fc_norm.weight" in loaded.extras
    model, _ = build_classifier(loaded, 0, pool, img_size=img_size, fc_norm=fc_norm)
    return FrozenEncoder(model, pool)
