"""The golden runs: a short pre-training (the run of ``tests/test_resume.py``), a short fine-tune and a short
MAE-protocol linear probe, each from fixed synthetic data on one CPU thread. ``tests/test_golden.py`` runs them
and compares every parameter with the files recorded here, bit for bit.

The files were recorded from the code before the one-loop refactor (issue 23, commit ef05b38), so the test says
that the refactor changed no number. Float sums differ in their last bits between CPU kernel families (AVX2,
AVX512: MKL and ATen pick their kernels by the CPU), so each family has its own files, ``NAME-FAMILY.safetensors``.
Re-record only for a deliberate change of the numbers, and say so; for a new family, run this file against the
old code (``git worktree add /tmp/old ef05b38; PYTHONPATH=/tmp/old/src python tests/golden/record.py --write``):

    python tests/golden/record.py --write  # writes tests/golden/*-FAMILY.safetensors
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers import TINY, write_images  # noqa: E402

from emae.cli.main import main  # noqa: E402

PRETRAIN = ["--config", "mae_vit_tiny_p4_cifar10", *[a for a in TINY if not a.startswith("model.img_size")],
            "train.batch_size=12", "train.max_steps=9", "train.log_every=1", "train.num_vis=0", "train.threads=1"]
MODEL = ["--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--patch-size", "4", "--img-size", "16"]
FINETUNE = ["--epochs", "2", "--batch-size", "8", "--warmup-epochs", "1", "--log-every", "1", "--no-progress",
            "--no-tensorboard"]
LINPROBE = ["--protocol", "mae", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--log-every", "1",
            "--no-progress", "--no-tensorboard"]


def family() -> str:
    """The CPU kernel family this machine's torch uses: avx2, avx512, ..."""
    return torch.backends.cpu.get_cpu_capability().lower()


def golden_file(name: str) -> Path:
    return HERE / f"{name}-{family()}.safetensors"


def write_data(root: Path) -> tuple[Path, Path]:
    """40 unlabelled 20 px images for pre-training, and an ImageFolder tree (2 classes, 24 train / 8 val)."""
    write_images(root / "pretrain", 40, size=20)
    for split, n, seed in (("train", 24, 1), ("val", 8, 2)):
        write_images(root / "labelled" / split, n, size=20, classes=("a", "b"), seed=seed)
    return root / "pretrain", root / "labelled"


def losses(log: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if r.get("type") == "train"]


def final_finetune_state(folder: Path) -> dict[str, torch.Tensor]:
    """The fine-tuned model's parameters after its last step: the run's last checkpoint."""
    from emae.engine import list_checkpoints

    return torch.load(list_checkpoints(folder)[0], weights_only=True)["model"]  # newest first


def run_all(root: Path) -> dict[str, dict]:
    """Each run's parameters (``state``) and its logged training losses."""
    torch.set_num_threads(1)
    pre, labelled = write_data(root)
    out = {}
    assert main(["pretrain", "--data", str(pre), "--output", str(root / "pt"), "--no-progress", *PRETRAIN]) == 0
    ckpt = torch.load(root / "pt" / "checkpoint-00000009.pt", weights_only=True)
    out["pretrain"] = {"state": ckpt["model"], "losses": losses(root / "pt" / "log.jsonl")}
    assert main(["finetune", "random", *MODEL, "--data", str(labelled), "--output", str(root / "ft"),
                 *FINETUNE]) == 0
    out["finetune"] = {"state": final_finetune_state(root / "ft"), "losses": losses(root / "ft" / "log.jsonl")}
    assert main(["linprobe", str(root / "pt" / "checkpoint-00000009.pt"), "--data", str(labelled), "--output",
                 str(root / "lp"), *LINPROBE]) == 0
    head = torch.load(root / "lp" / "head.pt", weights_only=True)
    out["linprobe"] = {"state": head["head"], "losses": losses(root / "lp" / "log.jsonl")}
    return out


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        raise SystemExit("this re-records the golden files from the code as it is now: pass --write to mean it")
    from safetensors.torch import save_file

    import emae.eval.finetune  # noqa: F401

    ft = sys.modules["emae.eval.finetune"]

    if not hasattr(ft, "FinetuneConfig"):  # the code before the refactor kept no last checkpoint: take the model
        final = {}  # that its last evaluation saw (after the last step)
        evaluate = ft.evaluate

        def spy(model, *args):
            if not final or model is final["model"]:
                final.update(model=model, state={k: v.clone() for k, v in model.state_dict().items()})
            return evaluate(model, *args)

        ft.evaluate = spy
        final_finetune_state = lambda folder: final["state"]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_all(Path(tmp))
    for name, run in runs.items():
        state = {k: v.contiguous() for k, v in run["state"].items()}
        save_file(state, str(golden_file(name)), metadata={"losses": json.dumps(run["losses"])})
        print(golden_file(name).name, len(state), "tensors,", len(run["losses"]), "losses")
