"""The loop's standard hooks: the non-finite guard, the stop conditions, log lines, the progress bar, skipped files.
Checkpoints are :mod:`emae.engine.checkpointing`'s, timing :mod:`emae.engine.perf`'s, the monitor
:mod:`emae.engine.monitor`'s. Hooks run in the order of ``Loop.hooks``; the trainer puts them in this file's order."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from ..errors import TrainingError
from .distributed import any_rank
from .guard import NonFiniteGuard
from .loop import Hook, Loop, StepInfo, StepLoss
from .signals import StopSignals
from .window import LossWindow


class GuardHook(Hook):
    """Skips a step whose loss or gradients are not finite; after ``max_bad_steps`` in a row, stops the run with one
    line (see :mod:`emae.engine.guard`). Its counts are kept in checkpoints (key ``guard``)."""

    name = "guard"

    def __init__(self, max_bad_steps: int, bar: tqdm | None = None) -> None:
        self.guard = NonFiniteGuard(max_bad_steps, reduce=any_rank)  # every rank skips the same steps
        self.bar = bar

    def skip_update(self, loop: Loop, loss: torch.Tensor) -> bool:
        # fp16: scaled gradients are finite exactly when the true ones are, so the check needs no unscale
        return self.guard.is_bad(loss, loop.model.parameters())

    def after_step(self, loop: Loop, info: StepInfo) -> None:
        step = loop.pos.step
        if info.skipped:
            loop.log.write(type="bad_step", step=step, epoch=loop.pos.epoch, consecutive=self.guard.consecutive + 1)
            if self.bar is not None:
                self.bar.write(f"warning: step {step}: non-finite loss or gradient, update skipped")
        try:
            self.guard.record(info.skipped, step, loop.last_good)
        except TrainingError as e:
            loop.log.write(type="error", step=step, message=str(e))
            raise

    @property
    def clean(self) -> bool:
        """No bad step since the last good one: a checkpoint now is a good one."""
        return self.guard.consecutive == 0

    def state_dict(self) -> dict:
        return self.guard.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.guard.load_state_dict(state)


class StopHook(Hook):
    """Stops the run after the step in which a stop signal arrived (on any rank), or at ``stop_after_steps``."""

    def __init__(self, signals: StopSignals, stop_after_steps: int | None = None) -> None:
        self.signals, self.stop_after_steps = signals, stop_after_steps

    def after_step(self, loop: Loop, info: StepInfo) -> None:
        if any_rank(bool(self.signals.received)):
            loop.stop = self.signals.received or "signal"  # the signal reached another rank
        elif self.stop_after_steps is not None and loop.pos.step >= self.stop_after_steps:
            loop.stop = "stop_after_steps"


class LogHook(Hook):
    """One ``train`` record every ``log_every`` steps (and at an epoch's end, a stop and the end of the run): the
    mean of each loss term over the window's good steps and over the ranks, the lr of the last step, img/s. A
    window of bad steps only writes nothing."""

    def __init__(self, log_every: int, bar: tqdm | None = None) -> None:
        self.log_every, self.bar = log_every, bar
        self.window = LossWindow()
        self.last_loss = math.nan

    def on_start(self, loop: Loop) -> None:
        self.window.reset()

    def before_step(self, loop: Loop) -> None:
        self.window.begin_step()

    def after_micro_step(self, loop: Loop, out: StepLoss) -> None:
        self.window.add(out.terms, 1 / loop.accum_iter, out.images)

    def after_step(self, loop: Loop, info: StepInfo) -> None:
        self.window.end_step(info.skipped)
        pos = loop.pos
        if (pos.step % self.log_every == 0 or pos.batch == loop.sampler.batches_per_epoch or loop.stop is not None
                or loop.done):
            self.write(loop)

    def after_epoch(self, loop: Loop) -> None:
        self.window.reset()  # a new epoch's window (its speed) starts with the epoch

    def write(self, loop: Loop) -> None:
        w = self.window
        if w.steps:
            values = w.record(loop.info.world_size)
            speed = values.pop("img_per_s")
            self.last_loss, lr = values["loss"], loop.schedule.value(loop.pos.step - 1)
            extra = {"bad_steps": w.bad} if w.bad else {}
            loop.log.write(type="train", step=loop.pos.step, epoch=loop.pos.epoch, **values, lr=lr, img_per_s=speed,
                           **extra)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}",
                                     refresh=False)
        w.reset()


class ProgressHook(Hook):
    """The progress bar: one tick per optimiser step."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def after_step(self, loop: Loop, info: StepInfo) -> None:
        self.bar.update(1)

    def on_end(self, loop: Loop) -> None:
        self.bar.close()


class SkippedFilesHook(Hook):
    """Unreadable files met in an epoch (the loader skips them and names them with the batch): one warning and one
    ``skipped`` record per epoch. ``note(paths)`` is called with each batch's."""

    def __init__(self, bar: tqdm | None = None) -> None:
        self.bar = bar
        self.seen: dict[str, None] = {}  # unique names, in order
        self.epoch = 0

    def note(self, paths: list[str]) -> None:
        self.seen.update(dict.fromkeys(paths))

    def before_step(self, loop: Loop) -> None:
        self.epoch = loop.pos.epoch

    def after_epoch(self, loop: Loop) -> None:
        self.report(loop)

    def on_end(self, loop: Loop) -> None:
        self.report(loop)

    def report(self, loop: Loop) -> None:
        if not self.seen:
            return
        first = list(self.seen)[:10]
        line = f"warning: epoch {self.epoch}: skipped {len(self.seen)} unreadable files, first: {', '.join(first[:3])}"
        if self.bar is not None:
            self.bar.write(line)
        loop.log.write(type="skipped", epoch=self.epoch, count=len(self.seen), first=first)
        self.seen = {}
