"""Time to accuracy: MAE against EMAE on CIFAR-10 at the same wall-clock budget (issue: EMAE's claims).

Each run pre-trains ViT-Tiny/4 (decoder 4x128) with the same optimiser settings for ``--budget-min`` minutes.
The budget is turned into a step count by timing a few real steps of each run back to back, so the lr
schedule (5% warmup, cosine) spans each run's whole budget; a step-based warmup would leave EMAE, whose steps
cost about K times more, at a near-zero lr for its whole short run (SPEC §2).

Runs: ``mae`` (batch B), ``emae`` (batch B: equal batch, about K x the compute per step) and ``emae_eq``
(batch B/K: equal compute per step). Checkpoints every budget/evals minutes are evaluated afterwards, with a
randomly initialised encoder as the baseline (3 seeds), by k-NN (k=20) and a fast linear probe on frozen
features (mean patch token by default) of a class-balanced subset. The script then prints accuracy against wall time, the ratio "time EMAE needs
to reach MAE's final accuracy / MAE's time", and the prediction consistency of the final checkpoints.

    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10 --budget-min 20
    python benchmarks/time_to_accuracy.py --phase eval --out runs/tta      # re-evaluate existing runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from emae.config import load_config
from emae.engine import list_checkpoints, load_checkpoint, pretrain, read_log

RECIPE = "mae_vit_tiny_p4_cifar10"


def run_config(name: str, args: argparse.Namespace, out: Path, **train):
    method = "emae" if name.startswith("emae") else "mae"
    batch = args.batch // 4 if name == "emae_eq" else args.batch
    overrides = [f"method={method}", f"mask.type={'parallel' if method == 'emae' else 'random'}",
                 f"train.batch_size={batch}", f"train.seed={args.seed}", "train.num_vis=8",
                 f"data.num_workers={args.workers}", *args.override]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(RECIPE, overrides, **{"data.path": str(Path(args.data) / "train"), "output_dir": str(out)})


def calibrate(name: str, args: argparse.Namespace, root: Path) -> float:
    """Optimiser steps per second of this run on this machine, from a few real steps."""
    cfg = run_config(name, args, root / f"calibrate-{name}", max_steps=12, log_every=4, save_every=10**6)
    pretrain(cfg, overwrite=True, progress=False)
    last = [r for r in read_log(root / f"calibrate-{name}" / "log.jsonl") if r["type"] == "train"][-1]
    return last["img_per_s"] / cfg.train.batch_size


def pretrain_phase(args: argparse.Namespace, root: Path) -> None:
    known = json.loads(Path(args.rates).read_text()) if args.rates else {}
    rates = {name: known[name] if name in known else calibrate(name, args, root) for name in args.runs}
    root.mkdir(parents=True, exist_ok=True)
    (root / "rates.json").write_text(json.dumps({**known, **rates}))
    for name in args.runs:
        steps = max(args.evals, int(args.budget_min * 60 * rates[name]))
        cfg = run_config(name, args, root / name, max_steps=steps, log_every=5,
                         save_every_steps=max(1, steps // args.evals), keep_last=0)
        spe = 50_000 // cfg.train.batch_size
        cfg.train.warmup_epochs = 0.05 * steps / spe
        print(f"{name}: {rates[name]:.3f} steps/s -> {steps} steps of batch {cfg.train.batch_size}", flush=True)
        pretrain(cfg, overwrite=True, progress=False)


def checkpoint_minutes(root: Path, name: str, step: int) -> tuple[float, float]:
    """(budget minutes, measured minutes) at ``step``. The budget clock is step / calibrated rate: immune to
    other load on the machine during the run; the measured clock is the log's wall time."""
    rate = json.loads((root / "rates.json").read_text())[name]
    records = read_log(root / name / "log.jsonl")
    start = next(r["time"] for r in records if r["type"] == "start")
    measured = next(r["time"] - start for r in records if r["type"] == "train" and r["step"] >= step)
    return step / rate / 60, measured / 60


