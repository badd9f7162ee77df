"""Experiment tracking: one interface in front of ``log.jsonl``, TensorBoard and Weights & Biases.

The training loops call :meth:`RunLog.write` once per record and :meth:`RunLog.image` for pictures. Every record
goes to ``log.jsonl``; its numbers also go to TensorBoard (event files under ``RUN/tb/``) and, when asked for, to
W&B, as ``<type>/<key>`` scalars (``train/loss``, ``train/lr``, ``train/img_per_s``, ``epoch/val_top1``, ...) at
the record's step. Only the process that logs (rank 0) builds one with ``enabled=True``; the others write nothing.

Resuming appends to the same TensorBoard run: the writer purges whatever an earlier process wrote at or after
the resumed step, so the curves continue without a jump or an overlap. W&B resumes the same run too (its id is
kept in ``RUN/wandb-id.txt``).
"""

from __future__ import annotations

import atexit
import importlib
import math
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import ConfigError
from .log import JsonlLog

STEP_KEYS = ("step", "global_step")
NOT_SCALARS = {"time", "step", "global_step", "epoch", "type"}


def scalars(record: dict) -> dict[str, float]:
    """The record's finite numbers, tagged ``<type>/<key>``."""
    kind = record.get("type", "record")
    return {f"{kind}/{k}": float(v) for k, v in record.items()
            if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def require(tensorboard: bool, wandb: bool) -> None:
    """One-line errors, before any work, for a tracker whose package is missing."""
    if tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError as e:
            raise ConfigError(f"TensorBoard logging needs the tensorboard package ({e}); pip install tensorboard, "
                              "or turn it off (train.tensorboard=false / --no-tensorboard)") from None
    if wandb:
        try:
            importlib.import_module("wandb")
        except ImportError:
            raise ConfigError("W&B logging needs the optional extra: pip install 'emae[wandb]' "
                              "(or turn it off: train.wandb=false)") from None


class TensorBoardSink:
    def __init__(self, folder: Path, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=purge_step, flush_secs=10)
        atexit.register(self.close)  # a run that dies of an exception still flushes its events

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, picture: Image.Image, step: int) -> None:
        import numpy as np

        self.writer.add_image(tag, np.asarray(picture.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()  # idempotent
        atexit.unregister(self.close)


class WandbSink:
    def __init__(self, out: Path, project: str, name: str | None, config: dict | None) -> None:
        import wandb

        id_file = out / "wandb-id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        # WANDB_MODE=offline (or disabled) in the environment is honoured by wandb.init itself
        self.run = wandb.init(project=project, name=name or out.name, id=run_id, resume="allow", dir=str(out),
                              config=config, reinit="create_new")
        id_file.write_text(run_id + "\n")
        self.wandb = wandb

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, tag: str, picture: Image.Image, step: int) -> None:
        self.run.log({tag: self.wandb.Image(picture)}, step=step)

    def close(self) -> None:
        self.run.finish()


class RunLog:
    """``log.jsonl`` plus the trackers asked for; ``enabled=False`` (ranks other than 0) makes every call a no-op.

    ``resume_step``: the checkpoint's step a resumed run continues from (TensorBoard drops what was logged after it).
    """

    def __init__(self, out: str | Path, *, enabled: bool = True, tensorboard: bool = True, wandb: bool = False,
                 wandb_project: str = "emae", wandb_name: str | None = None, config: dict | None = None,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.step = resume_step or 0
        self.sinks: list[Any] = []
        if not enabled:
            return
        require(tensorboard, wandb)
        out = Path(out)
        self.jsonl = JsonlLog(out / "log.jsonl")
        if wandb:
            self.sinks.append(WandbSink(out, wandb_project, wandb_name, config))
        if tensorboard:
            # purged: what an earlier process logged after the checkpoint (steps the resumed run logs again)
            self.sinks.append(TensorBoardSink(out / "tb", None if resume_step is None else resume_step + 1))

    def write(self, **record) -> None:
        """One record: a line of ``log.jsonl``, and its numbers as scalars at its step (else the last step seen)."""
        if not self.enabled:
            return
        self.jsonl.write(**record)
        step = next((record[k] for k in STEP_KEYS if isinstance(record.get(k), int)), self.step)
        self.step = max(self.step, step)
        values = scalars(record)
        for sink in self.sinks if values else ():
            sink.scalars(values, step)

    def image(self, tag: str, picture: Image.Image, step: int) -> None:
        if self.enabled:
            for sink in self.sinks:
                sink.image(tag, picture, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

