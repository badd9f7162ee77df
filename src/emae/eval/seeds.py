"""One evaluation over several seeds: a run folder per seed, the scores' mean ± sample std over the seeds.

A seed reaches everything random in an evaluation: the weights of a ``random`` encoder, the class-balanced
subsets (``--max-train`` / ``--max-val``), and training (the fine-tune's initialisation, augmentation and order).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from .common import write_metrics

SCORES = ("top1", "top5", "best_top1", "best_top5")  # the fields averaged over seeds
_DROP = object()


def seed_list(seeds: list[int] | None, seed: int = 0) -> list[int]:
    """``--seeds N`` (one number: N seeds from ``seed`` on) or ``--seeds A B ...`` (those); None: ``[seed]``."""
    if seeds is None:
        return [seed]
    if len(seeds) == 1:
        if seeds[0] < 1:
            raise ConfigError(f"--seeds: {seeds[0]} must be a positive number of seeds (or give the seeds, e.g. 0 1 2)")
        return list(range(seed, seed + seeds[0]))
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds: {' '.join(map(str, seeds))} repeats a seed")
    return list(seeds)


def run_seeds(seeds: list[int], out: Path, run_one: Callable[[int, Path], dict],
              scores: tuple[str, ...] = SCORES) -> dict:
    """``run_one(seed, folder)`` for each seed; it returns (and writes) that seed's metrics. One seed runs in
    ``out`` and its metrics come back unchanged. Several run in ``out/seed-<s>/``, and ``out/metrics.json``
    gets :func:`summarise` of them."""
    if len(seeds) == 1:
        return run_one(seeds[0], out)
    runs = []
    for s in seeds:
        folder = out / f"seed-{s}"
        folder.mkdir(exist_ok=True)
        runs.append(run_one(s, folder))
    summary = summarise(runs, seeds, scores)
    write_metrics(out, summary)
    return summary


def summarise(runs: list[dict], seeds: list[int], scores: tuple[str, ...] = SCORES) -> dict:
    """The runs' metrics merged: each score (a number under a key in ``scores``, at any depth) becomes its mean,
    ``std`` holds the sample std at the same place, ``seconds`` the total; fields the runs agree on are kept,
    others dropped (they stay in ``per_seed``, every run's metrics in seed order)."""
    return {**_merge(runs, None, scores, std=False), "seeds": list(seeds),
            "std": _merge(runs, None, scores, std=True), "per_seed": runs}


def _merge(values: list, key: str | None, scores: tuple[str, ...], std: bool):
    if all(isinstance(v, dict) for v in values):
        out = {}
        for k in values[0]:
            if all(k in v for v in values):
                merged = _merge([v[k] for v in values], k, scores, std)
                if merged is not _DROP and not (std and merged == {}):
                    out[k] = merged
        return out
    if key in scores and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.stdev(values) if std else statistics.mean(values)
    if std:
        return _DROP
    if key == "seconds":
        return round(sum(values), 1)
    return values[0] if all(v == values[0] for v in values) else _DROP


def score(metrics: dict, *path: str) -> str:
    """A score for an output line: ``45.12`` for one seed, ``45.12 ± 0.31`` over several."""
    value, spread = metrics, metrics.get("std")
    for key in path:
        value = value[key]
        spread = spread.get(key) if isinstance(spread, dict) else None
    return f"{value:.2f}" if spread is None else f"{value:.2f} ± {spread:.2f}"


def seeds_note(metrics: dict) -> str:
    """", 3 seeds" for a summary over several seeds, else ""."""
    return f", {len(metrics['seeds'])} seeds" if "seeds" in metrics else ""