def eval_phase(args: argparse.Namespace, root: Path) -> dict:
    from frozen_eval import FrozenEval  # beside this script

    evaluator = FrozenEval(Path(args.data), args.train_images, args.test_images, args.batch_eval, pool=args.pool)
    results: dict = {"random": evaluator.random_baseline(run_config("mae", args, root / "mae"), seeds=args.seeds)}
    print(f"random init: {results['random']}", flush=True)
    for name in args.runs:
        rows = []
        for path in sorted(list_checkpoints(root / name)):
            step = load_checkpoint(path)["global_step"]
            minutes, measured = checkpoint_minutes(root, name, step)
            acc = evaluator.checkpoint(path)
            rows.append({"step": step, "minutes": minutes, "measured_minutes": measured, **acc})
            print(f"{name} step {step:5d} {minutes:6.1f} min ({measured:.1f} measured)  {acc}", flush=True)
        results[name] = rows
    results["consistency"] = {name: evaluator.consistency(list_checkpoints(root / name)[0]) for name in args.runs}
    return results


def time_to_reach(rows: list[dict], target: float, key: str) -> float | None:
    """Minutes at which ``key`` first reaches ``target`` (linear interpolation between evaluations)."""
    prev = (0.0, float("-inf"))
    for r in rows:
        if r[key] >= target:
            if prev[1] == float("-inf"):
                return r["minutes"]
            t0, a0 = prev
            return t0 + (r["minutes"] - t0) * (target - a0) / max(r[key] - a0, 1e-9)
        prev = (r["minutes"], r[key])
    return None


def report(results: dict, args: argparse.Namespace, root: Path) -> None:
    rnd = results["random"]
    print(f"\nrandom-init baseline: knn {rnd['knn']:.2f} ± {rnd.get('knn_std', 0):.2f}, "
          f"linprobe {rnd['linprobe']:.2f} ± {rnd.get('linprobe_std', 0):.2f}")
    for key in ("knn", "linprobe"):
        mae_rows = results["mae"]
        target, mae_time = mae_rows[-1][key], mae_rows[-1]["minutes"]
        for name in args.runs:
            if name == "mae":
                continue
            t = time_to_reach(results[name], target, key)
            ratio = f"{t / mae_time:.2f}" if t is not None else "not reached"
            print(f"ratio {key} {name}: time to MAE's final {target:.2f} / MAE's time = {ratio}")
    for name, c in results["consistency"].items():
        print(f"consistency {name}: variance {c['variance']:.4f} pairwise {c['pairwise']:.4f}")
    (root / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, args, Path(args.plot))


def plot(results: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("knn", "linprobe")):
        for name in args.runs:
            rows = results[name]
            ax.plot([r["minutes"] for r in rows], [r[key] for r in rows], marker="o", label=name)
        ax.axhline(results["random"][key], color="grey", linestyle="--", label="random init")
        ax.set_xlabel("pre-training wall time (min, 2 CPU cores)")
        ax.set_ylabel(f"{key} top-1 (%)")
        ax.set_title(f"CIFAR-10 ViT-Tiny/4: {key}")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    p.add_argument("--out", default="runs/time_to_accuracy")
    p.add_argument("--budget-min", type=float, default=20.0, help="pre-training minutes per run")
    p.add_argument("--evals", type=int, default=5, help="checkpoints evaluated per run")
    p.add_argument("--runs", nargs="+", default=["mae", "emae", "emae_eq"], choices=["mae", "emae", "emae_eq"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="random-init baselines (for the spread)")
    p.add_argument("--train-images", type=int, default=5000, help="class-balanced subset for the frozen evals")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--pool", choices=["avg", "cls"], default="avg", help="frozen feature: mean patch token or cls")
    p.add_argument("--batch-eval", type=int, default=500)
    p.add_argument("--rates", help="rates.json of an earlier run: reuse its step rates (same step counts, e.g. for ablations)")
    p.add_argument("--phase", choices=["all", "pretrain", "eval"], default="all")
    p.add_argument("--plot", default="docs/time_to_accuracy.png")
    p.add_argument("override", nargs="*", help="extra config overrides for every run, e.g. consistency.weight=0.5")
    args = p.parse_args()
    root = Path(args.out)
    start = time.time()
    if args.phase in ("all", "pretrain"):
        pretrain_phase(args, root)
    if args.phase in ("all", "eval"):
        report(eval_phase(args, root), args, root)
    print(f"total {(time.time() - start) / 60:.1f} min; torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
