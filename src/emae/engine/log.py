"""A JSON-lines log: one object per line, flushed as written (read back by :func:`emae.records.read_log`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import OutputError
from .atomic import reason


class JsonlLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        record = {"time": round(time.time(), 3), **record}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: one line, not a traceback
            raise OutputError(f"{reason(e)} while writing {self.path}") from None
