"""Crash-safe writes: a file or folder appears complete under its final name, or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`write_atomic`."""
    write_atomic(path, lambda f: torch.save(obj, f))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], fsync: bool = True) -> None:
    """``write(f)`` into a temporary file in the same folder, fsync it, rename it over ``path``, fsync the folder.
    A crash at any moment leaves either the old ``path`` or the new one (plus, at worst, a stray ``.*.tmp`` file).
    ``fsync=False``: atomic against the writer being killed, not against the machine losing power; much faster."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make renames inside ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
