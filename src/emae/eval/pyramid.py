"""Fine-tuning models for pyramid encoders (Swin, PVT-v2) pre-trained with UM-MAE or SimMIM.

The encoder is rebuilt on the *full* grid at the fine-tuning resolution. What changes from UM-MAE pre-training,
as the UM-MAE paper says, and how each weight is carried over (:func:`load_pyramid_encoder`):

- Swin: the window doubles (8 on the compact grid -> 16 on the full grid, so a window covers the same image
  area). Nothing changes shape: the position MLP works on coordinates, not on a table. Every weight loads.
- PVT: reduction ratios [4, 2, 1, 1] -> [8, 4, 2, 1]. A stage whose ratio changes from r > 1 to 2r keeps its
  ``attn.sr`` conv, resampled to the larger kernel (each tap spread over 2x2 and divided by 4: the same mean over
  a patch twice as wide); a stage whose ratio goes from 1 to 2 (stage 3) gets a *new* ``attn.sr`` conv and
  ``attn.norm``, freshly initialised, because pre-training had none. Everything else loads as it is.
- The secondary-mask token (``mask_token``) is not used and not loaded.

A SimMIM checkpoint already ran on the full grid: everything loads as it is; so does a fine-tuned classifier
(``best.pt``), whose stored window is already the fine-tuning one.

Frozen features (``linprobe``, ``knn``, :class:`FrozenPyramid`) use the same full-grid encoder and the global
average of the last stage after the final norm, as the UM-MAE and SimMIM papers do; there is no cls token. The
encoder is built under a fixed seed, so PVT's new stage-3 reduction layer (UM-MAE) is the same in every run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..interop.load import CLASSIFIER_FORMAT, Loaded
from ..models import PYRAMID_ARCHS, build_pyramid
from ..models.build import sr_ratios
from ..models.pvt import FULL_SR
from ..models.pyramid import PyramidEncoder


def is_pyramid(loaded: Loaded) -> bool:
    return loaded.config.model.arch in PYRAMID_ARCHS


def finetune_encoder(loaded: Loaded, drop_path: float = 0.0, img_size: tuple[int, int] | None = None,
                     keep_sr: bool = False) -> PyramidEncoder:
    """The full-grid encoder for a checkpoint: Swin's window x2 after UM-MAE, PVT's ratios [8, 4, 2, 1]
    (``keep_sr``: PVT keeps the checkpoint's own ratios, so no layer is new)."""
    cfg = loaded.config
    m = cfg.model
    # a fine-tuned classifier stores the full-grid window already (read_checkpoint takes it from best.pt)
    umae = cfg.method == "umae" and loaded.source != CLASSIFIER_FORMAT
    window = m.window_size * (2 if umae else 1)
    if keep_sr:
        sr = sr_ratios(m, compact=umae)
    else:
        sr = list(FULL_SR) if umae or m.sr_ratios is None else list(m.sr_ratios)
    return build_pyramid(m, compact=False, window_size=window, sr=sr, drop_path=drop_path, img_size=img_size)


def load_pyramid_encoder(encoder: PyramidEncoder, loaded: Loaded) -> list[str]:
    """Copy the checkpoint's encoder weights into ``encoder``; returns the keys that are re-initialised (PVT's new
    reduction layers) or resampled. Any other missing, unexpected or mis-shaped key is an error."""
    src = {k[len("encoder."):]: v for k, v in loaded.state.items() if k.startswith("encoder.")}
    src.pop("mask_token", None)
    own = encoder.state_dict()
    changed, take = [], {}
    for key, value in src.items():
        if key not in own:
            raise CheckpointError(f"{loaded.path}: encoder weight {key!r} has no place in the fine-tuning encoder")
        if own[key].shape != value.shape:
            if not (key.endswith("attn.sr.weight") and own[key].shape[-1] % value.shape[-1] == 0):
                raise CheckpointError(f"{loaded.path}: {key} is {tuple(value.shape)} there but "
                                      f"{tuple(own[key].shape)} here")
            factor = own[key].shape[-1] // value.shape[-1]  # spread each tap over factor x factor, keep the mean
            value = F.interpolate(value, scale_factor=factor, mode="nearest") / factor**2
            changed.append(f"{key} (resampled)")
        take[key] = value
    fresh = [k for k in own if k not in take and k != "mask_token"]
    if any(".attn.sr." not in k and ".attn.norm." not in k for k in fresh):
        raise CheckpointError(f"{loaded.path} lacks {fresh[0]!r} for the fine-tuning encoder")
    encoder.load_state_dict(take, strict=False)
    return changed + [f"{k} (new)" for k in fresh]


class PyramidClassifier(nn.Module):
    """Pyramid encoder + global average pool + Linear head (Swin's and PVT's fine-tuning model)."""

    def __init__(self, encoder: PyramidEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = encoder.num_features
        self.head = nn.Linear(encoder.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.encoder(imgs)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(imgs))

    def no_weight_decay(self) -> set[str]:
        return {"encoder.mask_token"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for layer-wise lr decay: stem 0, then block by block through the stages, then norm and head."""
        return dict(stem=r"^encoder\.stem|^encoder\.mask_token",
                    blocks=[(r"^encoder\.stages\.(\d+)\.downsample", (0,)),
                            (r"^encoder\.stages\.(\d+)\.blocks\.(\d+)", None),
                            (r"^encoder\.stages\.(\d+)\.norm", (99998,)),
                            (r"^encoder\.norm|^head", (99999,))])


def pyramid_classifier(loaded: Loaded, num_classes: int, drop_path: float = 0.0,
                       img_size: tuple[int, int] | None = None, keep_head: bool = False) -> PyramidClassifier:
    """The fine-tuning model from a UM-MAE / SimMIM checkpoint (``.reinitialised`` lists what did not load), or a
    fine-tuned classifier (``best.pt``) again; ``keep_head`` loads the checkpoint's head."""
    unknown = [k for k in loaded.extras if not k.startswith("head.")]
    if unknown:
        raise CheckpointError(f"{loaded.path} has an unexpected {unknown[0]!r} for a pyramid classifier")
    encoder = finetune_encoder(loaded, drop_path, img_size)
    model = PyramidClassifier(encoder, num_classes)
    model.reinitialised = load_pyramid_encoder(encoder, loaded)
    if keep_head:
        head = {k[len("head."):]: v for k, v in loaded.extras.items()}
        try:
            model.head.load_state_dict(head, strict=True)
        except RuntimeError:
            raise CheckpointError(f"{loaded.path}: its head ({tuple(loaded.extras['head.weight'].shape)}) does not "
                                  f"fit {num_classes} classes on {encoder.num_features} features") from None
    model.emae_kwargs = dict(arch=loaded.config.model.arch, img_size=list(img_size or loaded.config.model.image_size),
                             window_size=getattr(encoder, "window_size", None), num_classes=num_classes)
    return model


def pyramid_pool(loaded: Loaded, pool: str | None) -> str:
    """The frozen-feature pooling of a pyramid: 'avg' (also for None); anything else is a one-line error."""
    if pool in (None, "avg"):
        return "avg"
    raise ConfigError(f"--pool {pool}: a {loaded.config.model.arch} encoder has no cls token; pyramid features are "
                      f"the global average of the last stage (--pool avg)")


class FrozenPyramid(nn.Module):
    """A pyramid encoder that never trains (no gradients, always eval): one feature vector per image, the global
    average of the last stage after the final norm (``PyramidEncoder.extract_features(imgs, 'mean')``)."""

    def __init__(self, encoder: PyramidEncoder) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.pool = "avg"
        self.dim = encoder.num_features

    def train(self, mode: bool = True) -> FrozenPyramid:
        return super().train(False)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.encoder.extract_features(imgs, "mean")


def frozen_pyramid(loaded: Loaded, pool: str | None = "avg", img_size: tuple[int, int] | None = None,
                   seed: int = 0) -> FrozenPyramid:
    """The checkpoint's encoder on the full grid, frozen: Swin's window x2 after UM-MAE (no weight changes), PVT
    with the reduction ratios it was trained with, so every layer holds trained weights (the fine-tuning ratios
    would add an untrained stage-3 reduction layer). Built under ``seed`` for reproducibility all the same."""
    pyramid_pool(loaded, pool)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = finetune_encoder(loaded, 0.0, img_size, keep_sr=True)
    frozen = FrozenPyramid(encoder)
    frozen.reinitialised = load_pyramid_encoder(encoder, loaded)
    return frozen


__all__ = ["FrozenPyramid", "PyramidClassifier", "finetune_encoder", "frozen_pyramid", "is_pyramid",
           "load_pyramid_encoder", "pyramid_classifier", "pyramid_pool"]
