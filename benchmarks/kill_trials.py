"""Kill trials: N random SIGKILLs of a tiny ``emae pretrain`` run, each resumed with ``--resume auto`` and compared
bit for bit with the uninterrupted run. Prints one line per trial and "K/N identical".

Half of the kills are timed to land inside a checkpoint write (the child spreads each write over --save-seconds,
and the kill comes while its temporary file is open), the other half at a random moment of a random step. The
whole process group is killed, loader workers included, as a preempted job is. The resume is the command a user
types (``python -m emae pretrain --output RUN --resume auto``), in a process of its own; "identical" means the
final model and optimiser state equal the uninterrupted run's exactly, and the log holds every step once.

    python benchmarks/kill_trials.py [--trials 20] [--seed 0] [--workers 2] [--save-seconds 0.6] [--keep DIR]

It drives ``tests/crash_child.py`` through ``tests/crashkit.py`` (the machinery of the crash tests) and needs the
dev extras (pytest). About 15 s per trial on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from crashkit import logged_step, start, train_steps, wait_for  # noqa: E402
from helpers import write_images  # noqa: E402

from emae.engine import list_checkpoints, load_checkpoint  # noqa: E402

STEPS, SAVE_EVERY = 12, 2  # crashkit.RUN: 12 steps, a checkpoint every 2


def equal(a, b) -> bool:
    """Exact equality of nested checkpoint state (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


def final_state(out: Path) -> dict | None:
    path = out / f"checkpoint-{STEPS:08d}.pt"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    return {"model": ckpt["model"], "optimizer": ckpt["optimizer"], "step": ckpt["global_step"]}


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def resume(out: Path) -> subprocess.CompletedProcess:
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "emae", "pretrain", "--output", str(out), "--resume", "auto", "--no-progress"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def trial(i: int, rng: random.Random, data: Path, out: Path, extra: list[str], save_seconds: float) -> tuple[bool, str]:
    in_write = i % 2 == 0
    if in_write:  # SIGKILL while the checkpoint of a random step is being written
        step = rng.randrange(SAVE_EVERY, STEPS, SAVE_EVERY)
        proc = start(data, out, *extra, save_seconds=save_seconds, group=True)
        wait_for(proc, lambda: list(out.glob(f".checkpoint-{step:08d}.pt.*.tmp")), timeout=300)
        time.sleep(rng.uniform(0.0, 0.8 * save_seconds))
        inside = bool(list(out.glob(".checkpoint-*.tmp")))
        kill_group(proc)
        where = f"in the write of step {step}'s checkpoint" + ("" if inside else " (it had just finished)")
    else:  # SIGKILL at a random moment of a random step
        step = rng.randint(1, STEPS - 1)
        proc = start(data, out, *extra, step_sleep=0.05, group=True)
        wait_for(proc, lambda: logged_step(out) >= step, timeout=300)
        time.sleep(rng.uniform(0.0, 0.3))
        kill_group(proc)
        where = f"after step {logged_step(out)} was logged"
    left = list_checkpoints(out)
    done = resume(out)
    if done.returncode != 0:
        return False, f"{where}; resume failed: {done.stderr.strip().splitlines()[-1:]}"
    resumed = next((ln.split(":")[0].split("/")[-1] for ln in done.stdout.splitlines() if ln.startswith("resuming")),
                   "nothing: restarted from step 0 with the run's config.yaml")
    return True, f"{where}; newest checkpoint left {left[0].name if left else 'none'}; resumed {resumed}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="loader workers of the killed runs (2)")
    p.add_argument("--save-seconds", type=float, default=0.6, help="how long each checkpoint write takes (0.6)")
    p.add_argument("--keep", metavar="DIR", help="keep the runs here (default: a temporary folder, removed after)")
    args = p.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="emae-kill-trials-"))
    data = root / "data"
    write_images(data, 40, size=20)
    extra = [f"data.num_workers={args.workers}"]
    started = time.perf_counter()
    straight = start(data, root / "straight", *extra, group=True)
    _, err = straight.communicate(timeout=600)
    if straight.returncode != 0:
        sys.exit(f"the uninterrupted run failed: {err[-2000:]}")
    reference = final_state(root / "straight")
    rng, identical = random.Random(args.seed), 0
    for i in range(args.trials):
        out = root / f"trial-{i:02d}"
        ok, story = trial(i, rng, data, out, extra, args.save_seconds)
        same = ok and equal(final_state(out), reference) and train_steps(out) == list(range(1, STEPS + 1))
        identical += same
        print(f"trial {i + 1:2d}: killed {story}: {'identical' if same else 'DIFFERENT'}", flush=True)
    minutes = (time.perf_counter() - started) / 60
    print(f"{identical}/{args.trials} identical (ViT 32/2/2 at 16 px, 40 images, batch 8, {STEPS} steps, a checkpoint "
          f"every {SAVE_EVERY}, {args.workers} loader workers; {minutes:.1f} min)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if identical == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
