"""The consistency measurement cannot be gamed by blur: stub predictors behind the MaskedAutoencoder interface."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emae.eval.consistency import measure_consistency, normalised_inconsistency
from emae.models.mae import MAEOutput
from emae.patches import patchify


class StubModel(nn.Module):
    """What measure_consistency sees of a MaskedAutoencoder: ``grid``, ``eval()``, ``model(imgs, mask=...)`` with
    ``pred`` and ``target`` (B, L, p*p*C). ``kind``: constant (ignores its input), perfect (the target whatever the
    mask), noisy (the target plus fresh noise of std ``noise`` on every call), image_mean (every patch predicted as
    the image's mean visible patch: blur at the image scale)."""

    def __init__(self, kind: str, noise: float = 0.0, patch: int = 4, size: int = 16) -> None:
        super().__init__()
        self.kind, self.noise, self.patch = kind, noise, patch
        self.grid = (size // patch, size // patch)
        self.gen = torch.Generator().manual_seed(1)

    def forward(self, imgs, noise=None, generator=None, mask=None) -> MAEOutput:
        target = patchify(imgs, self.patch)
        if self.kind == "constant":
            pred = torch.full_like(target, 0.3)
        elif self.kind == "perfect":
            pred = target.clone()
        elif self.kind == "noisy":
            pred = target + self.noise * torch.randn(target.shape, generator=self.gen)
        else:  # image_mean
            keep = (1 - mask.mask).unsqueeze(-1)
            pred = ((target * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True)).expand_as(target)
        return MAEOutput(torch.zeros(()), pred, target, mask, {})


def measure(model: nn.Module) -> dict:
    imgs = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return measure_consistency(model, imgs.split(5), rounds=4, ratio=0.75, seed=3)


def test_constant_predictor_gets_the_worst_score_not_the_best():
    s = measure(StubModel("constant"))
    assert s["variance"] == 0.0 and s["pairwise"] == 0.0  # the raw figures call it perfectly consistent
    assert s["prediction_variance"] == 0.0 and s["inconsistency"] == 1.0  # the normalised one: the worst
    assert s["recon_error"] > 0.9  # and its reconstruction is as bad as predicting a constant


def test_perfect_predictor_gets_the_best_score():
    s = measure(StubModel("perfect"))
    assert s["variance"] == 0.0 and s["inconsistency"] == 0.0 and s["recon_error"] == 0.0
    assert s["prediction_variance"] == pytest.approx(1.0, abs=0.1)  # unit-variance images
    assert s["target_variance"] == pytest.approx(1.0, abs=0.1)


def test_noisy_predictor_sits_in_between_and_grows_with_the_noise():
    scores = []
    for std in (0.1, 0.5, 1.0, 3.0):
        s = measure(StubModel("noisy", noise=std))
        assert s["variance"] == pytest.approx(std**2, rel=0.1)  # fresh noise per round
        assert s["recon_error"] == pytest.approx(std**2, rel=0.1)
        # about s^2 / (var(target) + s^2) with var(target) = 1
        assert s["inconsistency"] == pytest.approx(std**2 / (1 + std**2), rel=0.1)
        scores.append(s["inconsistency"])
    assert 0.0 < scores[0] < scores[1] < scores[2] < scores[3] < 1.0


def test_image_level_blur_scores_near_the_worst():
    """One prediction per image (its mean visible patch): varies across images, not across an image's patches."""
    s = measure(StubModel("image_mean"))
    assert s["inconsistency"] > 0.9
    assert s["recon_error"] > 0.9 * s["target_variance"]


def test_normalised_inconsistency_edges():
    assert normalised_inconsistency(0.0, 0.0) == 1.0 and normalised_inconsistency(0.5, 0.0) == 1.0
    assert normalised_inconsistency(2.0, 1.0) == 1.0 and normalised_inconsistency(0.25, 1.0) == 0.25
