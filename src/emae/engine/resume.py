"""Resuming a run: it continues with its own config, changed only where a run may change mid-way; its log is cut
back to the checkpoint, so no step is recorded twice.

A resumed run keeps every key of the config saved in its checkpoint except those in :data:`MAY_CHANGE`: the run's
length (longer only), how often it saves and logs, how many pictures it draws, loader workers, device, threads
and the distributed layout (``train.batch_size`` may change only with the world size, keeping the global batch).
Anything else is an error naming the key, unless forced, which prints every changed key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..config import load
from ..errors import ConfigError
from .atomic import write_text_atomic

MAY_CHANGE = (
    "output_dir", "train.max_steps", "train.epochs", "train.stop_after_steps", "train.save_every",
    "train.save_every_steps", "train.keep_last", "train.log_every", "train.num_vis", "data.num_workers",
    "train.device", "train.threads", "train.distributed", "train.dist_backend", "train.fsdp_checkpoint",
    "train.activation_checkpointing", "train.compile", "train.monitor.data", "train.monitor.every",
    "train.monitor.images", "train.monitor.k", "train.monitor.recon_images", "train.monitor.batch_size",
    "train.tensorboard", "train.wandb", "train.wandb_project", "train.wandb_name",
    "data.prefetch_factor", "data.device_prefetch",  # loader settings that change no number
    "train.compile_mode", "train.fused_norm", "train.bf16_params",  # the same numbers (eager, CPU); close on CUDA
)
LONGER_ONLY = ("train.max_steps", "train.epochs")
Change = tuple[str, Any, Any]  # key, the run's value, the new value


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def config_changes(saved: dict, cfg: Any) -> list[Change]:
    """Keys whose value in ``cfg`` (any command's config) differs from the saved run config (read with today's
    defaults for keys it lacks)."""
    old, new = _flat(load(type(cfg), data=saved).to_dict()), _flat(cfg.to_dict())
    old["train.stop_after_steps"] = None  # a stop applies to the invocation that asked for it
    return [(k, old[k], new[k]) for k in new if old.get(k) != new[k]]


def _refused(change: Change, world: tuple[int, int]) -> bool:
    key, old, new = change
    if key == "train.batch_size":  # 2 processes x B and 1 x 2B are the same run
        return old * world[0] != new * world[1]
    if key in LONGER_ONLY and old is not None and new is not None:
        return new < old
    return key not in MAY_CHANGE


def show(change: Change) -> str:
    key, old, new = change
    return f"{key} {old!r} -> {new!r}"


def check_resume_config(cfg: Any, ckpt: dict, path: Path, world_size: int, force: bool) -> list[Change]:
    """The keys ``cfg`` changes against the checkpoint's config; a change a resumed run may not make is a
    :class:`~emae.errors.ConfigError` naming the key, unless ``force``."""
    changes = [c for c in config_changes(ckpt["config"], cfg) if c[0] != "output_dir"]
    refused = [c for c in changes if _refused(c, (ckpt.get("world_size", 1), world_size))]
    if refused and not force:
        key, old, new = refused[0]
        more = f" (and {len(refused) - 1} more: {', '.join(c[0] for c in refused[1:4])})" if len(refused) > 1 else ""
        why = ("a run can only be made longer" if key in LONGER_ONLY
               else "the global batch (batch_size x world size) must stay" if key == "train.batch_size"
               else "a resumed run keeps its config except run length, saving, logging, workers, device, threads "
                    "and the distributed layout")
        raise ConfigError(f"{key}: the run {path.parent} has {old!r}, not {new!r}{more}; {why}; pass --force-config "
                          f"to change it anyway")
    return changes


def announce(path: Path, ckpt: dict, changes: list[Change], forced: bool) -> None:
    """Say which checkpoint, step and config a run resumes; loudly list what --force-config changed."""
    changed = f"; changed: {', '.join(show(c) for c in changes)}" if changes else ""
    print(f"resuming {path}: step {ckpt['global_step']}, epoch {ckpt['epoch']}, with the config saved in it{changed}",
          flush=True)
    if forced and changes:
        warn = "emae: warning:"
        print(f"{warn} --force-config: {len(changes)} changed config keys; the resumed run is no longer the one it "
              f"continues, and bit-exact resume does not hold:", file=sys.stderr)
        for c in changes:
            print(f"{warn}   {show(c)}", file=sys.stderr)
        sys.stderr.flush()


def truncate_log(path: Path, step: int) -> float | None:
    """Cut ``log.jsonl`` back to the records up to ``step`` (those after the checkpoint will be written again;
    a record without a step counts as written at the step before it; a half-written last line goes). Atomic: a
    temporary file renamed over it. Returns the loss of the last train record kept."""
    if not path.is_file():
        return None
    kept, current, loss = [], 0, None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if not isinstance(record, dict):
            continue
        current = record.get("step", record.get("global_step", current))
        if current > step:
            break
        kept.append(line)
        if record.get("type") == "train":
            loss = record.get("loss")
    write_text_atomic("".join(line + "\n" for line in kept), path)
    return loss
