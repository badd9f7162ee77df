"""The one training loop of every command (pretrain, finetune, the ``mae`` linear probe, segment).

:func:`fit` runs epochs of micro-batches: forward and backward of each (the command's ``step_loss``), an optimiser
step every ``train.accum_iter`` of them, the lr schedule, and calls to its hooks at fixed places. Everything
optional (the non-finite guard, signals, checkpoints, log lines and trackers, the progress bar, timing, the
monitor, evaluation) is a :class:`Hook`; the loop itself reads top to bottom::

    for each epoch:                            sampler.set_epoch(epoch, batch)
        for each micro-batch:                  [before_step]  forward, backward
            every accum_iter micro-batches:    [skip_update]  update (or skip), schedule  [after_step]
            stop when a hook asks or the run is done
        [after_epoch]
    [on_end]

A run's position (epoch, micro-batch in the epoch, optimiser step) is :class:`Position`, which checkpoints keep;
with a sampler that can start mid-epoch and per-sample seeded data, a resumed run repeats the same steps exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .device import autocast
from .distributed import DistInfo, grad_sync
from .optim import Schedule
from .tracking import RunLog


@dataclass
class Position:
    """Where a run is: its epoch, the micro-batches of that epoch done, the optimiser steps done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class StepLoss:
    """What the forward of one micro-batch gives the loop."""

    loss: torch.Tensor  # the total to optimise
    terms: dict[str, torch.Tensor]  # named parts to log ("loss" and e.g. "recon", "consistency")
    images: int


@dataclass
class StepInfo:
    """What an optimiser step was, for the hooks after it."""

    loss: torch.Tensor  # detached, summed over the micro-batches (each divided by accum_iter)
    skipped: bool
    images: int  # images of this process in the step
    data_wait: float  # seconds spent waiting for the loader in the step


class Sampler(Protocol):
    batches_per_epoch: int

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...


class Hook:
    """Optional behaviour of the loop; every method is a no-op unless overridden. A hook that keeps state across a
    resume has ``state_dict`` / ``load_state_dict`` and a ``name`` (its key in the checkpoint)."""

    def on_start(self, loop: Loop) -> None: ...

    def before_step(self, loop: Loop) -> None: ...

    def skip_update(self, loop: Loop, loss: torch.Tensor) -> bool:
        return False

    def after_micro_step(self, loop: Loop, out: StepLoss) -> None: ...

    def after_step(self, loop: Loop, info: StepInfo) -> None: ...

    def after_epoch(self, loop: Loop) -> None: ...

    def on_end(self, loop: Loop) -> None: ...


@dataclass
class Loop:
    """A run's moving parts. ``model`` is the plain module (checkpoints, hooks); ``trainable`` the one whose
    gradients are synchronised (the DDP / FSDP wrapper, or the model itself)."""

    model: nn.Module
    trainable: nn.Module
    step_loss: Callable[[Any], StepLoss]  # forward of one micro-batch (already on the device)
    to_device: Callable[[Any], Any]  # a loader batch -> what step_loss takes
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    loader: Iterable
    sampler: Sampler
    steps_per_epoch: int
    total_steps: int
    accum_iter: int
    precision: str
    clip_grad: float | None
    info: DistInfo
    log: RunLog
    out: Path
    hooks: list[Hook] = field(default_factory=list)
    pos: Position = field(default_factory=Position)
    stop: str | None = None  # why a hook stopped the run ("SIGTERM", "stop_after_steps", ...)
    last_good: Path | None = None  # the newest checkpoint outside a stretch of bad steps

    @property
    def done(self) -> bool:
        return self.pos.step >= self.total_steps

    @property
    def device(self) -> torch.device:
        return self.info.device

    def call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)


def fit(loop: Loop) -> None:
    """Epochs until the run's last step or until a hook stops it."""
    loop.schedule.apply(loop.pos.step)
    loop.model.train()
    loop.call("on_start")
    while not loop.done and loop.stop is None:
        run_epoch(loop)
        if loop.pos.batch < loop.sampler.batches_per_epoch:  # stopped, or finished, inside the epoch
            break
        loop.pos.epoch, loop.pos.batch = loop.pos.epoch + 1, 0
        loop.call("after_epoch")
    loop.call("on_end")


def run_epoch(loop: Loop) -> None:
    """The rest of the current epoch (from micro-batch ``pos.batch``), unless a hook stops it first."""
    pos, accum = loop.pos, loop.accum_iter
    loop.sampler.set_epoch(pos.epoch, pos.batch)
    waited, images, fetch = 0.0, 0, time.perf_counter()
    for batch in loop.loader:
        waited += time.perf_counter() - fetch
        if pos.batch % accum == 0:  # a step begins
            step_loss = 0
            loop.call("before_step")
        out = micro_step(loop, loop.to_device(batch))
        step_loss, images = step_loss + out.loss.detach(), images + out.images
        pos.batch += 1
        if pos.batch % accum == 0:
            skipped = optimizer_step(loop, step_loss)
            loop.call("after_step", StepInfo(step_loss, skipped, images, waited))
            if loop.stop is not None or loop.done:
                return
            waited, images = 0.0, 0
        fetch = time.perf_counter()


def micro_step(loop: Loop, batch: Any) -> StepLoss:
    """Forward and backward of one micro-batch (gradients all-reduced on the last of a step only)."""
    grad_sync(loop.trainable, (loop.pos.batch + 1) % loop.accum_iter == 0)
    with autocast(loop.device, loop.precision):
        out = loop.step_loss(batch)
    loop.scaler.scale(out.loss / loop.accum_iter).backward()
    loop.call("after_micro_step", out)
    return out


def optimizer_step(loop: Loop, step_loss: torch.Tensor) -> bool:
    """The update, unless a hook (the non-finite guard) skips it; the schedule moves either way. True when skipped."""
    skip = any([hook.skip_update(loop, step_loss) for hook in loop.hooks])  # every hook sees every step
    scaler = loop.scaler
    if not skip:
        if loop.clip_grad:
            scaler.unscale_(loop.optimizer)
            nn.utils.clip_grad_norm_(loop.model.parameters(), loop.clip_grad)
        scaler.step(loop.optimizer)  # unscales inside (fused AdamW: in its kernel)
    elif scaler.is_enabled():
        scaler.unscale_(loop.optimizer)  # records the overflow, so update() lowers the scale as GradScaler's skip does
    scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.pos.step += 1
    loop.schedule.apply(loop.pos.step)  # a skipped step still counts (see engine/guard.py)
    return skip
