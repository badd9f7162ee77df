"""Kill tests: ``emae pretrain`` in a child process, stopped by SIGKILL (in a checkpoint write, at a random step),
SIGTERM and SIGINT; the previous checkpoint survives and ``--resume auto`` ends bit-identical to a straight run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import emae
from emae.engine import latest_valid_checkpoint, list_checkpoints, load_checkpoint, pretrain, read_log

from helpers import TINY, tiny_config, write_images

CHILD = Path(__file__).with_name("crash_child.py")
RUN = [*TINY, "train.max_steps=12", "train.batch_size=8", "train.warmup_epochs=0.5", "train.num_vis=0",
       "train.log_every=1", "train.save_every_steps=2"]  # 40 images: 5 steps an epoch, so the run crosses epochs


def config(data, out, *extra):
    return tiny_config(*RUN[len(TINY):], *extra, **{"data.path": str(data), "output_dir": str(out)})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, 40, size=20)
    return root


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted run's final parameters."""
    result = pretrain(config(data, tmp_path_factory.mktemp("straight")), progress=False)
    return load_checkpoint(result.checkpoint)["model"]


def start(data, out, *extra, step_sleep=0.0, save_seconds=0.0, group=False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(emae.__file__).parents[1]), str(CHILD.parent)])}
    argv = [sys.executable, str(CHILD), str(step_sleep), str(save_seconds), "pretrain", "--data", str(data),
            "--output", str(out), "--no-progress", *RUN, *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=group)


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


def resume_and_compare(data, out, straight) -> None:
    result = pretrain(config(data, out), resume="auto", progress=False)
    assert result.global_step == 12
    final = load_checkpoint(result.checkpoint)["model"]
    assert all(torch.equal(final[k], straight[k]) for k in straight)
    assert not list(out.glob(".*.tmp"))  # leftovers of a killed write are cleaned up


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(data, tmp_path, straight):
    out = tmp_path / "run"
    proc = start(data, out, save_seconds=0.6)
    wait_for(proc, lambda: list(out.glob(".checkpoint-00000004.pt.*.tmp")))  # the second write has begun
    time.sleep(random.Random(0).uniform(0.0, 0.7))  # somewhere in the 0.6 s write, or just after it
    proc.kill()
    proc.wait()
    assert (out / "checkpoint-00000002.pt").exists()
    assert load_checkpoint(out / "checkpoint-00000002.pt")["global_step"] == 2  # the previous one is intact
    for path in list_checkpoints(out):  # nothing half-written ever carries a checkpoint's name
        load_checkpoint(path)
    assert latest_valid_checkpoint(out)[0].name in ("checkpoint-00000002.pt", "checkpoint-00000004.pt")
    resume_and_compare(data, out, straight)


def test_sigkill_at_a_random_step_then_resume_auto_is_exact(data, tmp_path, straight):
    out = tmp_path / "run"
    rng = random.Random(2)
    target = rng.randint(3, 10)
    proc = start(data, out, step_sleep=0.1)
    wait_for(proc, lambda: logged_step(out) >= target)
    time.sleep(rng.uniform(0.0, 0.15))  # anywhere in the next step
    proc.kill()
    proc.wait()
    assert logged_step(out) < 12
    resume_and_compare(data, out, straight)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_writes_a_checkpoint_and_exits_0(data, tmp_path, straight, sig):
    """SIGTERM to the process; SIGINT to the whole process group (as Ctrl-C does), loader workers included."""
    out = tmp_path / "run"
    proc = start(data, out, "data.num_workers=2", step_sleep=0.1, group=sig == signal.SIGINT)
    wait_for(proc, lambda: logged_step(out) >= 3)
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr, stderr[-2000:]
    (record,) = [r for r in read_log(out / "log.jsonl") if r["type"] == "signal"]
    step = record["step"]
    assert record["signal"] == sig.name and 3 <= step < 12
    assert f"stopped by {sig.name} at step {step}" in stdout
    assert list_checkpoints(out)[0].name == f"checkpoint-{step:08d}.pt"  # written at the step it stopped
    resume_and_compare(data, out, straight)
