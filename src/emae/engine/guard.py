"""The non-finite guard: a step whose loss or gradients are not finite is skipped, counted and, after
``train.max_bad_steps`` in a row, stops the run with one line that names the step and the last good checkpoint.

A skipped step still *counts*: its data is consumed and the step counter and the lr schedule move on, only the
parameter update (and the optimiser's moments) are left out. So a run's length and schedule do not depend on
how many steps were bad, and a checkpoint taken in a bad stretch resumes exactly like any other.

The check costs one host sync per optimiser step (``bool`` of a single flag tensor). In a distributed run the
decision must agree on every rank: pass ``reduce`` (e.g. "true on any rank").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..errors import TrainingError


def all_finite(loss: torch.Tensor, params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """A 0-d bool tensor: the loss and every gradient are finite (checked through their norms: one flag)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    flag = torch.isfinite(loss.detach().float()).all()
    if grads:
        norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [g.norm() for g in grads]
        flag = flag & torch.isfinite(torch.stack([n.float() for n in norms])).all()
    return flag


class NonFiniteGuard:
    """Counts bad steps; ``check`` returns True when the step must be skipped and raises after too many in a row."""

    def __init__(self, max_bad_steps: int, reduce: Callable[[bool], bool] | None = None) -> None:
        self.max_bad_steps = max_bad_steps
        self.reduce = reduce
        self.total = 0  # bad steps over the whole run (kept in checkpoints)
        self.consecutive = 0

    def is_bad(self, loss: torch.Tensor, params: Iterable[torch.nn.Parameter]) -> bool:
        bad = not bool(all_finite(loss, params))  # the one host sync of the guard
        return self.reduce(bad) if self.reduce is not None else bad

    def record(self, bad: bool, step: int, last_good: Path | None) -> None:
        """Count step ``step``; after ``max_bad_steps`` consecutive bad ones, raise :class:`TrainingError`."""
        if not bad:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        if self.consecutive >= self.max_bad_steps:
            where = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was written before it"
            raise TrainingError(
                f"{self.consecutive} consecutive steps with a non-finite loss or gradient "
                f"(steps {step - self.consecutive + 1}-{step}, train.max_bad_steps={self.max_bad_steps}); "
                f"stopped at step {step}; {where}"
            )

    def state_dict(self) -> dict:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.consecutive = state.get("total", 0), state.get("consecutive", 0)
