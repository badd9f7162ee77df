"""One checkpoint format for every method: a versioned dict, written atomically.

A checkpoint holds ``format``, ``version``, ``method``, ``config`` (the full run config as a dict), ``model``,
and for training state ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``epoch``, ``batch_in_epoch``
(micro-batches of ``epoch`` already done) and ``global_step`` (optimiser steps).
"""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from .sharded import load_sharded

FORMAT = "emae-checkpoint"
FORMAT_VERSION = 1
NAME_RE = re.compile(r"checkpoint-(\d+)\.(?:pt|dcp)$")  # .dcp: a sharded (FSDP) checkpoint folder


def checkpoint_name(global_step: int) -> str:
    return f"checkpoint-{global_step:08d}.pt"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check an emae checkpoint; one-line errors for missing, unreadable or foreign files."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.is_dir():  # a sharded checkpoint, gathered into this process
            ckpt = load_sharded(path)
        else:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - truncated or not a torch file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an emae checkpoint")
    if ckpt.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {ckpt['version']}; this emae reads up to {FORMAT_VERSION}")
    return ckpt


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoints in ``folder``, newest (highest step) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME_RE.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_valid_checkpoint(folder: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; broken ones are skipped with a warning."""
    for path in list_checkpoints(folder):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
    return None


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that never finished (a killed process leaves them)."""
    folder = Path(folder)
    found = list(folder.glob(".checkpoint-*.tmp")) if folder.is_dir() else []
    for p in found:  # files of plain checkpoints, folders of sharded ones
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return found


def prune_checkpoints(folder: str | Path, keep_last: int) -> None:
    if keep_last > 0:
        for old in list_checkpoints(folder)[keep_last:]:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def rng_state(mask_generator: torch.Generator | None = None) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if mask_generator is not None:
        state["mask"] = mask_generator.get_state()
    return state


def set_rng_state(state: dict, mask_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if mask_generator is not None and "mask" in state:
        mask_generator.set_state(state["mask"])
