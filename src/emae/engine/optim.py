"""The optimiser of pre-training, and the one learning-rate schedule of every command that trains."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from ..config import LoopConfig, TrainConfig


def effective_lr(t: TrainConfig, world_size: int = 1, sequences_per_image: int = 1) -> float:
    """``lr`` if given, else base_lr * effective batch / 256 (MAE's linear scaling rule). With
    ``t.lr_batch_unit == "sequences"`` the batch counts encoder sequences (images x ``sequences_per_image``: K for
    EMAE's parallel masks), so an EMAE step that encodes as many sequences as an MAE step gets MAE's lr."""
    if t.lr is not None:
        return t.lr
    per_image = sequences_per_image if t.lr_batch_unit == "sequences" else 1
    return t.base_lr * t.batch_size * per_image * t.accum_iter * world_size / 256


def build_optimizer(model: nn.Module, t: TrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW; biases, norms and other 1-D parameters and the tokens get no weight decay."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups = param_groups_weight_decay(model, t.weight_decay, no_weight_decay_list=skip)
    # The fused kernel runs on CPU as well as CUDA (one kernel instead of a loop over tensors; same numbers
    # within 1e-6); other devices get PyTorch's default.
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(t.betas), fused=fused or None)


def warmup_cosine(step: int, warmup_steps: float, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimiser step ``step``: linear warmup from 0, then half-cosine to min_ratio."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Schedule:
    """Warmup-cosine per optimiser step (:func:`warmup_cosine`) over ``total`` steps, peak ``lr`` ending at
    ``min_lr``; warmup in steps (fractions allowed). :meth:`apply` sets every parameter group's lr for a step, times
    the group's ``lr_scale`` (timm's layer-decay groups carry one). Stateless: a resumed run applies its step."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, warmup_steps: float, total_steps: int,
                 min_lr: float = 0.0) -> None:
        self.optimizer, self.lr, self.warmup_steps, self.total_steps = optimizer, lr, warmup_steps, total_steps
        self.min_ratio = min_lr / lr

    def factor(self, step: int) -> float:
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_ratio)

    def value(self, step: int) -> float:
        """The lr (scale 1) of optimiser step ``step`` (0-based)."""
        return self.lr * self.factor(step)

    def apply(self, step: int) -> None:
        lr = self.value(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    @classmethod
    def for_loop(cls, optimizer: torch.optim.Optimizer, t: LoopConfig, lr: float, steps_per_epoch: int,
                 total_steps: int) -> Schedule:
        return cls(optimizer, lr, t.warmup_epochs * steps_per_epoch, total_steps, t.min_lr)
