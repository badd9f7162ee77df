"""Run ``emae`` in a child process that the crash tests kill: ``python crash_child.py STEP_SLEEP SAVE_SECONDS ARGS``.

STEP_SLEEP (s) pauses after each logged training step, so the parent can aim at a step; SAVE_SECONDS spreads
every checkpoint's bytes over that long (20 chunks), so the parent can kill in the middle of a write. Neither
changes any number the run computes.

``EMAE_CHILD_FAIL=KIND:N`` injects a failure, for the exit-path tests:
  enospc_save:N  the N-th checkpoint write runs out of disk space half-way (OSError ENOSPC from the file's write)
  enospc_log:N   the log line of step N finds the disk full
  config:N       a ConfigError in the main process at the N-th batch (loader workers running)
  bug:N          a RuntimeError (an emae bug) in the main process at the N-th batch
"""

import errno
import io
import os
import sys
import time
from pathlib import Path

import torch

import emae.engine.trainer as loop
from emae.cli.main import main
from emae.engine import log
from emae.errors import ConfigError

step_sleep, save_seconds = float(sys.argv[1]), float(sys.argv[2])
real_save, real_write, real_batch_to_device = torch.save, log.JsonlLog.write, loop.batch_to_device
fail_kind, _, fail_at = os.environ.get("EMAE_CHILD_FAIL", ":0").partition(":")
fail_at = int(fail_at)
calls = {"save": 0, "batch": 0}


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def slow_save(obj, f, *args, **kwargs):
    calls["save"] += 1
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    chunk = -(-len(data) // 20)
    for i in range(0, len(data), chunk):
        if fail_kind == "enospc_save" and calls["save"] == fail_at and i >= len(data) // 2:
            raise disk_full()
        f.write(data[i : i + chunk])
        f.flush()
        time.sleep(save_seconds / 20)


class FullDisk(type(Path())):
    def open(self, *args, **kwargs):
        raise disk_full()


def slow_write(self, **record):
    if fail_kind == "enospc_log" and record.get("step") == fail_at:
        self.path = FullDisk(self.path)
    real_write(self, **record)
    if record.get("type") == "train":
        time.sleep(step_sleep)


def failing_batch_to_device(*args, **kwargs):
    calls["batch"] += 1
    if calls["batch"] == fail_at and fail_kind == "config":
        raise ConfigError("injected: a config error while the loader workers run")
    if calls["batch"] == fail_at and fail_kind == "bug":
        raise RuntimeError("injected: an unexpected exception while the loader workers run")
    return real_batch_to_device(*args, **kwargs)


torch.save = slow_save
log.JsonlLog.write = slow_write
loop.batch_to_device = failing_batch_to_device
sys.exit(main(sys.argv[3:]))
