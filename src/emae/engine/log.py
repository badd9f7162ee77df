"""A JSON-lines log: one object per line, flushed as written."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import DataError, OutputError
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


def read_log(path: str | Path, partial: list[str] | None = None) -> list[dict]:
    """The records of a JSON-lines log. A last line that does not parse (a run killed while writing it) is left
    out and, when ``partial`` is a list, appended to it; a bad line anywhere else is an error."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise DataError(f"{path}: line {i + 1} is not a JSON record") from None
            if partial is not None:
                partial.append(line)
    return records
