"""The training loop's phases: epochs of steps, log lines, checkpoints, the picture and the end of a run."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..data import batch_to_device
from ..errors import TrainingError
from ..viz import reconstruction_image
from .checkpoint import FORMAT, FORMAT_VERSION, checkpoint_name, prune_checkpoints, rng_state, write_checkpoint
from .device import autocast
from .distributed import any_rank, barrier, grad_sync, mask_args
from .run import Run, RunResult, timed_batches, vis_batch
from .sharded import model_state, optimizer_state, plain_model, save_sharded
from .signals import StopSignals
from .window import LossWindow


def train(run: Run, signals: StopSignals) -> None:
    """Epochs until the run's last step, a signal or ``train.stop_after_steps``; checkpoints on the way."""
    t = run.cfg.train
    run.model.train()
    if run.timer is not None:
        run.timer.begin()
    stopped = False
    while run.global_step < run.total_steps and not stopped:
        stopped = train_epoch(run, signals)
        if run.batch_in_epoch < run.sampler.batches_per_epoch:  # stopped or finished inside an epoch
            run.last_ckpt = save(run)
            break
        run.epoch, run.batch_in_epoch = run.epoch + 1, 0
        done = run.global_step >= run.total_steps
        if run.epoch % t.save_every == 0 or done or stopped:
            run.last_ckpt = save(run)
            if not done and run.epoch % t.save_every == 0:
                picture(run)  # the trackers' picture; the finished run's is drawn at the end


def train_epoch(run: Run, signals: StopSignals) -> bool:
    """The rest of the current epoch (from ``batch_in_epoch``); True when a signal or the step limit stopped it."""
    t, cfg = run.cfg.train, run.cfg
    run.sampler.set_epoch(run.epoch, run.batch_in_epoch)
    skipped: dict[str, None] = {}  # unique unreadable files met this epoch, in order
    window = LossWindow()
    stopped = False
    for imgs, _, bad in timed_batches(run.loader, run.timer):
        imgs, undecodable = batch_to_device(imgs, cfg, run.info.device)
        skipped.update(dict.fromkeys(bad + undecodable))
        if run.batch_in_epoch % t.accum_iter == 0:  # a step begins: what to restore if it turns out bad
            window.begin_step()
            step_loss = 0
        step_loss = step_loss + micro_step(run, imgs, window)
        run.batch_in_epoch += 1
        if run.batch_in_epoch % t.accum_iter:
            continue
        skip = optimizer_step(run, step_loss)
        window.end_step(skip)
        if run.timer is not None:
            run.timer.end(imgs.shape[0] * t.accum_iter)
        run.bar.update(1)
        stopped = any_rank(bool(signals.received)) or (t.stop_after_steps is not None
                                                       and run.global_step >= t.stop_after_steps)
        done = run.global_step >= run.total_steps
        if (run.global_step % t.log_every == 0 or run.batch_in_epoch == run.sampler.batches_per_epoch or stopped
                or done):
            log_window(run, window)
        if stopped or done:
            break
        if t.save_every_steps and run.global_step % t.save_every_steps == 0:
            run.last_ckpt = save(run)
        if run.timer is not None:
            run.timer.begin()
    if skipped:
        first = list(skipped)[:10]
        run.bar.write(f"warning: epoch {run.epoch}: skipped {len(skipped)} unreadable files, first: "
                      f"{', '.join(first[:3])}")
        run.log.write(type="skipped", epoch=run.epoch, count=len(skipped), first=first)
    return stopped


def micro_step(run: Run, imgs: torch.Tensor, window: LossWindow) -> torch.Tensor:
    """Forward and backward of one micro-batch; its loss (detached) for the step's non-finite check."""
    t = run.cfg.train
    grad_sync(run.wrapped, (run.batch_in_epoch + 1) % t.accum_iter == 0)  # all-reduce on the last micro-batch only
    with autocast(run.info.device, t.precision):
        out = run.forward(imgs, **mask_args(run.model, imgs.shape[0], run.mask_gen, run.info))
    run.scaler.scale(out.loss / t.accum_iter).backward()
    window.add(out.terms, 1 / t.accum_iter, imgs.shape[0])
    return out.loss.detach()


