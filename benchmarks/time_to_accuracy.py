"""Time to accuracy: MAE against EMAE (and its ablations) on CIFAR-10 ViT-Tiny/4, at equal compute.

Equal compute means equal encoder sequences per step, the same lr and the same number of steps. An MAE step
encodes B images (B sequences); an EMAE step encodes B/K images in K parts each (B sequences), with
``train.lr_batch_unit=sequences`` so both get lr = base_lr x B / 256. Every run has a 5% warmup and a cosine over
its own steps, and writes ``--evals`` checkpoints along the way. Variants (one factor changed at a time):

  mae           random mask, B images per step
  emae          parallel mask (K = 4), self-consistency lambda = 1, B/K images per step
  emae_nocons   the parallel mask alone (consistency off)
  emae_l01      lambda = 0.1
  emae_k2       mask ratio 0.5 (K = 2), B/2 images per step; no patch is masked in two parts, so the consistency
                term is 0 and this is the parallel mask alone at K = 2 (compare emae_nocons); its sequences hold
                twice the visible tokens, so a step costs more
  emae_img      B images per step (B x K sequences) at the same lr, for steps / K steps: the equal-batch setting
                the paper would run, at equal total compute
  umae_vit      UM-MAE's uniform mask + secondary masking on the same ViT, B images per step
  emae_um       parallel-uniform mask (EMAE x UM-MAE: 4 disjoint uniform parts) + consistency, B/4 images

A run is named VARIANT-sSEED (mae-s0). Phases, each resumable:

  pretrain   train the named runs one after another (``--resume auto``: a killed run continues)
  eval       evaluate every checkpoint not yet in OUT/eval.json, plus random-init encoders (--random-seeds):
             the converged logistic-regression probe and k-NN (raw and centred), mean patch token
  calibrate  time each variant's step back to back (steps/s), for the wall-clock axis (OUT/rates.json)
  consistency  prediction consistency of the named runs' last checkpoints (reconstruction error beside it)
  finetune   fine-tune the final checkpoints of the named runs and random init (short-budget recipe), per seed
  report     the table, the ratio "EMAE's time to MAE's final accuracy / MAE's time", and the plot; needs only
             OUT's JSON files (eval.json records each checkpoint's compute), so copy them into the repo to keep a
             study (benchmarks/results/). --earlier FILE draws an earlier study's table dotted beside this one and
             takes MAE's per-seed finals from it when OUT has no MAE run (benchmarks/results/study_2026-11-30.json)

    python benchmarks/time_to_accuracy.py --phase pretrain --runs mae-s0 emae-s0
    python benchmarks/time_to_accuracy.py --phase eval
    python benchmarks/time_to_accuracy.py --phase report
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from emae.config import load_config
from emae.engine import list_checkpoints, load_checkpoint, pretrain, read_log

RECIPE = "mae_vit_tiny_p4_cifar10"
VARIANTS: dict[str, dict] = {  # overrides and encoder sequences per image (K)
    "mae": {"parts": 1, "overrides": []},
    "emae": {"parts": 4, "overrides": ["method=emae", "mask.type=parallel"]},
    "emae_nocons": {"parts": 4, "overrides": ["method=emae", "mask.type=parallel", "consistency.enabled=false"]},
    "emae_l01": {"parts": 4, "overrides": ["method=emae", "mask.type=parallel", "consistency.weight=0.1"]},
    "emae_k2": {"parts": 2, "overrides": ["method=emae", "mask.type=parallel", "mask.ratio=0.5"]},
    "emae_img": {"parts": 4, "overrides": ["method=emae", "mask.type=parallel"], "equal_images": True},
    "umae_vit": {"parts": 1, "overrides": ["method=umae", "mask.type=uniform"]},
    "emae_um": {"parts": 4, "overrides": ["method=umae", "mask.type=parallel_uniform"]},
}
LABELS = {"mae": "MAE", "emae": "EMAE (lambda 1)", "emae_nocons": "EMAE, no consistency", "emae_l01": "EMAE (lambda 0.1)",
          "emae_k2": "EMAE K=2", "emae_img": "EMAE, equal images/step", "umae_vit": "UM-MAE mask on ViT",
          "emae_um": "parallel-uniform (EMAE x UM)", "random": "random init"}
METRICS = ("logreg", "knn", "knn_centred")


def split_name(run: str) -> tuple[str, int]:
    variant, _, seed = run.rpartition("-s")
    if variant not in VARIANTS or not seed.isdigit():
        raise SystemExit(f"run {run!r}: expected VARIANT-sSEED with VARIANT one of {sorted(VARIANTS)}")
    return variant, int(seed)


def run_config(run: str, args: argparse.Namespace, out: Path, steps: int | None = None):
    variant, seed = split_name(run)
    v = VARIANTS[variant]
    images = args.batch if v.get("equal_images") else args.batch // v["parts"]
    steps = steps or (args.steps // v["parts"] if v.get("equal_images") else args.steps)
    steps_per_epoch = args.train_size // images
    overrides = [*v["overrides"], f"train.batch_size={images}", f"train.seed={seed}", f"train.max_steps={steps}",
                 f"train.lr_batch_unit={'images' if v.get('equal_images') else 'sequences'}",
                 f"train.warmup_epochs={0.05 * steps / steps_per_epoch!r}",  # 5% of the run, in steps
                 f"train.save_every_steps={max(1, steps // args.evals)}", "train.save_every=1000000",
                 "train.keep_last=0", "train.log_every=5", f"data.num_workers={args.workers}", *args.override]
    return load_config(RECIPE, overrides, **{"data.path": str(Path(args.data) / "train"), "output_dir": str(out)})


def pretrain_phase(args: argparse.Namespace, root: Path) -> None:
    for run in args.runs:
        cfg = run_config(run, args, root / run)
        print(f"{run}: {cfg.train.max_steps} steps of {cfg.train.batch_size} images", flush=True)
        pretrain(cfg, resume="auto", progress=False)


def calibrate_phase(args: argparse.Namespace, root: Path) -> None:
    """Steps/s of each variant on this machine: rounds of a few timed steps per variant in turn, so load hits
    them alike; the median step time of each."""
    from emae.engine.perf import StepTimer

    times: dict[str, list[float]] = {}
    variants = sorted({split_name(r)[0] for r in args.runs})
    for _ in range(args.calibrate_rounds):
        for variant in variants:
            cfg = run_config(f"{variant}-s0", args, root / f"calibrate-{variant}", steps=args.calibrate_steps + 2)
            cfg.train.num_vis, cfg.train.save_every_steps = 0, 0
            timer = StepTimer(warmup=2)
            pretrain(cfg, overwrite=True, progress=False, hooks=[timer])
            times.setdefault(variant, []).extend(timer.step_times)
    old = json.loads((root / "rates.json").read_text()) if (root / "rates.json").exists() else {}
    rates = {**old, **{v: 1.0 / statistics.median(t) for v, t in times.items()}}
    (root / "rates.json").write_text(json.dumps(rates, indent=2))
    for v in variants:
        print(f"{v}: {rates[v]:.4f} steps/s ({statistics.median(times[v]) * 1000:.0f} ms a step, "
              f"{rates[v] / rates.get('mae', rates[v]):.3f} x MAE's rate)")


def eval_phase(args: argparse.Namespace, root: Path) -> None:
    from frozen_eval import FrozenEval  # beside this script

    store = root / "eval.json"
    done = json.loads(store.read_text()) if store.exists() else {}
    ev = FrozenEval(Path(args.data), args.train_images, args.test_images, root / "features", args.batch_eval)
    done.setdefault("sizes", list(ev.sizes))

    def save(key: str, result: dict) -> None:
        done[key] = result
        store.write_text(json.dumps(done, indent=2))
        print(key, result, flush=True)

    model_cfg = run_config("mae-s0", args, root / "mae-s0").model
    for seed in range(args.random_seeds):
        if f"random-s{seed}" not in done:
            save(f"random-s{seed}", ev.random_init(model_cfg, seed))
    for run in args.runs or sorted(p.name for p in root.iterdir() if (p / "log.jsonl").exists() and "-s" in p.name):
        for path in sorted(list_checkpoints(root / run)):
            key = f"{run}/{path.name}"
            if key not in done:
                step = load_checkpoint(path)["global_step"]
                save(key, {"step": step, "sequences": step * sequences_per_step(root / run), **ev.checkpoint(path)})


def consistency_phase(args: argparse.Namespace, root: Path) -> None:
    """Prediction consistency of each named run's last checkpoint (and of random init, for scale): the same 256
    test images and the same 10 random masks for every model; reconstruction error beside it."""
    from emae.eval.common import eval_tf
    from emae.eval.consistency import measure_consistency
    from emae.eval.data import eval_sources
    from emae.interop.load import build_mae, read_checkpoint

    store = root / "consistency.json"
    done = json.loads(store.read_text()) if store.exists() else {}
    _, test = eval_sources(Path(args.data) / "train", Path(args.data) / "test", 3)
    picks = torch.linspace(0, len(test) - 1, 256).long().tolist()
    for run in args.runs:
        path = list_checkpoints(root / run)[0]
        key = f"{run}/{path.name}"
        if key in done:
            continue
        loaded = read_checkpoint(path)
        tf = eval_tf(loaded)
        imgs = torch.stack([tf(test.fetch(i)[0]) for i in picks])
        result = measure_consistency(build_mae(loaded, mask_type="random"), imgs.split(64), rounds=10, ratio=0.75)
        done[key] = {"step": load_checkpoint(path)["global_step"], **result}
        store.write_text(json.dumps(done, indent=2))
        print(key, {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}, flush=True)


def finetune_phase(args: argparse.Namespace, root: Path) -> None:
    """The short-budget fine-tune that beats random init (benchmarks/RESULTS.md), on each run's last checkpoint
    and on random init, one fine-tune per seed in --finetune-seeds."""
    from emae.cli.main import main as emae_main

    common = ["--arch", "vit_tiny", "--patch-size", "4", "--img-size", "32", "--mean", "0.4914", "0.4822", "0.4465",
              "--std", "0.2470", "0.2435", "0.2616", "--data", args.data, "--max-train", "4000", "--max-val", "2000",
              "--epochs", "3", "--warmup-epochs", "0.5", "--lr", "1e-3", "--layer-decay", "0.75", "--mixup", "0",
              "--cutmix", "0", "--aa", "none", "--reprob", "0", "--batch-size", "64", "--no-progress"]
    store = root / "finetune.json"
    done = json.loads(store.read_text()) if store.exists() else {}
    sources = {"random": "random", **{run: str(list_checkpoints(root / run)[0]) for run in args.runs}}
    for name, ckpt in sources.items():
        for seed in args.finetune_seeds:
            key = f"{name}/seed{seed}"
            if key in done:
                continue
            out = root / "finetune" / name / f"seed{seed}"
            emae_main(["finetune", ckpt, *common, "--seed", str(seed), "--output", str(out), "--overwrite"])
            m = json.loads((out / "metrics.json").read_text())
            done[key] = {"top1": m["top1"], "top5": m.get("top5"), "checkpoint": ckpt}
            store.write_text(json.dumps(done, indent=2))
            print(key, done[key], flush=True)


# ---------------------------------------------------------------- report


def sequences_per_step(run: Path) -> int:
    """Encoder sequences one optimiser step of a run encodes (its log's start record)."""
    start = next(x for x in read_log(run / "log.jsonl") if x["type"] == "start")
    return start.get("sequences_per_step") or start["global_batch"] * VARIANTS[split_name(run.name)[0]]["parts"]


def curves(root: Path, done: dict) -> dict[str, list[dict]]:
    """Per run: its evaluated checkpoints in step order, with the compute axis (encoder sequences seen)."""
    out: dict[str, list[dict]] = {}
    for key, r in done.items():
        if "/" not in key:
            continue
        run = key.split("/")[0]
        seqs = r["sequences"] if "sequences" in r else r["step"] * sequences_per_step(root / run)
        out.setdefault(run, []).append({**r, "sequences": seqs})
    return {run: sorted(rows, key=lambda x: x["step"]) for run, rows in out.items()}


def by_variant(runs: dict[str, list[dict]]) -> dict[str, dict[int, list[dict]]]:
    """variant -> step -> the seeds' rows at that step."""
    grouped: dict[str, dict[int, list[dict]]] = {}
    for run, rows in runs.items():
        for r in rows:
            grouped.setdefault(split_name(run)[0], {}).setdefault(r["step"], []).append(r)
    return grouped


def time_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """First x at which the curve (linear between points, starting at its first point) reaches ``target``."""
    prev = None
    for x, y in points:
        if y >= target:
            if prev is None:
                return x
            x0, y0 = prev
            return x0 + (x - x0) * (target - y0) / max(y - y0, 1e-9)
        prev = (x, y)
    return None


def ratios(runs: dict[str, list[dict]], metric: str, variant: str, start: float, rates: dict,
           earlier: dict | None = None) -> list[str]:
    """Per seed s: (sequences variant-sS needs to reach mae-sS's final accuracy) / (mae-sS's sequences), each curve
    starting from the random-init mean ``start`` at 0; with calibrated step rates, the same in wall-clock time.
    Without mae-sS here, mae-sS's final from ``earlier`` (an earlier study's record, --earlier)."""
    out = []
    for run, rows in sorted(runs.items()):
        v, seed = split_name(run)
        mae = runs.get(f"mae-s{seed}") or (earlier or {}).get("mae_finals", {}).get(f"s{seed}")
        if v != variant or not mae:
            continue
        target, budget = mae[-1][metric], mae[-1]["sequences"]
        if target <= start:
            out.append(f"s{seed}: none (MAE's final {target:.2f} is not above random init, {start:.2f})")
            continue
        t = time_to_reach([(0.0, start)] + [(r["sequences"], r[metric]) for r in rows], target)
        if t is None:
            out.append(f"s{seed}: not reached ({rows[-1][metric]:.2f} vs {target:.2f} at the end)")
            continue
        text = f"s{seed}: {t / budget:.2f}"
        if variant in rates and "mae" in rates:  # sequences -> steps -> calibrated seconds
            steps = t / (rows[-1]["sequences"] / rows[-1]["step"])
            text += f" (time {steps / rates[variant] / (mae[-1]['step'] / rates['mae']):.2f})"
        out.append(text)
    return out


def report_phase(args: argparse.Namespace, root: Path) -> None:
    done = json.loads((root / "eval.json").read_text())
    rates = json.loads((root / "rates.json").read_text()) if (root / "rates.json").exists() else {}
    earlier = json.loads(Path(args.earlier).read_text()) if args.earlier else None
    runs = curves(root, done)
    grouped = by_variant(runs)
    rnd = [v for k, v in done.items() if k.startswith("random-s")]
    n_train, n_test = done.get("sizes", [None, None])
    print(f"frozen evaluation: {n_train} training / {n_test} test images, mean patch token\n")
    print("| run | seeds | step | encoder sequences (M) | " + " | ".join(METRICS) + " |")
    print("|---|---|---|---|" + "---|" * len(METRICS))
    line = " | ".join(cell(rnd, k) for k in METRICS)
    print(f"| random init | {len(rnd)} | 0 | 0 | {line} |")
    for variant, steps in grouped.items():
        for step, rows in sorted(steps.items()):
            line = " | ".join(cell(rows, k) for k in METRICS)
            print(f"| {variant} | {len(rows)} | {step} | {rows[0]['sequences'] / 1e6:.3f} | {line} |")
    print()
    if earlier and "mae" not in grouped:
        print(f"MAE is not in {root}: its per-seed finals come from {earlier['label']} ({args.earlier})")
    for metric in METRICS:
        for variant in grouped:
            if variant != "mae":
                r = ratios(runs, metric, variant, mean_std(rnd, metric)[0], rates, earlier)
                if r:
                    print(f"ratio {metric} {variant}: sequences to MAE's final / MAE's sequences: {'; '.join(r)}")
    if (root / "consistency.json").exists():
        print("\n| run | step | recon_error | variance | inconsistency |\n|---|---|---|---|---|")
        for key, c in json.loads((root / "consistency.json").read_text()).items():
            print(f"| {key.split('/')[0]} | {c['step']} | {c['recon_error']:.4f} | {c['variance']:.4f} | "
                  f"{c['inconsistency']:.4f} |")
    if (root / "finetune.json").exists():
        ft = json.loads((root / "finetune.json").read_text())
        names = sorted({k.split("/")[0] for k in ft})
        print("\nfine-tune top-1 (" + ", ".join(f"{n}: {mean_std([v for k, v in ft.items() if k.startswith(n + '/')], 'top1')[0]:.2f}"
                                               f" ± {mean_std([v for k, v in ft.items() if k.startswith(n + '/')], 'top1')[1]:.2f}"
                                               for n in names) + ")")
    plot(grouped, rnd, rates, Path(args.plot), earlier)


def mean_std(rows: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in rows]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(rows: list[dict], key: str) -> str:
    """``mean ± sample std`` over seeds, or the one value."""
    m, s = mean_std(rows, key)
    return f"{m:.2f} ± {s:.2f}" if len(rows) > 1 else f"{m:.2f}"


def plot(grouped: dict, rnd: list[dict], rates: dict, path: Path, earlier: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_x = [("sequences", "encoder sequences seen (millions)", 1e-6)]
    if rates:
        axes_x.append(("minutes", "pre-training time (min, 1 CPU thread, calibrated)", 1.0))
    fig, axes = plt.subplots(len(axes_x), 2, figsize=(12, 4.2 * len(axes_x)), squeeze=False)
    names = list(grouped) + [v for v in (earlier or {}).get("curves", {}) if v not in grouped]
    colors = {v: f"C{i}" for i, v in enumerate(names)}  # one colour per variant: this study solid, earlier dotted
    for row, (xkey, xlabel, scale) in zip(axes, axes_x):
        for ax, metric in zip(row, ("logreg", "knn")):
            m, s = mean_std(rnd, metric)
            ax.axhspan(m - s, m + s, color="grey", alpha=0.25)
            ax.axhline(m, color="grey", linestyle="--", label=f"random init ({len(rnd)} seed{'s' * (len(rnd) > 1)})")
            for variant, steps in grouped.items():
                if xkey == "minutes" and variant not in rates:
                    continue
                pts = sorted(steps.items())
                xs = [0.0] + [(rows[0]["sequences"] * scale if xkey == "sequences" else step / rates[variant] / 60)
                              for step, rows in pts]
                ms = [(m, s)] + [mean_std(rows, metric) for _, rows in pts]  # every run starts at random init
                ns = [len(rnd)] + [len(rows) for _, rows in pts]
                seeds = max(ns[1:])
                some = sum(n == seeds for n in ns[1:])
                label = f"{LABELS[variant]}, {pts[-1][0]} steps ({seeds} seed{'s' * (seeds > 1)}" + (
                    f" at {some} of {len(pts)} points; hollow: 1 seed)" if some < len(pts) else ")")
                line, = ax.plot(xs, [a for a, _ in ms], label=label, color=colors[variant])
                for x, (a, b), n in zip(xs[1:], ms[1:], ns[1:]):  # error bars: ± sample std over the seeds there
                    ax.errorbar(x, a, yerr=b if n > 1 else None, marker="o", color=line.get_color(), capsize=3,
                                markerfacecolor=line.get_color() if n > 1 else "white")
            for variant, pts in (earlier or {}).get("curves", {}).items():  # dotted: an earlier study's table
                rel = earlier.get("rates_x_mae", {}).get(variant)  # its step rates, as multiples of MAE's
                if xkey == "minutes" and (rel is None or "mae" not in rates):
                    continue
                xs = [0.0] + [p["sequences"] * scale if xkey == "sequences" else
                              p["step"] / (rel * rates["mae"]) / 60 for p in pts]
                ys = [m] + [p[metric][0] for p in pts]
                n = sorted({p["seeds"] for p in pts})
                ax.plot(xs, ys, linestyle=":", marker=".", color=colors[variant], label=f"{LABELS[variant]}, "
                        f"{pts[-1]['step']} steps, {earlier['label']} ({'-'.join(map(str, n))} seed{'s' * (n[-1] > 1)})")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{'converged linear probe' if metric == 'logreg' else 'k-NN (k=20)'} top-1 (%)")
            ax.set_title(f"CIFAR-10, ViT-Tiny/4: {metric}")
    handles, labels = axes[0][0].get_legend_handles_labels()  # one legend under the panels: it hides no curve
    cols = 3 if earlier is None else 2  # an earlier study's labels are longer
    fig.legend(handles, labels, loc="lower center", ncol=cols, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // cols), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=["pretrain", "eval", "calibrate", "consistency", "finetune", "report"],
                   required=True)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    p.add_argument("--out", default="runs/time_to_accuracy")
    p.add_argument("--runs", nargs="*", default=[], help="VARIANT-sSEED names (eval: default every run in --out)")
    p.add_argument("--steps", type=int, default=1170, help="optimiser steps of an equal-compute run (1170 = 6 MAE epochs)")
    p.add_argument("--evals", type=int, default=6, help="checkpoints along each run")
    p.add_argument("--batch", type=int, default=256, help="encoder sequences per step (MAE: images)")
    p.add_argument("--train-size", type=int, default=50_000, help="training images (for epochs <-> steps)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: runs can share a 2-core machine)")
    p.add_argument("--train-images", type=int, default=10_000, help="class-balanced training subset for the frozen evals")
    p.add_argument("--test-images", type=int, default=None, help="test subset (default: the full 10,000)")
    p.add_argument("--random-seeds", type=int, default=3, help="random-init encoders evaluated (the baseline band)")
    p.add_argument("--batch-eval", type=int, default=500)
    p.add_argument("--finetune-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--calibrate-steps", type=int, default=6)
    p.add_argument("--calibrate-rounds", type=int, default=3)
    p.add_argument("--plot", default="docs/time_to_accuracy.png")
    p.add_argument("--earlier", default=None,
                   help="report: an earlier study's record (JSON: its curves, MAE's per-seed finals, step rates), "
                        "drawn dotted and used for the ratios of runs whose MAE is not in --out")
    p.add_argument("override", nargs="*", help="extra config overrides for every run, e.g. consistency.distance=l2")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    {"pretrain": pretrain_phase, "eval": eval_phase, "calibrate": calibrate_phase, "finetune": finetune_phase,
     "consistency": consistency_phase, "report": report_phase}[args.phase](args, root)
    print(f"{args.phase}: {(time.time() - start) / 60:.1f} min; torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
