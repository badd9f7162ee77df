"""Prediction consistency across mask rounds (EMAE §3): how much a patch's prediction depends on the mask.

Fix the images, run R independent random masks, and for each patch compare the predictions from the rounds
in which it was masked. Reported, in the loss's target space (normalised pixels for norm_pix models):

- ``variance``: mean over patches of the per-patch variance across rounds (mean over the p*p*C values);
- ``pairwise``: mean over patches and round pairs of the RMS difference of the two predictions.

Lower is more consistent. Patches masked in fewer than two rounds are left out. Works for any MAE-family
model: every model is probed with the same single-part random masks.
"""

from __future__ import annotations

import torch

from ..masks import random_mask
from ..models import MaskedAutoencoder


@torch.no_grad()
def collect_predictions(model: MaskedAutoencoder, imgs: torch.Tensor, rounds: int, ratio: float,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, B, L, P) predictions and (R, B, L) masks for R independent random masks of ``imgs``."""
    preds, masks = [], []
    for _ in range(rounds):
        mask = random_mask(imgs.shape[0], model.grid, ratio, generator=generator)
        out = model(imgs, mask=mask)
        preds.append(out.pred.float())
        masks.append(mask.mask)
    return torch.stack(preds), torch.stack(masks)


def consistency_stats(preds: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Sums for :func:`summarise`, from (R, B, L, P) predictions and (R, B, L) masks."""
    m = masks.unsqueeze(-1)
    count = masks.sum(0)  # (B, L) rounds in which each patch was masked
    ok = count >= 2
    mean = (preds * m).sum(0) / count.clamp_min(1).unsqueeze(-1)
    var = ((preds - mean).pow(2) * m).sum(0) / (count - 1).clamp_min(1).unsqueeze(-1)  # unbiased, per value
    pair_sum = torch.zeros_like(count)
    pair_n = torch.zeros_like(count)
    for a in range(preds.shape[0]):
        for b in range(a + 1, preds.shape[0]):
            both = masks[a] * masks[b]
            rms = (preds[a] - preds[b]).pow(2).mean(-1).sqrt()
            pair_sum += rms * both
            pair_n += both
    return {
        "variance_sum": var.mean(-1)[ok].sum().item(),
        "pairwise_sum": (pair_sum[ok] / pair_n[ok]).sum().item(),
        "patches": int(ok.sum().item()),
    }


def measure_consistency(model: MaskedAutoencoder, batches, rounds: int = 10, ratio: float = 0.75,
                        seed: int = 0, device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean per-patch variance and mean pairwise RMS distance over every image in ``batches``."""
    model.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    totals = {"variance_sum": 0.0, "pairwise_sum": 0.0, "patches": 0}
    images = 0
    for imgs in batches:
        imgs = imgs.to(device)
        stats = consistency_stats(*collect_predictions(model, imgs, rounds, ratio, g))
        for k in totals:
            totals[k] += stats[k]
        images += imgs.shape[0]
    n = max(totals["patches"], 1)
    return {"variance": totals["variance_sum"] / n, "pairwise": totals["pairwise_sum"] / n,
            "patches": totals["patches"], "images": images, "rounds": rounds, "ratio": ratio}
