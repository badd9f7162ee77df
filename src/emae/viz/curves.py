"""Training curves from a run's ``log.jsonl``: loss and lr per step, and accuracy per epoch (fine-tune, probe)."""

from __future__ import annotations

from pathlib import Path

from ..records import read_log
from ..errors import DataError


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write a PNG (default ``RUN_DIR/curves.png``) with one panel each for loss, lr and, when logged, accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    log_path = run_dir / "log.jsonl" if run_dir.is_dir() else run_dir
    if not log_path.is_file():
        raise DataError(f"{run_dir} has no log.jsonl; give a pre-training, finetune or linprobe run folder")
    partial: list[str] = []
    records = read_log(log_path, partial)
    if partial:
        print(f"note: skipped the incomplete last line of {log_path} (a run killed while writing it)")
    train = [r for r in records if r.get("type") == "train" and "loss" in r]
    epochs = [r for r in records if r.get("type") == "epoch"]
    if not train and not epochs:
        raise DataError(f"{log_path} has no training records to plot yet")
    if len(train) < min(2, len(epochs)):  # short runs: the per-epoch records say more
        train = [{"step": r["step"], "loss": r["train_loss"], "lr": r["lr"]} for r in epochs]
    acc_keys = [k for k in ("val_top1", "val_top5", "ema_val_top1") if any(k in r for r in epochs)]
    panels = 3 if acc_keys else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.4), constrained_layout=True)
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], color="tab:blue")
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    axes[1].plot(steps, [r["lr"] for r in train], color="tab:orange")
    axes[1].set(title="learning rate", xlabel="step", ylabel="lr")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if acc_keys:
        for key in acc_keys:
            pts = [(r["epoch"], r[key]) for r in epochs if key in r]
            axes[2].plot(*zip(*pts), marker="o", markersize=3, label=key.replace("val_", "val ").replace("_", " "))
        axes[2].set(title="validation accuracy", xlabel="epoch", ylabel="%")
        axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(str(run_dir), fontsize=9)
    out = Path(output) if output else (run_dir if run_dir.is_dir() else run_dir.parent) / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
