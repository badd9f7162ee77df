"""Crash-safe writes: a file or folder appears complete under its final name, or not at all. A write that fails
for want of space or permission is one line (:class:`~emae.errors.OutputError`) that names the file."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..errors import OutputError

# a full disk or quota, a read-only or forbidden folder, a file too large, a failing device
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def output_os_error(exc: BaseException | None) -> OSError | None:
    """The OS error of :data:`OUTPUT_ERRNOS` behind ``exc``: itself, or its cause or context (torch wraps a failed
    write in a RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def reason(err: OSError) -> str:
    """'no space left on device', 'read-only file system', 'permission denied', ..."""
    text = err.strerror or str(err) or type(err).__name__
    return text[:1].lower() + text[1:]


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`write_atomic`."""
    write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(text: str, path: str | Path) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], fsync: bool = True) -> None:
    """``write(f)`` into a temporary file in the same folder, fsync it, rename it over ``path``, fsync the folder.
    A crash at any moment leaves either the old ``path`` or the new one (plus, at worst, a stray ``.*.tmp`` file).
    ``fsync=False``: atomic against the writer being killed, not against the machine losing power; much faster.
    A full disk or a forbidden folder raises :class:`~emae.errors.OutputError` naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        err = output_os_error(e)
        if err is not None:
            raise OutputError(f"{reason(err)} while writing {path}") from None
        raise


def fsync_dir(folder: str | Path) -> None:
    """Make renames inside ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_writable(folder: str | Path) -> None:
    """Fail in one line, before any work, when ``folder`` cannot take files (read-only, no permission, a file in
    the way). Folders created for the check are removed again."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} is a file")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".emae-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {folder} ({reason(e)})") from None
    finally:
        for p in missing:  # deepest first
            try:
                p.rmdir()
            except OSError:
                pass
