"""emae's MAE against transformers' ``ViTMAEForPreTraining`` on the same weights, images and masking noise.

The check behind ``tests/test_hf_equivalence.py`` (CPU) and part 7 of ``benchmarks/gpu_check.py`` (GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..config import Config
from ..models import MaskedAutoencoder, build_model
from .huggingface import to_hf

if TYPE_CHECKING:
    from transformers import ViTMAEForPreTraining


def equivalent_pair(cfg: Config, seed: int = 0, jitter: float = 0.02) -> tuple[MaskedAutoencoder, ViTMAEForPreTraining]:
    """An emae MAE built from ``cfg`` under ``seed`` (fp32, eval mode, on the CPU) and its ``to_hf`` copy. Every
    trainable parameter is moved by N(0, ``jitter``²) first: non-zero biases and LayerNorm affines, so that a
    swapped name cannot hide behind the initialisation."""
    torch.manual_seed(seed)
    model = build_model(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * jitter)
    return model, to_hf(model)


def compare(model: MaskedAutoencoder, hf: ViTMAEForPreTraining, batch: int = 2, seed: int = 1) -> dict:
    """Both models on the same random images and noise (drawn on the CPU, then moved to ``model``'s device), no
    grad: whether masks and restore indices are equal, the largest prediction difference and the loss difference
    (``inf`` when the prediction shapes differ)."""
    g = torch.Generator().manual_seed(seed)
    device = model.encoder.cls_token.device
    imgs = torch.randn(batch, model.encoder.in_chans, *model.encoder.img_size, generator=g).to(device)
    noise = torch.rand(batch, model.encoder.num_patches, generator=g).to(device)
    with torch.no_grad():
        ours = model(imgs, noise=noise)
        theirs = hf(pixel_values=imgs, noise=noise)
    same_shape = ours.pred.shape == theirs.logits.shape
    return {
        "mask_equal": bool(torch.equal(ours.mask.mask, theirs.mask)),
        "ids_restore_equal": bool(torch.equal(ours.mask.ids_restore, theirs.ids_restore)),
        "pred_shape_equal": same_shape,
        "max_pred_diff": (ours.pred - theirs.logits).abs().max().item() if same_shape else float("inf"),
        "loss_diff": abs(ours.loss.item() - theirs.loss.item()),
    }
