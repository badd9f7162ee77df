"""What every training command does around the loop: its run folder and resume point, its log (config.yaml,
log.jsonl, trackers), its standard hooks, and the result it returns.

A command (``pretrain`` here; ``finetune``, ``linprobe``, ``segment`` in :mod:`emae.eval`) builds its model, data,
optimiser and ``step_loss``, then :func:`make_loop` assembles a :class:`~emae.engine.loop.Loop` with these hooks,
in order: the non-finite guard, the command's own early hooks (e.g. a benchmark's timer), the progress bar, the
stop conditions, log lines, checkpoints, then the command's other hooks (pictures, evaluation, the monitor).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from ..config import LoopConfig
from ..errors import ConfigError
from .atomic import check_writable, write_text_atomic
from .checkpoint import latest_valid_checkpoint, list_checkpoints, load_checkpoint, remove_temporaries
from .checkpointing import CheckpointHook
from .distributed import DistInfo, grad_scaler, is_main
from .hooks import GuardHook, LogHook, ProgressHook, StopHook
from .loop import Hook, Loop, Position, StepLoss
from .optim import Schedule
from .resume import announce, check_resume_config, truncate_log
from .signals import StopSignals
from .tracking import RunLog

RUN_FILES = ("log.jsonl", "config.yaml", "tb", "wandb-id.txt")  # tb: TensorBoard events


@dataclass
class RunResult:
    output_dir: Path
    checkpoint: Path | None
    global_step: int
    loss: float
    signal: str | None = None  # "SIGTERM" / "SIGINT" when a signal stopped the run (after a checkpoint)
    bad_steps: int = 0  # steps skipped by the non-finite guard
    already_finished: bool = False  # resumed a run that had reached its last step: nothing ran


def prepare_output_dir(cfg: Any, default: Path, resume: str | None, overwrite: bool, trust: bool = False,
                       force_config: bool = False, world_size: int = 1,
                       run_files: tuple[str, ...] = RUN_FILES) -> tuple[Path, Path | None, list[Path]]:
    """The run folder (``cfg.output_dir`` or ``default``; checked writable), the checkpoint to resume from (None for
    a fresh run; its config is checked against ``cfg``: :mod:`emae.engine.resume`), and, with ``overwrite``, the old
    run's files, which the caller deletes only once the new run is ready to write."""
    if resume not in (None, "auto"):
        ckpt = Path(resume)
        out = Path(cfg.output_dir) if cfg.output_dir else ckpt.parent
        check_writable(out)
        _check_resume(cfg, ckpt, load_checkpoint(ckpt, trust=trust, peek=True), world_size, force_config)
        return out, ckpt, []
    if cfg.output_dir is None and resume == "auto":
        raise ConfigError("--resume auto needs --output: the run folder to continue")
    out = Path(cfg.output_dir) if cfg.output_dir else default
    check_writable(out)
    existing = list_checkpoints(out) + [out / f for f in run_files if (out / f).exists()]
    if resume == "auto":
        found = latest_valid_checkpoint(out, trust)
        if found:
            _check_resume(cfg, *found, world_size, force_config)
        restart = [] if list_checkpoints(out) else existing  # a run killed before its first checkpoint starts over
        return out, (found[0] if found else None), restart
    if existing and not overwrite:
        raise ConfigError(f"output folder {out} already holds a run; pass --resume auto to continue it or --overwrite")
    return out, None, existing