def optimizer_step(run: Run, step_loss: torch.Tensor) -> bool:
    """The update, unless the loss or a gradient is non-finite (then skipped, logged, counted); the schedule
    moves either way. True when skipped."""
    # fp16: scaled gradients are finite exactly when the true ones are, so the check needs no unscale
    skip = run.guard.is_bad(step_loss, run.model.parameters())
    if not skip:
        run.scaler.step(run.opt)  # unscales inside (fused AdamW: in its kernel)
    elif run.scaler.is_enabled():
        run.scaler.unscale_(run.opt)  # records the overflow, so update() lowers the scale as GradScaler's own skip does
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # a skipped first step makes PyTorch warn about the call order
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
        run.sched.step()  # a skipped step still counts (see engine/guard.py)
    run.global_step += 1
    if skip:
        run.log.write(type="bad_step", step=run.global_step, epoch=run.epoch, consecutive=run.guard.consecutive + 1)
        run.bar.write(f"warning: step {run.global_step}: non-finite loss or gradient, update skipped")
    try:
        run.guard.record(skip, run.global_step, run.last_good)
    except TrainingError as e:
        run.log.write(type="error", step=run.global_step, message=str(e))
        raise
    return skip


def log_window(run: Run, window: LossWindow) -> None:
    """One ``train`` record for the steps since the last (the mean over them and over the ranks), then a new
    window. A window of bad steps only writes nothing."""
    if window.steps:
        values = window.record(run.info.world_size)
        speed = values.pop("img_per_s")
        run.last_loss, lr = values["loss"], run.opt.param_groups[0]["lr"]
        extra = {"bad_steps": window.bad} if window.bad else {}
        run.log.write(type="train", step=run.global_step, epoch=run.epoch, **values, lr=lr, img_per_s=speed, **extra)
        run.bar.set_postfix(loss=f"{run.last_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}", refresh=False)
    window.reset()


# ---------------------------------------------------------------- save and finish


def save(run: Run) -> Path:
    """A checkpoint at the current step. Every rank calls it; rank 0 writes (FSDP: all ranks gather, or write
    their shards)."""
    cfg, info, t = run.cfg, run.info, run.cfg.train
    path = run.out / checkpoint_name(run.global_step)
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "method": cfg.method, "config": cfg.to_dict(),
        "scheduler": run.sched.state_dict(), "scaler": run.scaler.state_dict(), "rng": rng_state(run.mask_gen),
        "epoch": run.epoch, "batch_in_epoch": run.batch_in_epoch, "global_step": run.global_step,
        "guard": run.guard.state_dict(), "world_size": info.world_size,
    }
    if info.mode == "fsdp" and t.fsdp_checkpoint == "sharded":
        path = path.with_suffix(".dcp")
        save_sharded(meta, run.model, run.opt, path, info)
    else:
        state = {"model": model_state(run.model, info), "optimizer": optimizer_state(run.model, run.opt, info)}
        if info.is_main:
            write_checkpoint({**meta, **state}, path)
    if info.is_main:
        prune_checkpoints(run.out, t.keep_last)  # only once the new checkpoint is complete
    barrier()  # no rank runs ahead of (or exits before) rank 0's write
    if run.guard.consecutive == 0:
        run.last_good = path
    return path


def picture(run: Run, final: bool = False) -> None:
    """The reconstruction grid of the fixed picture images: to the trackers (TensorBoard, W&B) and, for the
    finished run, to reconstruction.png. All ranks call (FSDP gathers the model); rank 0 draws."""
    cfg, t = run.cfg, run.cfg.train
    if not (final or t.tensorboard or t.wandb):
        return
    if run.vis is None:
        run.vis = vis_batch(cfg, run.source, run.info.device)
    if run.vis is None:
        return
    shown = plain_model(run.model, cfg, run.info)  # FSDP: gathered into a fresh model on rank 0
    if not run.info.is_main:
        return
    image = reconstruction_image(shown, run.vis, cfg.data.mean, cfg.data.std, seed=t.seed,
                                 scale=max(1, 128 // max(cfg.model.image_size)))
    if final:
        image.save(run.out / "reconstruction.png")
    run.log.image("reconstruction", image, run.global_step)


def finish(run: Run, signals: StopSignals) -> RunResult:
    """The last checkpoint's path, the picture of a finished run, the benchmark report and the end record."""
    already_finished = run.last_ckpt is None  # resumed a finished run: nothing ran, nothing new to save
    if already_finished:
        run.last_ckpt = run.resume_path
    finished = run.global_step >= run.total_steps
    stopped_by = None if finished else signals.received
    if stopped_by:
        run.log.write(type="signal", signal=stopped_by, step=run.global_step, checkpoint=str(run.last_ckpt))
    if finished:
        picture(run, final=True)
    report = None
    if run.timer is not None:
        sample = torch.zeros(2, run.cfg.model.in_chans, *run.cfg.model.image_size, device=run.info.device)
        report = run.timer.report(run.cfg, run.model, sample)
        run.log.write(type="benchmark", **report)
    run.log.write(type="end", global_step=run.global_step, epoch=run.epoch, checkpoint=str(run.last_ckpt),
                  loss=run.last_loss, bad_steps=run.guard.total)
    return RunResult(run.out, run.last_ckpt, run.global_step, run.last_loss, report, stopped_by, run.guard.total,
                     already_finished)
