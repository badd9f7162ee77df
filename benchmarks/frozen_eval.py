"""Frozen-feature evaluation for benchmarks: the converged logistic-regression probe and k-NN (k = 20, cosine,
T = 0.07, raw and centred on the training mean) on class-balanced subsets, with features cached on disk per
checkpoint. Thin glue over ``emae.eval``.

Features default to the mean patch token (``pool="avg"``): in MAE's early phase the cls token is still below a
random encoder's (see benchmarks/RESULTS.md), while the mean patch token is the better summary.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from emae.config import EvalDataConfig, EvalRunConfig
from emae.eval.common import frozen_features
from emae.eval.data import eval_sources
from emae.eval.knn import knn_eval
from emae.eval.logreg import LogRegOptions, logistic_probe
from emae.interop.load import Loaded, random_checkpoint, read_checkpoint

METRICS = ("logreg", "knn", "knn_centred")


class FrozenEval:
    def __init__(self, data: Path, train_images: int | None, test_images: int | None, cache: Path,
                 batch_size: int = 500, pool: str = "avg") -> None:
        self.train_src, self.val_src = eval_sources(data / "train", data / "test", 3, train_images, test_images)
        self.data, self.run = EvalDataConfig(), EvalRunConfig(batch_size=batch_size)
        self.pool, self.cache = pool, str(cache)

    def loaded(self, loaded: Loaded) -> dict:
        f = frozen_features(loaded, self.train_src, self.val_src, self.data, self.run, self.pool, self.cache)
        probe = logistic_probe(f["train_feats"], f["train_labels"], f["val_feats"], f["val_labels"], LogRegOptions())
        classes = len(self.train_src.classes)
        knn = knn_eval(f["train_feats"], f["train_labels"], f["val_feats"], f["val_labels"], classes, ks=(20,))
        mean = f["train_feats"].mean(0)
        centred = knn_eval(f["train_feats"] - mean, f["train_labels"], f["val_feats"] - mean, f["val_labels"], classes,
                           ks=(20,))
        return {"logreg": round(probe["top1"], 2), "logreg_C": probe["C"], "logreg_iterations": probe["iterations"],
                "logreg_converged": probe["converged"], "knn": round(knn["k=20"]["top1"], 2),
                "knn_centred": round(centred["k=20"]["top1"], 2)}

    def checkpoint(self, path: str | Path) -> dict:
        return self.loaded(read_checkpoint(path))

    def random_init(self, model_cfg, seed: int) -> dict:
        return self.loaded(random_checkpoint(model_cfg, seed))

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train_src), len(self.val_src)


def mean_std(rows: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in rows]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
