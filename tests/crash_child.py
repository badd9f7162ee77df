"""Run ``emae`` in a child process that the crash tests kill: ``python crash_child.py STEP_SLEEP SAVE_SECONDS ARGS``.

STEP_SLEEP (s) pauses after each logged training step, so the parent can aim at a step; SAVE_SECONDS spreads
every checkpoint's bytes over that long (20 chunks), so the parent can kill in the middle of a write. Neither
changes any number the run computes.
"""

import io
import sys
import time

import torch

from emae.cli.main import main
from emae.engine import log

step_sleep, save_seconds = float(sys.argv[1]), float(sys.argv[2])
real_save, real_write = torch.save, log.JsonlLog.write


def slow_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    chunk = -(-len(data) // 20)
    for i in range(0, len(data), chunk):
        f.write(data[i : i + chunk])
        f.flush()
        time.sleep(save_seconds / 20)


def slow_write(self, **record):
    real_write(self, **record)
    if record.get("type") == "train":
        time.sleep(step_sleep)


if save_seconds > 0:
    torch.save = slow_save
log.JsonlLog.write = slow_write
sys.exit(main(sys.argv[3:]))
