"""Checkpoints of a running loop, written atomically, and their restore: the one checkpoint machinery of every
command that trains.

A checkpoint (format :data:`~emae.engine.checkpoint.FORMAT`, version :data:`~emae.engine.checkpoint.FORMAT_VERSION`)
holds the command's ``meta`` (``command``, ``config``, and e.g. ``method`` or the classifier's description), the
model, the optimiser and scaler, every RNG (with the command's own generators, e.g. pre-training's masks), the
position (``epoch``, ``batch_in_epoch``, ``global_step``) and the state of every hook that keeps one (its
``name``: the guard's counts, an EMA, the best score so far).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from .checkpoint import FORMAT, FORMAT_VERSION, checkpoint_name, prune_checkpoints, rng_state, set_rng_state, \
    write_checkpoint
from .distributed import barrier
from .loop import Hook, Loop, StepInfo
from .sharded import load_optimizer_state, model_state, optimizer_state, save_sharded


class CheckpointHook(Hook):
    """Writes a checkpoint every ``save_every`` epochs, every ``save_every_steps`` steps, when a hook stops the run
    and at its end; keeps the newest ``keep_last`` (0: all). Every rank calls; rank 0 writes (FSDP: all ranks
    gather, or write their shards with ``sharded``)."""

    def __init__(self, meta: dict, save_every: int, save_every_steps: int = 0, keep_last: int = 0,
                 generators: dict[str, torch.Generator] | None = None, sharded: bool = False) -> None:
        self.meta, self.save_every, self.save_every_steps = meta, save_every, save_every_steps
        self.keep_last = keep_last
        self.generators = generators or {}
        self.sharded = sharded
        self.last: Path | None = None  # the newest checkpoint this invocation wrote
        self.last_step: int | None = None
        self.start_step = 0

    def on_start(self, loop: Loop) -> None:
        self.start_step = loop.pos.step

    def after_step(self, loop: Loop, info: StepInfo) -> None:
        if self.save_every_steps and loop.stop is None and not loop.done and loop.pos.step % self.save_every_steps == 0:
            self.save(loop)

    def after_epoch(self, loop: Loop) -> None:
        if loop.pos.epoch % self.save_every == 0 or loop.done or loop.stop is not None:
            self.save(loop)

    def on_end(self, loop: Loop) -> None:
        """A run stopped or finished inside an epoch is saved where it stands (once)."""
        if loop.pos.step > self.start_step and self.last_step != loop.pos.step:
            self.save(loop)

    def save(self, loop: Loop) -> Path:
        path = loop.out / checkpoint_name(loop.pos.step)
        info = loop.info
        meta = {"format": FORMAT, "version": FORMAT_VERSION, **self.meta, "scaler": loop.scaler.state_dict(),
                "rng": rng_state(**self.generators), "epoch": loop.pos.epoch, "batch_in_epoch": loop.pos.batch,
                "global_step": loop.pos.step, "world_size": info.world_size,
                **{h.name: h.state_dict() for h in loop.hooks if hasattr(h, "state_dict")}}
        if self.sharded:
            path = path.with_suffix(".dcp")
            save_sharded(meta, loop.model, loop.optimizer, path, info)
        else:
            state = {"model": model_state(loop.model, info), "optimizer": optimizer_state(loop.model, loop.optimizer,
                                                                                          info)}
            if info.is_main:
                write_checkpoint({**meta, **state}, path)
        if info.is_main:
            prune_checkpoints(loop.out, self.keep_last)  # only once the new checkpoint is complete
        barrier()  # no rank runs ahead of (or exits before) rank 0's write
        if all(getattr(h, "clean", True) for h in loop.hooks):
            loop.last_good = path
        self.last, self.last_step = path, loop.pos.step
        return path


def restore(loop: Loop, ckpt: dict, path: Path, generators: dict[str, torch.Generator] | None = None) -> None:
    """Optimiser, scaler, RNGs, position and the hooks' states of ``loop`` from a checkpoint (the model's weights are
    the caller's, before it wraps the model); a checkpoint that does not fit is one line."""
    try:
        load_optimizer_state(loop.model, loop.optimizer, ckpt["optimizer"], loop.info)
        loop.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], **(generators or {}))
        loop.pos.epoch, loop.pos.batch, loop.pos.step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"]
    except (KeyError, RuntimeError, ValueError, TypeError) as e:  # weights only, or another model's
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} cannot resume this run ({type(e).__name__}: {first})") from None
    for hook in loop.hooks:
        if hasattr(hook, "load_state_dict"):
            hook.load_state_dict(ckpt.get(hook.name, {}))
    loop.last_good = path if all(getattr(h, "clean", True) for h in loop.hooks) else None
