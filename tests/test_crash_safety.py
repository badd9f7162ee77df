"""Kill tests: ``emae pretrain`` in a child process, stopped by SIGKILL (in a checkpoint write, at a random step),
SIGTERM and SIGINT; the previous checkpoint survives and ``--resume auto`` ends bit-identical to a straight run."""

import os
import random
import signal
import time

import pytest
import torch

from emae.engine import latest_valid_checkpoint, list_checkpoints, load_checkpoint, pretrain, read_log

from crashkit import RUN, finish, logged_step, start, train_steps, wait_for
from helpers import TINY, tiny_config, write_images


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


def resume_and_compare(data, out, straight) -> None:
    result = pretrain(config(data, out), resume="auto", progress=False)
    assert result.global_step == 12
    final = load_checkpoint(result.checkpoint)["model"]
    assert all(torch.equal(final[k], straight[k]) for k in straight)
    assert not list(out.glob(".*.tmp"))  # leftovers of a killed write are cleaned up
    assert train_steps(out) == list(range(1, 13))  # the log was cut back to the checkpoint: no step twice


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
    target = rng.randint(1, 4) * 2 + 1  # odd: the step is logged, the next checkpoint (even steps) is not written
    proc = start(data, out, step_sleep=0.5)
    wait_for(proc, lambda: logged_step(out) >= target)
    time.sleep(rng.uniform(0.0, 0.1))  # in the pause after the log line
    proc.kill()
    proc.wait()
    assert logged_step(out) == target and list_checkpoints(out)[0].name == f"checkpoint-{target - 1:08d}.pt"
    resume_and_compare(data, out, straight)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_writes_a_checkpoint_and_exits_0(data, tmp_path, straight, sig):
    """SIGTERM to the process; SIGINT to the whole process group (as Ctrl-C does), loader workers included."""
    out = tmp_path / "run"
    proc = start(data, out, "data.num_workers=2", step_sleep=0.1, group=sig == signal.SIGINT)
    wait_for(proc, lambda: logged_step(out) >= 3)
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr, stderr[-2000:]
    (record,) = [r for r in read_log(out / "log.jsonl") if r["type"] == "signal"]
    step = record["step"]
    assert record["signal"] == sig.name and 3 <= step < 12
    assert f"stopped by {sig.name} at step {step}" in stdout
    assert list_checkpoints(out)[0].name == f"checkpoint-{step:08d}.pt"  # written at the step it stopped
    resume_and_compare(data, out, straight)
