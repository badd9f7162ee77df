"""The pre-training monitor against what is known, on the checkpoints of CIFAR-10 runs (the time-to-accuracy
study's recipe): at every checkpoint, the monitor's figures (online k-NN on 2,000 test images split into a bank
and queries of 1,000, RankMe, masked reconstruction loss), ``emae knn``'s with a bank of the same size drawn from
the *training* images (1,000 train / 1,000 other test images: agreement within the subsets' sampling error), and
the converged probe of the study's eval phase (``eval.json``), with rank correlations across the checkpoints.

    python benchmarks/monitor_check.py --out /work/runs/study3 --runs mae-s0 emae-s0 umae_vit-s0 \\
        --json benchmarks/results/monitor_check.json
    python benchmarks/monitor_check.py --random 2 --report   # the random-init rows; the table from the JSON alone
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from scipy.stats import spearmanr

from emae.config import EvalDataConfig, EvalRunConfig, load_config
from emae.engine import list_checkpoints, load_checkpoint
from emae.engine.monitor import MonitorSet, measure
from emae.eval.common import frozen_features
from emae.eval.data import eval_sources
from emae.eval.knn import knn_eval
from emae.interop.load import Loaded, build_mae, read_checkpoint
from emae.models import build_model

RECIPE = "mae_vit_tiny_p4_cifar10"


def offline_knn(loaded, data: Path, n: int, k: int, seed: int) -> float:
    """``emae knn --max-train n --max-val n --pool avg --center none``: bank from the training images."""
    train, val = eval_sources(data / "train", data / "test", 3, n, n, seed)
    f = frozen_features(loaded, train, val, EvalDataConfig(), EvalRunConfig(batch_size=500), "avg")
    return knn_eval(f["train_feats"], f["train_labels"], f["val_feats"], f["val_labels"], 10, (k,))[f"k={k}"]["top1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="the study's folder (run folders and eval.json)")
    p.add_argument("--runs", nargs="*", default=[])
    p.add_argument("--random", type=int, default=0, help="also N random-init models (seeds 0..N-1): the baseline")
    p.add_argument("--report", action="store_true", help="print the table from the JSON, measuring nothing new")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="benchmarks/results/monitor_check.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root, data = Path(args.out or "."), Path(args.data)
    store = Path(args.json)
    rows = json.loads(store.read_text()) if store.exists() else {}
    if args.report:
        return report(rows, args.images // 2)
    cfg = load_config(RECIPE, [f"train.monitor.images={args.images}"], **{"train.monitor.data": str(data / "test")})
    monitor_set = MonitorSet(cfg)
    evals = json.loads((root / "eval.json").read_text()) if (root / "eval.json").exists() else {}
    for seed in range(args.random):
        key = f"random/seed{seed}"
        if key not in rows:
            torch.manual_seed(seed)
            model = build_model(cfg).eval()
            loaded = Loaded(f"random:{seed}", "random", cfg, model.state_dict())
            rows[key] = {"run": "random", "seed": seed, "step": 0, **measure(model, monitor_set, cfg, torch.device("cpu")),
                         "emae_knn_same_bank": offline_knn(loaded, data, args.images // 2, cfg.train.monitor.k, 0)}
            store.write_text(json.dumps(rows, indent=2))
            print(key, rows[key], flush=True)
    for run in args.runs:
        for path in sorted(list_checkpoints(root / run)):
            key = f"{run}/{path.name}"
            if key in rows:
                continue
            loaded = read_checkpoint(path)
            model = build_mae(loaded)
            row = {"run": run, "step": load_checkpoint(path, peek=True)["global_step"],
                   **measure(model, monitor_set, cfg, torch.device("cpu")),
                   "emae_knn_same_bank": offline_knn(loaded, data, args.images // 2, cfg.train.monitor.k, 0)}
            probe = evals.get(key, {})
            row.update({k: probe[k] for k in ("logreg", "knn") if k in probe})
            rows[key] = row
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(rows, indent=2))
            print(key, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    report(rows, args.images // 2)


def report(rows: dict, bank: int) -> None:
    print(f"\n| run | step | monitor k-NN (bank {bank}, test) | emae knn (bank {bank}, train) | difference / SE | "
          f"RankMe | recon | converged probe | k-NN (10k bank) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in sorted(rows.values(), key=lambda r: (r["run"], r["step"])):
        p = row["emae_knn_same_bank"] / 100
        se = 100 * math.sqrt(2 * p * (1 - p) / bank)  # the difference of two independent estimates
        diff = (row["knn_top1"] - row["emae_knn_same_bank"]) / se
        run = f"random init, seed {row['seed']}" if row["run"] == "random" else row["run"]
        print(f"| {run} | {row['step']} | {row['knn_top1']:.2f} | {row['emae_knn_same_bank']:.2f} | "
              f"{diff:+.2f} | {row['rankme']:.1f} | {row['recon']:.4f} | {row.get('logreg', float('nan')):.2f} | "
              f"{row.get('knn', float('nan')):.2f} |")
    randoms = [r for r in rows.values() if r["run"] == "random"]
    if randoms:
        print(f"random init ({len(randoms)} seeds): RankMe " + ", ".join(f"{r['rankme']:.1f}" for r in randoms)
              + "; converged probe 44.30 ± 0.20 (3 seeds, benchmarks/results/study_2026-11-30.json)")
    with_probe = [r for r in rows.values() if "logreg" in r]
    if len(with_probe) > 2:
        probe = [r["logreg"] for r in with_probe]
        for name in ("rankme", "knn_top1", "recon"):
            rho = spearmanr([r[name] for r in with_probe], probe).statistic
            print(f"Spearman rank correlation with the converged probe over {len(with_probe)} checkpoints: "
                  f"{name} {rho:+.2f}")
        for run in sorted({r["run"] for r in with_probe}):
            mine = sorted((r for r in with_probe if r["run"] == run), key=lambda r: r["step"])
            if len(mine) > 2:
                rho = spearmanr([r["rankme"] for r in mine], [r["logreg"] for r in mine]).statistic
                print(f"  within {run} ({len(mine)} checkpoints): RankMe vs probe {rho:+.2f}")


if __name__ == "__main__":
    main()
