"""The loss terms, images and time of the steps since the last log line, kept on the device until it is written."""

from __future__ import annotations

import time

import torch

from .distributed import all_reduce_mean


class LossWindow:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.terms: dict[str, torch.Tensor] = {}  # summed over the window's good steps
        self.steps, self.images, self.bad = 0, 0, 0
        self.start = time.perf_counter()
        self._before: dict[str, torch.Tensor] = {}

    def begin_step(self) -> None:
        """Remember the terms as they are before a step, to drop its share if it turns out bad."""
        self._before = dict(self.terms)

    def add(self, terms: dict[str, torch.Tensor], weight: float, images: int) -> None:
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0) + value.detach().float() * weight
        self.images += images

    def end_step(self, bad: bool) -> None:
        if bad:
            self.terms, self.bad = self._before, self.bad + 1
        else:
            self.steps += 1

    def record(self, world_size: int) -> dict[str, float]:
        """Mean terms over the window's good steps and over the ranks (the one host sync), and img/s overall."""
        means = {k: all_reduce_mean(v).item() / self.steps for k, v in self.terms.items()}
        return {**means, "img_per_s": self.images * world_size / (time.perf_counter() - self.start)}
