"""Prediction consistency across mask rounds (EMAE §3), reported beside the reconstruction error.

Fix the images, draw R independent random masks, and for each patch compare the predictions from the rounds in
which it was masked. Everything is in the loss's target space (normalised pixels for norm_pix models), on the same
images and masks:

- ``recon_error``: (a) masked-patch MSE against the target, over every masked patch of every round (the
  training loss). ``target_variance`` beside it is the spread of the target over the same patches within each
  image: the error of predicting every masked patch by its image's mean target, so a ``recon_error`` near it
  means the model predicts little more than that;
- ``variance``: (b) mean over patches of the per-patch unbiased variance across rounds (mean over the p*p*C
  values); ``pairwise``: mean over patches and round pairs of the RMS difference of the two predictions;
- ``prediction_variance``: the variance of the model's predictions across the patches of an image (every
  round's prediction of every measured patch; per value, then mean over values and images);
- ``inconsistency``: (c) ``variance / prediction_variance``, clipped to [0, 1]; 1 when the predictions do not
  vary at all.

Only patches masked in at least two rounds are measured for (b) and (c). Lower is better for all of them.

Why this normalisation. The raw variance (b) rewards blur: a model that predicts the same output whatever it
sees has variance 0, the "best" value. Dividing by the spread of the predictions across patches turns (b) into
the share of the prediction variance that comes from the mask rather than from the patch: the spread of the
predictions = across-patch (signal) + across-round (mask noise), so the ratio is 1 minus the intraclass
correlation of the predictions grouped by patch, bounded in [0, 1]. A perfect predictor (prediction = target
whatever the mask) has no across-round variance: 0. A predictor that adds independent noise of variance s^2 to
the target each round scores about s^2 / (spread of the target + s^2), rising with s. A predictor whose output
varies only with the mask scores about 1, and a constant predictor, the limit of that as the variation
vanishes, has 0 / 0, which is defined as 1: the worst value, so blur cannot win. The spread is taken within each
image, not across images, so that a model predicting one output per image (its mean colour, say) also scores
about 1 rather than hiding behind the differences between images. Sampling noise can push the ratio a little
above 1 when the predictions carry no patch information; it is clipped there. Sums are in float64, so an exactly
constant predictor gives exactly 0 / 0.

Works for any MAE-family model: every model is probed with the same single-part random masks.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..masks import random_mask
from ..models import MaskedAutoencoder


def spread_within_images(values: torch.Tensor, where: torch.Tensor, ddof: int = 1) -> tuple[float, int]:
    """Sum over images of the variance of ``values`` (R, B, L, P) across the (round, patch) entries selected by
    ``where`` (R, B, L) within each image (per value, then mean over values), and the number of images summed
    (those with more than ``ddof`` entries). float64, so identical values give exactly 0."""
    w = where.unsqueeze(-1).double()
    n = where.sum((0, 2)).double()  # (B,)
    mean = (values * w).sum((0, 2)) / n.clamp_min(1).unsqueeze(-1)  # (B, P)
    ss = ((values - mean[None, :, None]).pow(2) * w).sum((0, 2))
    var = (ss / (n - ddof).clamp_min(1).unsqueeze(-1)).mean(-1)  # (B,)
    ok = n > ddof
    return var[ok].sum().item(), int(ok.sum().item())


class ConsistencyStats:
    """Totals over batches of (R, B, L, P) predictions, (B, L, P) targets and (R, B, L) masks."""

    def __init__(self) -> None:
        self.recon_sum, self.masked = 0.0, 0
        self.variance_sum, self.pairwise_sum, self.patches = 0.0, 0.0, 0
        self.target_sum, self.target_images, self.spread_sum, self.spread_images = 0.0, 0, 0.0, 0

    def add(self, preds: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> None:
        preds, masks = preds.double(), masks.bool()
        target = target.double().expand_as(preds)
        rounds = preds.shape[0]
        # (a) every masked patch of every round; the best per-image constant on the same entries
        self.recon_sum += (preds - target).pow(2).mean(-1)[masks].sum().item()
        self.masked += int(masks.sum().item())
        total, images = spread_within_images(target, masks, ddof=0)
        self.target_sum, self.target_images = self.target_sum + total, self.target_images + images
        # (b) patches masked in >= 2 rounds
        count = masks.sum(0)  # (B, L)
        ok = count >= 2
        m = masks.unsqueeze(-1)
        mean = (preds * m).sum(0) / count.clamp_min(1).unsqueeze(-1)
        var = ((preds - mean).pow(2) * m).sum(0) / (count - 1).clamp_min(1).unsqueeze(-1)  # unbiased, per value
        pair_sum = torch.zeros(count.shape, dtype=torch.float64, device=preds.device)
        pair_n = torch.zeros_like(pair_sum)
        for a in range(rounds):
            for b in range(a + 1, rounds):
                both = masks[a] & masks[b]
                pair_sum += (preds[a] - preds[b]).pow(2).mean(-1).sqrt() * both
                pair_n += both
        self.variance_sum += var.mean(-1)[ok].sum().item()
        self.pairwise_sum += (pair_sum[ok] / pair_n[ok]).sum().item()
        self.patches += int(ok.sum().item())
        # (c) the spread of the same predictions across the patches of each image
        total, images = spread_within_images(preds, masks & ok)
        self.spread_sum, self.spread_images = self.spread_sum + total, self.spread_images + images

    def summary(self) -> dict[str, float]:
        if self.patches == 0:
            raise ConfigError("no patch was masked in two or more rounds; raise --rounds or --ratio, or use more "
                              "images")
        variance = self.variance_sum / self.patches
        spread = self.spread_sum / max(self.spread_images, 1)
        return {
            "recon_error": self.recon_sum / self.masked, "target_variance": self.target_sum / self.target_images,
            "variance": variance, "pairwise": self.pairwise_sum / self.patches,
            "prediction_variance": spread, "inconsistency": normalised_inconsistency(variance, spread),
            "patches": self.patches, "masked": self.masked,
        }


def normalised_inconsistency(variance: float, prediction_variance: float) -> float:
    """Across-round variance as a share of the across-patch prediction variance, in [0, 1]; x / 0 is 1 (worst)."""
    if prediction_variance <= 0:
        return 1.0
    return min(1.0, max(0.0, variance / prediction_variance))


def check_rounds(rounds: int) -> None:
    if rounds < 2:
        raise ConfigError(f"--rounds: {rounds} is too few; need at least 2 to compare predictions")


@torch.no_grad()
def collect_predictions(model: MaskedAutoencoder, imgs: torch.Tensor, rounds: int, ratio: float,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, B, L, P) predictions, the (B, L, P) target and (R, B, L) masks for R independent random masks."""
    preds, masks = [], []
    target = None
    for _ in range(rounds):
        mask = random_mask(imgs.shape[0], model.grid, ratio, generator=generator)
        out = model(imgs, mask=mask)
        preds.append(out.pred.float())
        masks.append(mask.mask)
        target = out.target.float() if target is None else target
    return torch.stack(preds), target, torch.stack(masks)


def measure_consistency(model: MaskedAutoencoder, batches, rounds: int = 10, ratio: float = 0.75,
                        seed: int = 0, device: str | torch.device = "cpu") -> dict[str, float]:
    """The figures of the module docstring over every image in ``batches``."""
    check_rounds(rounds)
    model.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    stats = ConsistencyStats()
    images = 0
    for imgs in batches:
        imgs = imgs.to(device)
        stats.add(*collect_predictions(model, imgs, rounds, ratio, g))
        images += imgs.shape[0]
    return {**stats.summary(), "images": images, "rounds": rounds, "ratio": ratio, "seed": seed}
