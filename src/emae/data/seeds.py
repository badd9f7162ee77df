"""The seeds that make data order and augmentation a pure function of (run seed, epoch, sample)."""

from __future__ import annotations


def epoch_seed(seed: int, epoch: int) -> int:
    """Seeds the epoch's permutation (of images, or of shards)."""
    return seed * 1_000_003 + epoch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seeds one sample's augmentation: the same with any worker count, rank layout or resume point."""
    return (epoch_seed(seed, epoch) * 10_000_019 + index) % (2**63 - 1)
