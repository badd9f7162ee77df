"""What one pre-training run holds while the phases in :mod:`emae.engine.trainer` and :mod:`emae.engine.loop`
advance it, and what it returns."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config
from ..data import eval_transform
from .distributed import DistInfo
from .guard import NonFiniteGuard
from .perf import StepTimer
from .tracking import RunLog


@dataclass
class RunResult:
    output_dir: Path
    checkpoint: Path
    global_step: int
    loss: float
    benchmark: dict | None = None  # --benchmark: img/s, step times, data wait, memory, TFLOP/s, MFU
    signal: str | None = None  # "SIGTERM" / "SIGINT" when a signal stopped the run (after a checkpoint)
    bad_steps: int = 0  # steps skipped by the non-finite guard
    already_finished: bool = False  # resumed a run that had reached its last step: nothing ran


@dataclass
class Run:
    """What a pre-training run holds; the phases below read and advance it, top to bottom."""

    cfg: Config
    info: DistInfo
    out: Path
    resume_path: Path | None
    source: object  # an image source: fetch(i), len, root
    loader: object  # its sampler has batches_per_epoch and set_epoch(epoch, start_batch)
    steps_per_epoch: int
    total_steps: int
    model: torch.nn.Module  # the plain model: checkpoints, pictures
    wrapped: torch.nn.Module  # DDP / FSDP (or the model itself)
    forward: object  # ``wrapped``, compiled when asked
    opt: torch.optim.Optimizer
    sched: object
    scaler: object
    mask_gen: torch.Generator
    guard: NonFiniteGuard
    lr: float
    timer: StepTimer | None
    log: RunLog | None = None
    bar: tqdm | None = None
    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    last_good: Path | None = None  # newest checkpoint not inside a stretch of bad steps
    last_ckpt: Path | None = None
    last_loss: float = float("nan")
    vis: torch.Tensor | None = None  # the picture's images, chosen once

    @property
    def sampler(self):
        return self.loader.sampler


def vis_batch(cfg: Config, source, device: torch.device) -> torch.Tensor | None:
    """A fixed, evenly spread set of un-augmented images for the reconstruction picture."""
    n = min(cfg.train.num_vis, len(source))
    if n == 0:
        return None
    tf = eval_transform(cfg.model.image_size, cfg.data.mean, cfg.data.std)
    preview = getattr(source, "preview_indices", None)  # shards: from the first shard only (one to read)
    picks = preview(n) if preview else np.linspace(0, len(source) - 1, n).round().astype(int)
    return torch.stack([tf(source.fetch(int(i))[0]) for i in picks]).to(device)


def timed_batches(loader, timer: StepTimer | None):
    """The loader's batches; with a timer, the time spent waiting for each is charged to the current step."""
    if timer is None:
        yield from loader
        return
    it = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        timer.waited(time.perf_counter() - start)
        yield batch
