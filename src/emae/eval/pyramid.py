"""Fine-tuning models for pyramid encoders (Swin, PVT) pre-trained with UM-MAE or SimMIM.

The encoder is rebuilt on the *full* grid at the fine-tuning resolution. What changes from UM-MAE pre-training,
as the reference does it (models_swin.py, models_pvt.py), and how each weight is carried over
(:func:`load_pyramid_encoder`):

- Swin: the window doubles (8 on the compact grid -> 16 on the full grid, so a window covers the same image
  area). Nothing changes shape: the position MLP works on coordinates, not on a table.
- PVT: reduction ratios [4, 2, 1, 1] -> [8, 4, 2, 1]. The reduction (avg-pool, 1x1 conv, norm) has the same weights
  at any ratio, so nothing is new; the sin-cos position table becomes trainable (the reference's
  "during finetuning we let the pos_embed learn") and is resampled (bicubic) when the resolution changes.
- The secondary-mask token (``mask_token``) is not used and not loaded.

Every encoder weight loads. The classifier is the reference's: the encoder without its final norm, global average
pool, a new LayerNorm (``fc_norm``, weight 1, bias 0) and the head. A SimMIM checkpoint already ran on the full grid;
a fine-tuned classifier (``best.pt``) stores its fine-tuning window and ratios.

Frozen features (``linprobe``, ``knn``: :class:`~emae.eval.backbone.FrozenEncoder`) use the same full-grid encoder
and the global average of the last stage after the final norm (``fc_norm=False``), as the UM-MAE and SimMIM papers
do; there is no cls token.
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from ..archs import full_grid_geometry
from ..errors import CheckpointError
from ..interop.load import Loaded, from_compact
from ..models import build_pyramid
from ..models.pyramid import PyramidEncoder


def finetune_encoder(loaded: Loaded, drop_path: float = 0.0, img_size: tuple[int, int] | None = None) -> PyramidEncoder:
    """The full-grid encoder for a checkpoint: Swin's window x2 after UM-MAE, PVT's ratios [8, 4, 2, 1] after
    UM-MAE (a SimMIM or fine-tuned checkpoint keeps its own)."""
    # a fine-tuned classifier stores the full-grid window and ratios already (read_checkpoint takes them from best.pt)
    window, sr = full_grid_geometry(loaded.config.model, from_compact(loaded))
    return build_pyramid(loaded.config.model, compact=False, window_size=window, sr=sr, drop_path=drop_path,
                         img_size=img_size)


def load_pyramid_encoder(encoder: PyramidEncoder, loaded: Loaded) -> list[str]:
    """Copy the checkpoint's encoder weights into ``encoder``; returns the keys that did not load as they are (PVT's
    position table, resampled to a new resolution). Any missing, unexpected or mis-shaped key is an error."""
    src = {k[len("encoder."):]: v for k, v in loaded.state.items() if k.startswith("encoder.")}
    src.pop("mask_token", None)
    if isinstance(encoder.norm, nn.Identity):  # a classifier's encoder: fc_norm after the pool replaces the norm
        src = {k: v for k, v in src.items() if not k.startswith("norm.")}
    own = encoder.state_dict()
    changed = []
    for key, value in src.items():
        if key not in own:
            raise CheckpointError(f"{loaded.path}: encoder weight {key!r} has no place in the fine-tuning encoder "
                                  f"(a checkpoint of an older emae's {loaded.config.model.arch}?)")
        if own[key].shape != value.shape:
            if key != "pos_embed":
                raise CheckpointError(f"{loaded.path}: {key} is {tuple(value.shape)} there but "
                                      f"{tuple(own[key].shape)} here")
            old = tuple(s * 4 // loaded.config.model.patch_size for s in loaded.config.model.image_size)
            src[key] = resample_abs_pos_embed(value, new_size=list(encoder.stem_grid), old_size=list(old),
                                              num_prefix_tokens=0)
            changed.append(f"{key} (resampled)")
    missing = [k for k in own if k not in src and k != "mask_token"]
    if missing:
        raise CheckpointError(f"{loaded.path} lacks {missing[0]!r} for the fine-tuning encoder")
    encoder.load_state_dict(src, strict=False)
    return changed


class PyramidClassifier(nn.Module):
    """The reference's fine-tuning model (models_swin.py / models_pvt.py): the encoder without its final norm, a
    global average pool, a LayerNorm (``fc_norm``, eps 1e-6) and a Linear head. With ``fc_norm`` False (frozen
    features of a pre-trained encoder) the encoder keeps its final norm and nothing follows the pool."""

    def __init__(self, encoder: PyramidEncoder, num_classes: int, arch: str = "", fc_norm: bool = True) -> None:
        super().__init__()
        if fc_norm:
            encoder.norm = nn.Identity()
        self.encoder, self.arch = encoder, arch
        self.num_features = encoder.num_features
        self.fc_norm = nn.LayerNorm(encoder.num_features, eps=1e-6) if fc_norm else nn.Identity()
        self.head = nn.Linear(encoder.num_features, num_classes) if num_classes else nn.Identity()

    @property
    def num_classes(self) -> int:
        return self.head.out_features if isinstance(self.head, nn.Linear) else 0

    def spec(self) -> dict:
        """What rebuilds this classifier (kept in a fine-tuned checkpoint): the fine-tuning geometry."""
        return dict(arch=self.arch, img_size=list(self.encoder.img_size),
                    window_size=getattr(self.encoder, "window_size", None),
                    sr_ratios=getattr(self.encoder, "sr_ratios", None), num_classes=self.num_classes)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.encoder(imgs)

    def forward_intermediates(self, imgs: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The encoder's stage outputs (:meth:`PyramidEncoder.forward_intermediates`), for dense heads."""
        return self.encoder.forward_intermediates(imgs, indices, norm, output_fmt, intermediates_only)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none, pre-logits out); pooling is always the global average."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool: {global_pool!r}; a pyramid classifier pools by global average ('avg')")
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.fc_norm(x.mean(dim=(1, 2)))
        return x if pre_logits else self.head(x)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(imgs))

    def no_weight_decay(self) -> set[str]:
        return {"encoder.mask_token", "encoder.pos_embed"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for layer-wise lr decay, as the reference's ``param_groups_lrd`` numbers its flat block list:
        stem (and positions) 0, then block by block through the stages (a stage's merge with its first block), then
        fc_norm and head."""
        return dict(stem=r"^encoder\.stem|^encoder\.mask_token|^encoder\.pos_embed",
                    blocks=[(r"^encoder\.stages\.(\d+)\.downsample", (0,)),
                            (r"^encoder\.stages\.(\d+)\.blocks\.(\d+)", None),
                            (r"^fc_norm|^head", (100000,))])  # their own last group (timm's 99999 would merge)


def pyramid_classifier(loaded: Loaded, num_classes: int, drop_path: float = 0.0,
                       img_size: tuple[int, int] | None = None, keep_head: bool = False,
                       fc_norm: bool = True) -> tuple[PyramidClassifier, list[str]]:
    """The fine-tuning model from a UM-MAE / SimMIM checkpoint, or a fine-tuned classifier (``best.pt``) again, with
    its ``fc_norm``; ``keep_head`` loads its head. Also what did not load as it is (PVT's resampled positions)."""
    unknown = [k for k in loaded.extras if not k.startswith(("head.", "fc_norm."))]
    if unknown:
        raise CheckpointError(f"{loaded.path} has an unexpected {unknown[0]!r} for a pyramid classifier")
    encoder = finetune_encoder(loaded, drop_path, img_size)
    fine_tuned = "fc_norm.weight" in loaded.extras
    model = PyramidClassifier(encoder, num_classes, loaded.config.model.arch, fc_norm=fc_norm or fine_tuned)
    notes = load_pyramid_encoder(encoder, loaded)
    if fine_tuned:
        model.fc_norm.load_state_dict({k[len("fc_norm."):]: v for k, v in loaded.extras.items()
                                       if k.startswith("fc_norm.")})
    if hasattr(encoder, "pos_embed"):
        encoder.pos_embed.requires_grad_(True)  # PVT: models_pvt.py trains the table when fine-tuning
    if keep_head:
        head = {k[len("head."):]: v for k, v in loaded.extras.items() if k.startswith("head.")}
        try:
            model.head.load_state_dict(head, strict=True)
        except RuntimeError:
            raise CheckpointError(f"{loaded.path}: its head ({tuple(loaded.extras['head.weight'].shape)}) does not "
                                  f"fit {num_classes} classes on {encoder.num_features} features") from None
    return model, notes


__all__ = ["PyramidClassifier", "finetune_encoder", "load_pyramid_encoder", "pyramid_classifier"]
