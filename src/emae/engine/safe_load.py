"""Reading files that may come from anyone without running code from them.

Every checkpoint read goes through :func:`torch_load`: ``torch.load(weights_only=True)``, which rebuilds tensors and
plain containers only, with a short allowlist of harmless types that real checkpoints hold: numpy arrays, scalars
and numeric dtypes (the numpy RNG state in emae checkpoints before format 2; metrics in timm's) and
``argparse.Namespace`` (the official MAE training checkpoints store their arguments). Anything else is refused in
one line. A full unpickle, which can run code from the file, happens only when the caller says it trusts the file
(``--trust-checkpoint``, ``trust=True``).
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UnsafeCheckpointError

TRUST_HINT = "if you trust its source, pass --trust-checkpoint (Python: trust=True) to unpickle it in full"
REFUSED = "which a weights-only load refuses (unpickling it could run code)"


def safe_globals() -> list:
    """The non-tensor types a weights-only load accepts besides torch's own (under numpy 1.x and 2.x names)."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
    multiarray = core.multiarray
    names = [(f, f"{mod}.multiarray.{f.__name__}") for f in (multiarray._reconstruct, multiarray.scalar)
             for mod in ("numpy.core", "numpy._core")]
    dtypes = list({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"})  # numbers only: no object arrays
    return [np.ndarray, np.dtype, argparse.Namespace, *dtypes, *names]


def refused_object(message: str) -> str | None:
    """What a weights-only unpickler refused, from its error text; None when it failed for another reason."""
    for pattern in (r"GLOBAL ([\w.]+)", r"got <class '([\w.]+)'>"):
        if m := re.search(pattern, message):
            return m.group(1)
    return None  # e.g. "Unsupported operand": not a pickle at all


def torch_load(path: str | Path, map_location: Any = "cpu", trust: bool = False, mmap: bool = False) -> Any:
    """``torch.load`` that refuses code: :class:`~emae.errors.UnsafeCheckpointError` (one line) for a file that
    needs a full unpickle; other failures (truncated, not a torch file) propagate as they are."""
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    with torch.serialization.safe_globals(safe_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            refused = refused_object(str(e))
            if refused is None:
                raise
            raise UnsafeCheckpointError(f"{path} holds {refused}, {REFUSED}; {TRUST_HINT}") from None


class _Restricted(pickle.Unpickler):
    def __init__(self, file, allowed: Callable[[str, str], bool]) -> None:
        super().__init__(file)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if not self.allowed(module, name):
            raise pickle.UnpicklingError(f"GLOBAL {name if module == 'builtins' else f'{module}.{name}'}")  # as torch
        return super().find_class(module, name)


def check_pickle(path: str | Path, allowed: Callable[[str, str], bool]) -> None:
    """Unpickle a plain pickle file with only the ``allowed(module, name)`` globals, to prove it runs no code before
    a library unpickles it in full; raises :class:`~emae.errors.UnsafeCheckpointError` otherwise."""
    with open(path, "rb") as f:
        try:
            _Restricted(f, allowed).load()
        except pickle.UnpicklingError as e:
            what = refused_object(str(e)) or e
            raise UnsafeCheckpointError(f"{path} holds {what}, {REFUSED}; {TRUST_HINT}") from None
