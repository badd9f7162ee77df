"""Some of an image source's images: a seeded, class-balanced draw (evaluation subsets, the pre-training monitor)."""

from __future__ import annotations

import torch


class Subset:
    """Some of a source's images, same interface (``fetch``, ``labels``, ``classes``, ``root``)."""

    def __init__(self, source, indices: list[int]) -> None:
        self.source, self.indices = source, indices
        self.root, self.classes = source.root, source.classes
        self.labels = None if source.labels is None else [source.labels[i] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def fetch(self, index: int):
        return self.source.fetch(self.indices[index])


def limit(source, n: int | None, seed: int = 0):
    """At most ``n`` images, a seeded class-balanced draw (round robin over classes; unlabelled: a seeded draw);
    all when n is None."""
    if n is None or n >= len(source):
        return source
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed)).tolist()
    labels = source.labels if source.labels is not None else [0] * len(source)
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(labels[i], []).append(i)
    picked: list[int] = []
    queues = [by_class[c] for c in sorted(by_class)]
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    return Subset(source, sorted(picked))
