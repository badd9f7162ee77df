"""What pre-training buys a segmentation model at CPU scale (issue "Dense transfer"): CamVid (367 train / 101 val,
11 classes), ViT-Tiny/4 at 48x64 (a 12x16 token grid, CamVid's aspect), the same recipe for every encoder, fine-tune
seeds 0 and 1, random init beside every figure.

Pre-training sources (one factor changed at a time within each):
  camvid-VARIANT-s0   in-domain: the CamVid training images themselves, no labels, at 48x64 (1,170 steps; MAE
                      64 images a step, EMAE 16 images x 4 parts: the same encoder sequences and lr)
  cifar: VARIANT-s0   the CIFAR-10 checkpoints of the time-to-accuracy study's recipe (32 px, an 8x8 grid),
                      position embeddings interpolated to 12x16 (``--cifar-dir``, benchmarks/time_to_accuracy.py)
with VARIANT one of mae, emae (lambda 1), emae_nocons (lambda 0), umae_vit (UM-MAE's uniform mask on ViT).

Phases, each resumable (results kept in OUT/*.json):
  pretrain   the in-domain runs named by --runs (``--resume auto``)
  segprobe   the frozen dense probe of every checkpoint of every source, or of its last (--last), and random
             init (2 seeds)
  segment    fine-tune the final checkpoint of every source (and random init) for each --seeds
  report     tables (segprobe: every checkpoint probed, delta to random init, per-class IoU; segment: mIoU mean ±
             std over seeds, per-class IoU of the finals) and a plot of both

    python benchmarks/dense_transfer.py --phase pretrain --runs camvid-mae-s0 camvid-emae-s0
    python benchmarks/dense_transfer.py --phase segment --sources random cifar/mae-s0 camvid/mae-s0
    python benchmarks/dense_transfer.py --phase report --plot docs/dense_transfer.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from emae.cli.main import main as emae
from emae.config import load_config
from emae.engine import list_checkpoints, pretrain

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = (48, 64)
VARIANTS = {  # overrides and encoder sequences per image (images per step = 64 / parts)
    "mae": {"parts": 1, "overrides": []},
    "emae": {"parts": 4, "overrides": ["method=emae", "mask.type=parallel"]},
    "emae_nocons": {"parts": 4, "overrides": ["method=emae", "mask.type=parallel", "consistency.enabled=false"]},
    "umae_vit": {"parts": 1, "overrides": ["method=umae", "mask.type=uniform"]},
}
TINY = ["--arch", "vit_tiny", "--patch-size", "4"]
SEGMENT = ["--img-size", str(SIZE[0]), str(SIZE[1]), "--batch-size", "8", "--lr", "1e-3", "--layer-decay", "0.75",
           "--warmup-epochs", "1", "--eval-every", "5", "--no-progress", "train.threads=1"]


def split_run(name: str) -> tuple[str, int]:
    variant, _, seed = name.removeprefix("camvid-").rpartition("-s")
    if variant not in VARIANTS:
        raise SystemExit(f"run {name!r}: expected camvid-VARIANT-sSEED, VARIANT one of {sorted(VARIANTS)}")
    return variant, int(seed)


def pretrain_phase(args: argparse.Namespace, root: Path) -> None:
    for run in args.runs:
        variant, seed = split_run(run)
        v = VARIANTS[variant]
        images = args.batch // v["parts"]
        steps_per_epoch = 367 // images
        overrides = [*v["overrides"], f"model.img_size=[{SIZE[0]},{SIZE[1]}]", f"train.batch_size={images}",
                     f"train.seed={seed}", f"train.max_steps={args.steps}", "train.lr_batch_unit=sequences",
                     f"train.warmup_epochs={0.05 * args.steps / steps_per_epoch!r}",
                     f"train.save_every_steps={args.steps // 3}", "train.save_every=1000000", "train.keep_last=0",
                     "train.log_every=10", "data.num_workers=1", "train.threads=1",
                     "data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]"]
        cfg = load_config("mae_vit_tiny_p4_cifar10", overrides,
                          **{"data.path": str(args.data / "train" / "images"), "output_dir": str(root / run)})
        print(f"{run}: {args.steps} steps of {images} images", flush=True)
        pretrain(cfg, resume="auto", progress=False)


def sources(args: argparse.Namespace, root: Path, every_checkpoint: bool) -> dict[str, str]:
    """name -> checkpoint ("random" for random init): the in-domain runs in OUT and the CIFAR runs in --cifar-dir."""
    found = {}
    for name in args.sources:
        if name == "random":
            found["random"] = "random"
            continue
        kind, _, run = name.partition("/")
        folder = (root if kind == "camvid" else Path(args.cifar_dir)) / (f"camvid-{run}" if kind == "camvid" else run)
        ckpts = sorted(list_checkpoints(folder))
        for path in ckpts if every_checkpoint else ckpts[-1:]:
            found[f"{name}@{path.stem.split('-')[-1].lstrip('0')}"] = str(path)
    return found


def save(store: Path, key: str, result: dict) -> None:
    """Add one result to ``store``, re-read first: two phases may run at once (one per core)."""
    done = json.loads(store.read_text()) if store.exists() else {}
    done[key] = result
    tmp = store.with_suffix(".tmp")
    tmp.write_text(json.dumps(done, indent=2))
    tmp.replace(store)


def segprobe_phase(args: argparse.Namespace, root: Path) -> None:
    store = root / "segprobe.json"
    done = json.loads(store.read_text()) if store.exists() else {}
    todo = {**{f"random@seed{s}": ("random", s) for s in args.seeds},
            **{k: (v, 0) for k, v in sources(args, root, every_checkpoint=not args.last).items() if v != "random"}}
    for key, (ckpt, seed) in todo.items():
        if key in done:
            continue
        out = root / "segprobe" / key.replace("/", "_").replace("@", "_")
        extra = TINY if ckpt == "random" else []
        assert emae(["segprobe", ckpt, *extra, "--data", str(args.data), "--img-size", str(SIZE[0]), str(SIZE[1]),
                     "--seed", str(seed), "--output", str(out), "--overwrite", "--no-progress",
                     "--feature-cache", str(root / "features"), "run.threads=1"]) == 0
        m = json.loads((out / "metrics.json").read_text())
        done[key] = {k: m[k] for k in ("miou", "pixel_acc", "mean_class_acc", "per_class_iou", "C", "converged",
                                       "iterations", "seconds")}
        save(store, key, done[key])
        print(key, {k: done[key][k] for k in ("miou", "pixel_acc", "converged")}, flush=True)


def segment_phase(args: argparse.Namespace, root: Path) -> None:
    store = root / "segment.json"
    done = json.loads(store.read_text()) if store.exists() else {}
    for key, ckpt in sources(args, root, every_checkpoint=False).items():
        for seed in args.seeds:
            name = f"{key}/seed{seed}"
            if name in done:
                continue
            out = root / "segment" / key.replace("/", "_").replace("@", "_") / f"seed{seed}"
            extra = TINY if ckpt == "random" else []
            resume = ["--resume", "auto"] if (out / "config.yaml").exists() else ["--overwrite"]
            assert emae(["segment", ckpt, *extra, "--data", str(args.data), *SEGMENT, "--epochs", str(args.epochs),
                         "--seed", str(seed), "--output", str(out), *resume]) == 0
            m = json.loads((out / "metrics.json").read_text())
            done[name] = {k: m[k] for k in ("miou", "pixel_acc", "mean_class_acc", "per_class_iou", "seconds",
                                            "evaluations", "interpolated")}
            save(store, name, done[name])
            print(name, {k: done[name][k] for k in ("miou", "pixel_acc", "seconds")}, flush=True)


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


ORDER = ["random", *(f"{kind}/{variant}" for kind in ("camvid", "cifar") for variant in VARIANTS)]


def rank(key: str) -> tuple[int, str, int, str]:
    """Report order: random init first, then in-domain, then CIFAR, variants as VARIANTS lists them."""
    src, _, at = key.partition("@")
    base = src.split("/seed")[0].rsplit("-s", 1)[0]
    digits = "".join(c for c in at.split("/")[0] if c.isdigit())
    return (ORDER.index(base) if base in ORDER else len(ORDER), src, int(digits or 0), key)


def per_class_table(rows: dict[str, list[dict]]) -> None:
    names = list(next(iter(rows.values()))[0]["per_class_iou"])
    print("| source | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for key, runs in rows.items():
        cells = [statistics.mean(r["per_class_iou"][n] or 0.0 for r in runs) for n in names]
        print(f"| {key} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


def report_phase(args: argparse.Namespace, root: Path) -> None:
    probe = json.loads((root / "segprobe.json").read_text()) if (root / "segprobe.json").exists() else {}
    seg = json.loads((root / "segment.json").read_text()) if (root / "segment.json").exists() else {}
    probe = dict(sorted(probe.items(), key=lambda kv: rank(kv[0])))
    base = [m["miou"] for k, m in probe.items() if k.startswith("random@")]
    print("segprobe (frozen, converged linear probe), val; delta: mIoU minus random init's mean:\n")
    print("| source | checkpoint | mIoU | delta | pixel acc | converged |\n|---|---|---|---|---|---|")
    for key, m in probe.items():
        src, _, at = key.partition("@")
        delta = f"{m['miou'] - statistics.mean(base):+.2f}" if base and src != "random" else ""
        print(f"| {src} | {at} | {m['miou']:.2f} | {delta} | {m['pixel_acc']:.2f} | {m['converged']} |")
    if probe:
        print("\nper-class IoU of the probes:\n")
        per_class_table({k: [m] for k, m in probe.items()})
    groups: dict[str, list[dict]] = {}
    for name, m in sorted(seg.items(), key=lambda kv: rank(kv[0])):
        groups.setdefault(name.rsplit("/seed", 1)[0], []).append(m)
    print("\nsegment (fine-tuned), val, mean ± sample std over the seeds:\n")
    print("| source | seeds | mIoU | pixel acc | mean class acc |\n|---|---|---|---|---|")
    for key, runs in groups.items():
        print(f"| {key} | {len(runs)} | {mean_std([r['miou'] for r in runs])} | "
              f"{mean_std([r['pixel_acc'] for r in runs])} | {mean_std([r['mean_class_acc'] for r in runs])} |")
    if groups:
        print("\nper-class IoU of the fine-tuned finals (mean over seeds):\n")
        per_class_table(groups)
    if args.plot and (probe or groups):
        plot(probe, groups, Path(args.plot))


def bars(ax, rows: dict[str, list[float]], title: str) -> None:
    """One bar per source: the mean over its runs, the sample std as error bar, random init in grey."""
    keys = list(rows)
    means = [statistics.mean(rows[k]) for k in keys]
    errs = [statistics.stdev(rows[k]) if len(rows[k]) > 1 else 0 for k in keys]
    ax.barh(range(len(keys)), means, xerr=errs, color=["grey" if k.startswith("random") else "tab:blue" for k in keys])
    ax.set_yticks(range(len(keys)), [f"{k.split('@')[0]} (n={len(rows[k])})" for k in keys], fontsize=7)
    ax.invert_yaxis()
    ax.set(title=title, xlabel="CamVid val mIoU (%)")
    if "random" in rows:
        ax.axvline(statistics.mean(rows["random"]), color="grey", ls="--", lw=0.8)


def plot(probe: dict, groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8), constrained_layout=True)
    finals: dict[str, list[float]] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for key, m in probe.items():  # sorted by rank: a source's last checkpoint comes last; random's seeds together
        src, _, at = key.partition("@")
        finals[src] = [*finals.get(src, []), m["miou"]] if src == "random" else [m["miou"]]
        if src != "random":
            curves.setdefault(src, []).append((int(at), m["miou"]))
    bars(axes[0], finals, "segprobe (frozen, converged linear probe)")
    bars(axes[1], {k: [r["miou"] for r in runs] for k, runs in groups.items()},
         "segment (fine-tuned, mean ± std)")
    for src, points in curves.items():
        if len(points) > 1:
            axes[2].plot(*zip(*points), marker="o", label=src)
    if "random" in finals:
        axes[2].axhline(statistics.mean(finals["random"]), color="grey", ls="--", label="random init")
    axes[2].set(title="segprobe along pre-training", xlabel="pre-training step", ylabel="CamVid val mIoU (%)")
    axes[2].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", required=True, choices=["pretrain", "segprobe", "segment", "report"])
    p.add_argument("--out", default="/work/runs/dense")
    p.add_argument("--data", type=Path, default=SHARED / "camvid")
    p.add_argument("--cifar-dir", default="/work/runs/study3", help="the CIFAR study's run folders")
    p.add_argument("--runs", nargs="*", default=[])
    p.add_argument("--sources", nargs="*", default=["random"],
                   help="random, camvid/VARIANT-sSEED (in OUT) or cifar/VARIANT-sSEED (in --cifar-dir)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=1170)
    p.add_argument("--batch", type=int, default=64, help="encoder sequences per pre-training step")
    p.add_argument("--epochs", type=int, default=20, help="segmentation fine-tuning epochs")
    p.add_argument("--last", action="store_true", help="segprobe: each source's final checkpoint only")
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    {"pretrain": pretrain_phase, "segprobe": segprobe_phase, "segment": segment_phase,
     "report": report_phase}[args.phase](args, root)


if __name__ == "__main__":
    main()
