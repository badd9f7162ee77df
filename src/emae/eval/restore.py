"""``emae.load``: any checkpoint emae reads, as a model ready for use (the interop layer reads the files; building
classifiers is evaluation's, so the function lives here and interop never imports eval)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..interop.load import build_encoder, build_mae, read_checkpoint
from .backbone import build_classifier


def load(path: str | Path, trust: bool = False, **hints) -> nn.Module:
    """A model ready for feature extraction without masking, in eval mode, format recognised by itself.

    - a checkpoint with a decoder -> :class:`~emae.models.MaskedAutoencoder` (``.extract_features(imgs, pool)``)
    - an encoder-only checkpoint -> :class:`~emae.models.ViTEncoder` (``.forward_features``, ``.extract_features``)
    - a classifier (fine-tuned, with ``head``) -> its evaluation model (:func:`emae.eval.backbone.build_classifier`:
      timm's ``VisionTransformer`` for a ViT, :class:`~emae.eval.pyramid.PyramidClassifier` for Swin / PVT), with
      ``.forward_features``, ``.forward_head`` and ``.forward``: the outputs it had when fine-tuned

    ``hints``: ``num_heads``, ``decoder_num_heads``, ``img_size`` where they cannot be inferred. Pickled files
    load weights-only; ``trust=True`` (only for files from a trusted source) unpickles them in full.
    """
    loaded = read_checkpoint(path, trust=trust, **hints)
    if loaded.extras:
        pool = "avg" if "fc_norm.weight" in loaded.extras else "cls"  # MAE's global pool keeps an fc_norm
        return build_classifier(loaded, loaded.num_classes or 0, pool, keep_head=True)[0].eval()
    return build_mae(loaded) if loaded.has_decoder else build_encoder(loaded)
