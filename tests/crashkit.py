"""Running ``emae`` in a child process (``crash_child.py``) that a test signals, kills or injects a failure into."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import emae
from emae.engine import read_log

from helpers import TINY

CHILD = Path(__file__).with_name("crash_child.py")
RUN = [*TINY, "train.max_steps=12", "train.batch_size=8", "train.warmup_epochs=0.5", "train.num_vis=0",
       "train.log_every=1", "train.save_every_steps=2"]  # 40 images: 5 steps an epoch, so the run crosses epochs
EXIT_SECONDS = 30  # every exit path ends well within this: a process still alive then hangs


def start(data, out, *extra, step_sleep=0.0, save_seconds=0.0, group=False, fail=None, run=RUN) -> subprocess.Popen:
    """``emae pretrain`` on ``data`` into ``out``; ``fail``: KIND:N injected (see crash_child.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(emae.__file__).parents[1]), str(CHILD.parent)])}
    if fail:
        env["EMAE_CHILD_FAIL"] = fail
    argv = [sys.executable, str(CHILD), str(step_sleep), str(save_seconds), "pretrain", "--data", str(data),
            "--output", str(out), "--no-progress", *run, *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=group)


def finish(proc: subprocess.Popen, timeout: float = EXIT_SECONDS) -> tuple[str, str]:
    """stdout and stderr of a child that must exit by itself within ``timeout``; a hang fails the test (and the
    child is killed with its whole process group, loader workers included)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # started with group=True: the workers too
        except OSError:
            proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running {timeout} s later (a hang); stderr: {err[-1500:]}")


def wait_for(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"child ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("child never got there")
        time.sleep(0.01)


def logged_step(out: Path) -> int:
    try:
        return max([r["step"] for r in read_log(out / "log.jsonl") if r["type"] == "train"], default=0)
    except (OSError, ValueError):  # not there yet, or a line half written
        return 0


def train_steps(out: Path) -> list[int]:
    """The steps of the train records in the run's log, in order (each exactly once after a clean resume)."""
    return [r["step"] for r in read_log(out / "log.jsonl") if r["type"] == "train"]
