"""Reading a run's JSON-lines log (``log.jsonl``): the lowest layer, so that plots and reports read logs without the
engine that writes them (:class:`emae.engine.log.JsonlLog`)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError


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