def _check_resume(cfg: Any, path: Path, ckpt: dict, world_size: int, force: bool) -> None:
    command = ckpt.get("command", "pretrain")
    if command != cfg.command:
        raise ConfigError(f"checkpoint {path} is a run of `emae {command}`; `emae {cfg.command}` cannot resume it")
    changes = check_resume_config(cfg, ckpt, path, world_size, force)
    if is_main():
        announce(path, ckpt, changes, force)


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_run_log(out: Path, config: dict, t: LoopConfig, resume_path: Path | None, step: int, stale: list[Path],
                 main: bool) -> tuple[RunLog, float]:
    """Rank 0 clears an overwritten run's files (only now that the new run is ready), removes half-written
    checkpoints, writes config.yaml and cuts a resumed run's log back to its checkpoint (no step is logged twice;
    TensorBoard purges its own copy). Returns the run's log and the last logged loss (a resumed run's)."""
    last_loss = math.nan
    if main:
        for path in stale:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        write_text_atomic(yaml.safe_dump(config, sort_keys=False), out / "config.yaml")
        if resume_path is not None and resume_path.parent.resolve() == out.resolve():
            logged = truncate_log(out / "log.jsonl", step)
            last_loss = math.nan if logged is None else logged
    log = RunLog(out, enabled=main, tensorboard=t.tensorboard, wandb=t.wandb, wandb_project=t.wandb_project,
                 wandb_name=t.wandb_name, config=config, resume_step=None if resume_path is None else step)
    return log, last_loss


@dataclass
class LoopParts:
    """What a command hands :func:`make_loop`: its model, its step and its data."""

    model: torch.nn.Module
    trainable: torch.nn.Module
    step_loss: Callable[[Any], StepLoss]
    to_device: Callable[[Any], Any]
    optimizer: torch.optim.Optimizer
    lr: float
    loader: Any
    sampler: Any  # has batches_per_epoch and set_epoch(epoch, start_batch)
    steps_per_epoch: int


def make_loop(parts: LoopParts, t: LoopConfig, info: DistInfo, out: Path, log: RunLog, signals: StopSignals,
              meta: dict, bar: tqdm | None, early: list[Hook] = (), late: list[Hook] = (),
              generators: dict[str, torch.Generator] | None = None, sharded: bool = False) -> Loop:
    """The loop with the standard hooks; ``early`` hooks run right after the guard, ``late`` ones after the
    checkpoints; ``meta`` goes into every checkpoint (``command``, ``config``, ...)."""
    total = t.max_steps or t.epochs * parts.steps_per_epoch
    hooks: list[Hook] = [GuardHook(t.max_bad_steps, bar), *early]
    if bar is not None:
        hooks.append(ProgressHook(bar))
    hooks += [StopHook(signals, t.stop_after_steps), LogHook(t.log_every, bar),
              CheckpointHook(meta, t.save_every, t.save_every_steps, t.keep_last, generators, sharded), *late]
    return Loop(model=parts.model, trainable=parts.trainable, step_loss=parts.step_loss, to_device=parts.to_device,
                optimizer=parts.optimizer, schedule=Schedule.for_loop(parts.optimizer, t, parts.lr,
                                                                      parts.steps_per_epoch, total),
                scaler=grad_scaler(info, enabled=t.precision == "fp16"), loader=parts.loader,
                sampler=parts.sampler,
                steps_per_epoch=parts.steps_per_epoch, total_steps=total, accum_iter=t.accum_iter,
                precision=t.precision, clip_grad=t.clip_grad, info=info, log=log, out=out, hooks=hooks,
                pos=Position())


def hook(loop: Loop, kind: type) -> Any:
    """The loop's hook of a kind (e.g. its :class:`~emae.engine.checkpointing.CheckpointHook`)."""
    return next(h for h in loop.hooks if isinstance(h, kind))


def finish(loop: Loop, signals: StopSignals, last_loss: float, resume_path: Path | None) -> RunResult:
    """The signal and end records, and the result: the last checkpoint (or, for a resumed run that had already
    finished, the one it resumed), the step, the last logged loss, the bad steps."""
    saved = hook(loop, CheckpointHook).last
    logged = hook(loop, LogHook).last_loss
    loss = last_loss if math.isnan(logged) else logged
    stopped_by = None if loop.done else signals.received
    checkpoint = saved or resume_path
    if stopped_by:
        loop.log.write(type="signal", signal=stopped_by, step=loop.pos.step, checkpoint=str(checkpoint))
    bad = hook(loop, GuardHook).guard.total
    loop.log.write(type="end", global_step=loop.pos.step, epoch=loop.pos.epoch, checkpoint=str(checkpoint), loss=loss,
                   bad_steps=bad)
    return RunResult(loop.out, checkpoint, loop.pos.step, loss, stopped_by, bad, saved is None)
