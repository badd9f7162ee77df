"""One checkpoint format for every command that trains: a versioned dict, written atomically.

A checkpoint holds ``format``, ``version``, ``command`` (pretrain, finetune, linprobe, segment), ``config`` (the
command's full config as a dict), ``model``, and for training state ``optimizer``, ``scaler``, ``rng``, ``epoch``,
``batch_in_epoch`` (micro-batches of ``epoch`` already done), ``global_step`` (optimiser steps), ``world_size`` and
the loop's hooks' states (``guard``, ...); pre-training's also ``method`` (:mod:`emae.engine.checkpointing`).

Version 2 stores the numpy RNG state as a tensor, so a checkpoint holds nothing but tensors and plain Python values
and loads with ``torch.load(weights_only=True)`` (:mod:`emae.engine.safe_load`); version 1 files (a numpy array
there) still load safely. Version 3 (the one loop of every command) adds ``command`` (pretrain when absent) and
drops the scheduler's state (the schedule is a function of the step); version 1 and 2 files resume as before.
"""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, OutputError, UnsafeCheckpointError
from .atomic import save_atomic
from .safe_load import torch_load
from .sharded import load_meta, load_sharded

FORMAT = "emae-checkpoint"
FORMAT_VERSION = 3
NAME_RE = re.compile(r"checkpoint-(\d+)\.(?:pt|dcp)$")  # .dcp: a sharded (FSDP) checkpoint folder


def checkpoint_name(global_step: int) -> str:
    return f"checkpoint-{global_step:08d}.pt"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", trust: bool = False,
                    peek: bool = False) -> dict:
    """Load and check an emae checkpoint; one-line errors for missing, unreadable, unsafe or foreign files.
    ``trust``: unpickle in full (can run code from the file). ``peek``: cheaply, for its config and position:
    a file's tensors are memory-mapped, not read; a sharded folder gives its meta data without weights."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.is_dir():  # a sharded checkpoint, gathered into this process
            ckpt = load_meta(path, trust) if peek else load_sharded(path, trust)
        else:
            ckpt = torch_load(path, map_location, trust, mmap=peek)
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or not a torch file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {first})") from None
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


def latest_valid_checkpoint(folder: str | Path, trust: bool = False) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads (peeked, see :func:`load_checkpoint`); broken ones are skipped, warned."""
    for path in list_checkpoints(folder):
        try:
            return path, load_checkpoint(path, trust=trust, peek=True)
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


def write_checkpoint(state: dict, path: Path) -> None:
    """``save_atomic``; a failed write (full disk, read-only folder) is one line that says what survived."""
    try:
        save_atomic(state, path)
    except OutputError as e:
        raise OutputError(f"{e} ({previous_checkpoint_note(path)})") from None


def previous_checkpoint_note(path: Path) -> str:
    older = [p for p in list_checkpoints(path.parent) if p.name != path.name]
    return f"the previous checkpoint {older[0]} is intact" if older else "no earlier checkpoint was written"


def rng_state(**generators: torch.Generator) -> dict:
    """torch's, Python's, numpy's (and CUDA's) global RNG states, and those of a command's own ``generators``
    (pre-training: ``mask``), by name."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # as a tensor, not a numpy array: the checkpoint stays loadable with weights_only=True
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in generators.items():
        state[name] = gen.get_state()
    return state


def set_rng_state(state: dict, **generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    npy = state["numpy"]
    if isinstance(npy, dict):  # format 2; format 1 stored numpy's own tuple
        npy = (npy["kind"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    np.random.set_state(npy)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        if name in state:
            gen.set_state(state[name])


def state_mismatch(model: torch.nn.Module, ckpt: dict, exc: Exception) -> str:
    """Why a checkpoint's weights do not fit ``model``: the first few missing, unexpected and mis-shaped keys."""
    state = ckpt.get("model")
    if not isinstance(state, dict):
        return "it holds no model weights"
    own = model.state_dict()
    kinds = {
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
        "shape mismatch": [f"{k} {tuple(state[k].shape)} there, {tuple(own[k].shape)} here" for k in own
                           if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape],
    }
    parts = [f"{kind}: {', '.join(keys[:3])}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
             for kind, keys in kinds.items() if keys]
    return "; ".join(parts) or f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
