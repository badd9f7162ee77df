"""A linear probe fitted to convergence: multinomial logistic regression on frozen, standardised features.

scikit-learn's L-BFGS minimises ``C * sum_i CE(x_i, y_i) + ||W||^2 / 2`` (the bias is not penalised) until the
largest gradient entry is below ``tol``. The L2 strength ``C`` is chosen on a stratified held-out share of the
*training* set (never the test set); the probe is then refit on the whole training set with that ``C`` and scored
once on the test set. Deterministic: the split is seeded, the solver starts from zero.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from ..errors import DataError

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class LogRegOptions:
    c_grid: tuple[float, ...] = C_GRID  # candidate inverse L2 strengths, tried on the held-out split
    holdout: float = 0.1  # share of the training set held out to choose C
    tol: float = 1e-6  # stop when the largest entry of the (mean-loss) gradient is below this
    max_iter: int = 10000  # L-BFGS iterations; a fit that needs more is reported as not converged
    seed: int = 0  # the held-out split

    def to_dict(self) -> dict:
        return asdict(self)


def feature_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the training set (a constant feature gets std 1, so it stays 0)."""
    std = train.std(axis=0)
    std[std < 1e-12] = 1.0
    return train.mean(axis=0), std


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, opts: LogRegOptions) -> LogisticRegression:
    clf = LogisticRegression(C=c, tol=opts.tol, max_iter=opts.max_iter, solver="lbfgs")
    with warnings.catch_warnings():  # non-convergence is reported in the result, not as a warning
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def _scores(clf: LogisticRegression, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    proba = clf.predict_proba(x)
    classes = clf.classes_
    top = classes[np.argsort(-proba, axis=1)]
    hit = top == y[:, None]
    picked = proba[np.arange(len(y)), np.searchsorted(classes, y)]
    return {"top1": float(100.0 * hit[:, 0].mean()), "top5": float(100.0 * hit[:, :5].any(axis=1).mean()),
            "loss": float(-np.log(np.clip(picked, 1e-12, None)).mean())}


def logistic_probe(train_x: torch.Tensor | np.ndarray, train_y: torch.Tensor | np.ndarray,
                   test_x: torch.Tensor | np.ndarray, test_y: torch.Tensor | np.ndarray,
                   opts: LogRegOptions | None = None) -> dict:
    """Choose C on a held-out split of the training set, refit on all of it, score the test set.

    Returns ``top1``, ``top5`` (percent) and ``loss`` on the test set, the chosen ``C``, the held-out top-1 of
    every candidate, the final fit's ``iterations`` and ``converged``, and the fitted ``head`` (tensors)."""
    opts = opts or LogRegOptions()
    start = time.perf_counter()
    train_x, test_x = (np.asarray(t, dtype=np.float64) for t in (train_x, test_x))
    train_y, test_y = (np.asarray(t).astype(np.int64) for t in (train_y, test_y))
    classes, counts = np.unique(train_y, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"linear probe: the training set has {len(classes)} class; it needs at least 2")
    if not opts.c_grid or min(opts.c_grid) <= 0:
        raise DataError(f"linear probe: the C grid {opts.c_grid} must hold positive values")
    mean, std = feature_stats(train_x)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std

    chosen, holdout = opts.c_grid[0], {}
    if len(opts.c_grid) > 1:
        n_hold = int(round(opts.holdout * len(train_y)))
        if counts.min() < 2 or n_hold < len(classes) or len(train_y) - n_hold < len(classes):
            raise DataError(f"linear probe: {len(train_y)} training images over {len(classes)} classes are too few "
                            f"to hold out {opts.holdout:.0%} for choosing C; give one C value or more images")
        fit_x, hold_x, fit_y, hold_y = train_test_split(train_x, train_y, test_size=n_hold, stratify=train_y,
                                                        random_state=opts.seed)
        best = None
        for c in sorted(opts.c_grid):
            s = _scores(fit_logistic(fit_x, fit_y, c, opts), hold_x, hold_y)
            holdout[repr(c)] = round(s["top1"], 4)
            if best is None or (s["top1"], -s["loss"]) > best:  # ties: the lower held-out loss
                best, chosen = (s["top1"], -s["loss"]), c
    clf = fit_logistic(train_x, train_y, chosen, opts)
    iterations = int(np.max(clf.n_iter_))
    head = {k: torch.from_numpy(np.asarray(v)) for k, v in  # logits = ((x - mean) / std) @ weight.T + bias
            (("mean", mean), ("std", std), ("weight", clf.coef_), ("bias", clf.intercept_), ("classes", clf.classes_))}
    return {**_scores(clf, test_x, test_y), "C": float(chosen), "holdout_top1": holdout, "iterations": iterations,
            "converged": iterations < opts.max_iter, "train_images": len(train_y), "test_images": len(test_y),
            "dim": train_x.shape[1], "seconds": round(time.perf_counter() - start, 1), "options": opts.to_dict(), "head": head}
