"""Every way a run ends exits within seconds, with one line and a non-zero code, never a hang, even though its loader
workers ignore SIGTERM; a full disk and a read-only output folder are one line each, and nothing written is lost."""

import errno
import os
import signal
import time

import pytest

import emae.engine.trainer as trainer
from emae.cli.main import main
from emae.engine import list_checkpoints, load_checkpoint

from crashkit import RUN, finish, logged_step, start, wait_for
from helpers import write_images

WORKERS = "data.num_workers=2"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, 40, size=20)
    return root


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-2000:]
    return stderr.strip().splitlines()[-1]


def test_a_data_error_in_a_worker(tmp_path):
    paths = write_images(tmp_path / "imgs", 16, size=20)
    paths[5].write_bytes(paths[5].read_bytes()[:100])  # truncated: fatal with data.strict=true
    proc = start(tmp_path / "imgs", tmp_path / "run", WORKERS, "data.strict=true", group=True)
    _, err = finish(proc)
    assert proc.returncode == 2
    assert last_line(err).startswith(f"emae: error: unreadable image {paths[5]} (")  # no "emae.errors.DataError:"


FAILURES = {  # injected failure: (exit code, the last line of stderr, given the run folder)
    "enospc_save:2": (2, "emae: error: no space left on device while writing {out}/checkpoint-00000004.pt (the "
                         "previous checkpoint {out}/checkpoint-00000002.pt is intact)"),
    "enospc_log:2": (2, "emae: error: no space left on device while writing {out}/log.jsonl"),
    "config:2": (2, "emae: error: injected: a config error while the loader workers run"),
    "bug:2": (1, "RuntimeError: injected: an unexpected exception while the loader workers run"),  # a traceback
}


@pytest.mark.parametrize("fail", FAILURES)
def test_an_error_in_the_main_process(data, tmp_path, fail):
    """A full disk in a checkpoint write or a log line, a config error, an emae bug: loader workers are running."""
    out = tmp_path / "run"
    proc = start(data, out, WORKERS, fail=fail, group=True)
    _, err = finish(proc)
    code, line = FAILURES[fail]
    assert proc.returncode == code
    assert (err.strip().splitlines()[-1] if code == 1 else last_line(err)) == line.format(out=out)
    if fail == "enospc_save:2":  # the previous checkpoint is intact, the half-written one is gone
        assert [p.name for p in list_checkpoints(out)] == ["checkpoint-00000002.pt"]
        assert load_checkpoint(out / "checkpoint-00000002.pt")["global_step"] == 2
        assert not list(out.glob(".*.tmp"))


def test_a_second_ctrl_c_aborts_at_once(data, tmp_path):
    out = tmp_path / "run"
    proc = start(data, out, WORKERS, step_sleep=0.6, group=True)
    wait_for(proc, lambda: logged_step(out) >= 1)
    os.killpg(proc.pid, signal.SIGINT)  # the graceful stop ends after the next step's 0.6 s pause ...
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # ... and a second Ctrl-C aborts it (KeyboardInterrupt, workers running)
    _, err = finish(proc)
    assert proc.returncode == 130 and last_line(err) == "emae: interrupted"


@pytest.mark.parametrize("how", ["read-only", "chmod"])
def test_a_read_only_output_folder_is_one_line_before_any_work(data, tmp_path, monkeypatch, capsys, how):
    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent / "run"
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into a chmod 555 folder; the read-only file system stands in")
        parent.chmod(0o555)
    else:  # a read-only mount, at the system-call wrappers every write goes through
        def read_only(call):
            def refuse(path, *args, **kwargs):
                if str(path).startswith(str(parent)):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
                return call(path, *args, **kwargs)
            return refuse

        monkeypatch.setattr(os, "open", read_only(os.open))
        monkeypatch.setattr(os, "mkdir", read_only(os.mkdir))

    def no_work(*args, **kwargs):
        raise AssertionError("data or model set up before the output folder was checked")

    monkeypatch.setattr(trainer, "image_source", no_work)
    monkeypatch.setattr(trainer, "build_model", no_work)
    code = main(["pretrain", "--data", str(data), "--output", str(out), "--no-progress", *RUN])
    err = capsys.readouterr().err.strip()
    reason = "read-only file system" if how == "read-only" else "permission denied"
    assert code == 2 and err == f"emae: error: cannot write to the output folder {out} ({reason})"
    assert not out.exists()
