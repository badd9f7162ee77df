"""EMAE's self-consistency loss between the K parts of each image.

For every pair of parts i < j, on the patches masked in *both* parts, each prediction is pulled toward the
other's frozen value: d(sg(P_i), P_j) + d(P_i, sg(P_j)), sg = stop-gradient. The result is the mean over
pairs and positions (each term a mean over the patch's p*p*C values). d is L1 (default) or L2 (squared).

This symmetric form is the paper's description, kept as written, but its stop-gradients change nothing in
training: its gradient is exactly that of d(P_i, P_j) (each side receives the gradient of the one term it is live
in), and only its value is doubled. An asymmetric form (one side always frozen) would train differently.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

DISTANCES = ("l1", "l2")  # the one vocabulary of patch distances: mean |a - b| or mean (a - b)^2 over a patch


def patch_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """(..., P) -> (...): the mean over the last dimension of |a - b| (``l1``) or (a - b)^2 (``l2``)."""
    diff = a - b
    return (diff.abs() if distance == "l1" else diff.pow(2)).mean(dim=-1)


def self_consistency(pred: torch.Tensor, mask: torch.Tensor, parts: int, distance: str = "l1") -> torch.Tensor:
    """``pred`` (B*K, L, P) and ``mask`` (B*K, L) with the K parts of an image in consecutive rows."""
    pred = pred.unflatten(0, (-1, parts))
    mask = mask.unflatten(0, (-1, parts))
    total = pred.new_zeros(())
    count = mask.new_zeros(())
    for i, j in itertools.combinations(range(parts), 2):
        both = mask[:, i] * mask[:, j]
        pi, pj = pred[:, i], pred[:, j]
        d = patch_distance(pi.detach(), pj, distance) + patch_distance(pi, pj.detach(), distance)
        total = total + (d * both).sum()
        count = count + both.sum()
    return total / count.clamp_min(1)


class SelfConsistencyLoss(nn.Module):
    def __init__(self, distance: str = "l1") -> None:
        super().__init__()
        assert distance in DISTANCES, distance
        self.distance = distance

    def forward(self, pred: torch.Tensor, mask: torch.Tensor, parts: int) -> torch.Tensor:
        return self_consistency(pred, mask, parts, self.distance)
