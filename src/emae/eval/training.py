"""What the evaluation commands that train (finetune, the ``mae`` linear probe, segment) share: a shuffled,
resumable loader, and the run of :func:`emae.engine.loop.fit` with the session's standard hooks, checkpoints and
log (:mod:`emae.engine.session`), in one process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import LoopConfig
from ..data import TransformedImages, collate
from ..data.loader import SeededShuffle, close_loader, ignore_stop_signals
from ..engine.checkpoint import load_checkpoint, state_mismatch
from ..engine.checkpointing import restore
from ..engine.distributed import DistInfo
from ..engine.loop import Hook, Loop, StepInfo, StepLoss, fit
from ..engine.perf import configure_backends
from ..engine.session import LoopParts, RunResult, finish, make_loop, open_run_log
from ..engine.signals import StopSignals
from ..errors import CheckpointError
from ..engine.tracking import require as require_trackers


def shuffled_loader(source, transform: Callable, batch_size: int, workers: int, seed: int,
                    dataset: Any = None, collate_fn: Callable = collate) -> DataLoader:
    """Training batches in :class:`~emae.data.loader.SeededShuffle` order (the loader's own generator is a separate
    one, so that its per-epoch seed draw leaves the process's RNG alone); drops the last partial batch."""
    dataset = dataset if dataset is not None else TransformedImages(source, transform)
    return DataLoader(dataset, batch_size=batch_size, sampler=SeededShuffle(len(dataset), batch_size, seed),
                      drop_last=True, num_workers=workers, collate_fn=collate_fn,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
                      worker_init_fn=ignore_stop_signals)


class EpochRecords(Hook):
    """The per-epoch evaluation of a training command: the mean training loss of the epoch, an ``epoch`` record
    (``record`` adds the scores), the history and the best so far, kept in checkpoints (key ``evaluation``), and a
    ``summary`` record at the end (``summary`` gives it)."""

    name = "evaluation"

    def __init__(self) -> None:
        self.history: list[dict] = []
        self.best: dict | None = None
        self.epoch_loss = 0.0

    def record(self, loop: Loop) -> dict:
        raise NotImplementedError

    def summary(self) -> dict:
        raise NotImplementedError

    def after_step(self, loop: Loop, info: StepInfo) -> None:
        self.epoch_loss += float(info.loss) / loop.accum_iter

    def after_epoch(self, loop: Loop) -> None:
        self.evaluate_now(loop, loop.steps_per_epoch)

    def evaluate_now(self, loop: Loop, steps: int) -> None:
        base = {"epoch": loop.pos.epoch, "step": loop.pos.step, "train_loss": self.epoch_loss / max(1, steps),
                "lr": loop.schedule.value(loop.pos.step - 1)}
        self.epoch_loss = 0.0
        record = {**base, **self.record(loop)}
        loop.log.write(type="epoch", **record)
        self.history.append(record)

    def on_end(self, loop: Loop) -> None:
        if loop.done and (not self.history or self.history[-1]["step"] != loop.pos.step):
            # train.max_steps ended the run inside an epoch: it is evaluated where it stands
            self.evaluate_now(loop, loop.pos.batch // loop.accum_iter)
        if self.history:
            loop.log.write(type="summary", step=loop.pos.step, **self.summary())

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best, "epoch_loss": self.epoch_loss}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best = state.get("history", []), state.get("best")
        self.epoch_loss = state.get("epoch_loss", 0.0)


@dataclass
class TrainingRun:
    """One training command's run: its folder, config and model, what it checkpoints, and how it resumes."""

    out: Path
    config: dict  # the command's whole config (config.yaml, checkpoints)
    t: LoopConfig
    device: torch.device
    meta: dict  # goes into every checkpoint (command, config, the classifier's description, ...)
    resume: Path | None = None  # the run checkpoint to continue
    progress: bool = True

    def __post_init__(self) -> None:
        require_trackers(self.t.tensorboard, self.t.wandb)
        configure_backends(self.device, True, self.t.threads)
        self.ckpt = load_checkpoint(self.resume, map_location=self.device) if self.resume else None

    def load_weights(self, model: nn.Module) -> None:
        """A resumed run's weights (before the optimiser is built on them)."""
        if self.ckpt is not None:
            try:
                model.load_state_dict(self.ckpt["model"])
            except (KeyError, RuntimeError) as e:
                raise CheckpointError(f"checkpoint {self.resume} cannot resume this run "
                                      f"({state_mismatch(model, self.ckpt, e)})") from None

    def fit(self, model: nn.Module, step_loss: Callable[[Any], StepLoss], to_device: Callable[[Any], Any],
            optimizer: torch.optim.Optimizer, lr: float, loader: DataLoader, late: list[Hook],
            start: dict) -> tuple[Loop, RunResult]:
        """The loop with the standard hooks and the command's (``late``: EMA, evaluation), which run before the
        checkpoints, so that a checkpoint holds their state and the RNG after them; ``start``: the start record."""
        info = DistInfo(device=self.device)
        steps_per_epoch = loader.sampler.batches_per_epoch // self.t.accum_iter
        bar = tqdm(total=self.t.max_steps or self.t.epochs * steps_per_epoch, unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        parts = LoopParts(model, model, step_loss, to_device, optimizer, lr, loader, loader.sampler, steps_per_epoch)
        try:
            with StopSignals() as signals:
                loop = make_loop(parts, self.t, info, self.out, None, signals, self.meta, bar, early=late)
                if self.ckpt is not None:
                    restore(loop, self.ckpt, self.resume)
                    self.ckpt = None
                bar.update(loop.pos.step)
                loop.log, last_loss = open_run_log(self.out, self.config, self.t, self.resume, loop.pos.step, [], True)
                try:
                    if self.resume is None:
                        loop.log.write(type="start", **start, lr=lr, steps_per_epoch=steps_per_epoch,
                                       total_steps=loop.total_steps)
                    else:
                        loop.log.write(type="resume", checkpoint=str(self.resume), global_step=loop.pos.step)
                    fit(loop)
                    result = finish(loop, signals, last_loss, self.resume)
                finally:
                    loop.log.close()
        finally:
            bar.close()
            close_loader(loader)
        return loop, result
