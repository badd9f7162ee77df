"""The settings the one training loop reads (``emae.engine.loop``), shared by every command that trains
(pretrain, finetune, the ``mae`` linear probe, segment), and the machine settings of every command."""

from __future__ import annotations

from dataclasses import dataclass

from .typed import MAX_INT, choose, positive, require

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class RunConfig:
    """Where and how a command runs, and what it logs to."""

    batch_size: int = 64  # per process, per micro-batch
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 uses a loss scaler)
    threads: int | None = None  # CPU threads for torch (set_num_threads); null: torch's default. Changes float rounding
    seed: int = 0
    tensorboard: bool = True  # TensorBoard event files in RUN/tb: every scalar of log.jsonl (and pictures)
    wandb: bool = False  # also log to Weights & Biases (pip install 'emae[wandb]'; WANDB_MODE=offline keeps it local)
    wandb_project: str = "emae"
    wandb_name: str | None = None  # W&B run name; None: the run folder's name


@dataclass
class LoopConfig(RunConfig):
    """The loop: its length, optimiser step, schedule, checkpoints and log lines."""

    epochs: int = 6
    max_steps: int | None = None  # run length in optimiser steps (the schedule spans it); overrides epochs
    accum_iter: int = 1  # gradient accumulation: effective batch = batch_size * accum_iter * world size
    base_lr: float = 1.5e-3  # lr = base_lr * effective batch / 256 unless lr is given
    lr: float | None = None
    min_lr: float = 0.0  # the end of the cosine
    warmup_epochs: float = 1.0  # linear warmup from 0 (fractions of an epoch allowed), then half-cosine
    weight_decay: float = 0.05
    clip_grad: float | None = None  # gradient-norm clipping; None: off
    log_every: int = 10  # optimiser steps between log lines
    save_every: int = 1  # write a checkpoint every N epochs (and always at the end)
    save_every_steps: int = 0  # also write a checkpoint every N optimiser steps; 0: off
    keep_last: int = 0  # keep only the newest N checkpoints; 0 keeps all
    stop_after_steps: int | None = None  # stop (with a checkpoint) after this many optimiser steps; schedule unchanged
    max_bad_steps: int = 20  # stop after this many consecutive steps with a non-finite loss or gradient


def check_run(t: RunConfig, prefix: str) -> None:
    positive(t, prefix, "batch_size", allow_none=False)
    choose(t.precision, f"{prefix}precision", PRECISIONS)
    require(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), f"{prefix}device", t.device,
            "use auto, cpu, cuda or cuda:N")
    positive(t, prefix, "threads")
    require(t.seed >= 0, f"{prefix}seed", t.seed, f"must be in [0, {MAX_INT}]")


def check_loop(t: LoopConfig, prefix: str = "train.") -> None:
    check_run(t, prefix)
    positive(t, prefix, "epochs", "accum_iter", "save_every", "log_every", "base_lr", "max_bad_steps",
             allow_none=False)
    positive(t, prefix, "lr", "max_steps", "stop_after_steps", "clip_grad")
    for key in ("min_lr", "warmup_epochs", "weight_decay", "save_every_steps", "keep_last"):
        require(getattr(t, key) >= 0, f"{prefix}{key}", getattr(t, key), "must be >= 0")
