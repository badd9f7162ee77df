"""The pre-training loop, one for every method. Read it top to bottom.

Exact resume: the data order is a seeded permutation per epoch, each sample's augmentation runs under its own
seed, and masks come from a dedicated generator whose state is checkpointed. So N steps straight and N/2 steps,
a stop and ``--resume`` for the rest give the same parameters bit for bit (on CPU, in fp32).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ..config import Config
from ..data import batch_to_device, close_loader, eval_transform, image_source, pretrain_loader
from ..errors import CheckpointError, ConfigError, DataError, TrainingError
from ..masks import sequences_per_image
from ..models import build_model
from ..viz import save_reconstruction
from .atomic import check_writable, write_text_atomic
from .checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    checkpoint_name,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_temporaries,
    rng_state,
    set_rng_state,
    state_mismatch,
    write_checkpoint,
)
from .device import autocast, resolve_device, seed_everything
from .distributed import DistInfo, all_reduce_mean, any_rank, barrier, broadcast_object, cleanup, init_distributed
from .distributed import is_main
from .distributed import grad_scaler, grad_sync, mask_args, wrap_model
from .guard import NonFiniteGuard
from .log import JsonlLog
from .optim import build_optimizer, build_scheduler, effective_lr
from .perf import StepTimer, configure_backends, maybe_compile
from .resume import announce, check_resume_config, truncate_log
from .sharded import load_optimizer_state, model_state, optimizer_state, plain_model, save_sharded
from .signals import StopSignals

RUN_FILES = ("log.jsonl", "config.yaml", "reconstruction.png")


@dataclass
class RunResult:
    output_dir: Path
    checkpoint: Path
    global_step: int
    loss: float
    benchmark: dict | None = None  # --benchmark: img/s, step times, data wait, memory, TFLOP/s, MFU
    signal: str | None = None  # "SIGTERM" / "SIGINT" when a signal stopped the run (after a checkpoint)
    bad_steps: int = 0  # steps skipped by the non-finite guard
    already_finished: bool = False  # resumed a run that had reached its last step: nothing ran


def prepare_output_dir(cfg: Config, resume: str | None, overwrite: bool, trust: bool = False,
                       force_config: bool = False, world_size: int = 1) -> tuple[Path, Path | None, list[Path]]:
    """The run folder (checked writable), the checkpoint to resume from (None for a fresh run; its config is
    checked against ``cfg``: see :mod:`emae.engine.resume`), and, with ``overwrite``, the old run's files, which
    the caller deletes only once the new run is ready to write."""
    if resume not in (None, "auto"):
        ckpt = Path(resume)
        out = Path(cfg.output_dir) if cfg.output_dir else ckpt.parent
        check_writable(out)
        _check_resume(cfg, ckpt, load_checkpoint(ckpt, trust=trust, peek=True), world_size, force_config)
        return out, ckpt, []
    if cfg.output_dir is None:
        if resume == "auto":
            raise ConfigError("--resume auto needs --output: the run folder to continue")
        out = Path("runs") / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        out = Path(cfg.output_dir)
    check_writable(out)
    existing = list_checkpoints(out) + [out / f for f in RUN_FILES if (out / f).exists()]
    if resume == "auto":
        found = latest_valid_checkpoint(out, trust)
        if found:
            _check_resume(cfg, *found, world_size, force_config)
        restart = [] if list_checkpoints(out) else existing  # a run killed before its first checkpoint starts over
        return out, (found[0] if found else None), restart
    if existing and not overwrite:
        raise ConfigError(f"output folder {out} already holds a run; pass --resume auto to continue it or --overwrite")
    return out, None, existing


def warmup_notes(t, warmup_steps: float, total_steps: int) -> list[str]:
    """What a run's warmup means for its length: a warning when the lr never reaches its peak, and the warmup
    share of the run when ``train.max_steps`` sets the length (epochs-based warmup then rarely fits by itself)."""
    notes = []
    if warmup_steps >= total_steps:
        notes.append(f"warning: the warmup (train.warmup_epochs={t.warmup_epochs:g}: {warmup_steps:.0f} steps) is as "
                     f"long as or longer than the run ({total_steps} steps): the lr never reaches its peak; lower "
                     "train.warmup_epochs")
    elif t.max_steps is not None:
        notes.append(f"warmup: {warmup_steps:.0f} of {total_steps} steps ({100 * warmup_steps / total_steps:.0f}% of "
                     f"the run, train.warmup_epochs={t.warmup_epochs:g})")
    return notes


def _check_resume(cfg: Config, path: Path, ckpt: dict, world_size: int, force: bool) -> None:
    changes = check_resume_config(cfg, ckpt, path, world_size, force)
    if is_main():
        announce(path, ckpt, changes, force)


def start_line(cfg: Config, out: Path, images: int, steps_per_epoch: int, total_steps: int, global_batch: int,
               lr: float, device: torch.device) -> str:
    """The line a run prints as it starts: what it trains, how long, on what."""
    return (f"{cfg.method} {cfg.model.arch} on {images} images: {total_steps} steps ({steps_per_epoch} per epoch), "
            f"global batch {global_batch}, lr {lr:.3g}; {device.type}, {torch.get_num_threads()} threads; run {out}")


def vis_batch(cfg: Config, source, device: torch.device) -> torch.Tensor | None:
    """A fixed, evenly spread set of un-augmented images for the reconstruction picture."""
    n = min(cfg.train.num_vis, len(source))
    if n == 0:
        return None
    tf = eval_transform(cfg.model.image_size, cfg.data.mean, cfg.data.std)
    picks = np.linspace(0, len(source) - 1, n).round().astype(int)
    return torch.stack([tf(source.fetch(int(i))[0]) for i in picks]).to(device)


def timed_batches(loader, timer: StepTimer | None):
    """The loader's batches; with a timer, the time spent waiting for each is charged to the current step."""
    if timer is None:
        yield from loader
        return
    it = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        timer.waited(time.perf_counter() - start)
        yield batch


class _NoLog:
    def write(self, **record) -> None:  # ranks other than 0 log nothing
        pass


def pretrain(cfg: Config, resume: str | None = None, overwrite: bool = False, progress: bool = True,
             init: str | None = None, timer: StepTimer | None = None, trust: bool = False,
             force_config: bool = False) -> RunResult:
    """Pre-train; under torchrun / srun (or ``train.distributed``) each process runs this with its shard.
    SIGTERM / SIGINT stop it after the current step with a checkpoint. ``resume``: a checkpoint, or "auto" (the
    newest valid one in ``cfg.output_dir``, else a fresh start); ``cfg`` must match its config except where a run
    may change (:mod:`emae.engine.resume`) unless ``force_config``. ``trust``: unpickle checkpoints in full (can run
    code from them). Whatever ends the run, its loader workers are shut down before this returns or raises."""
    info = init_distributed(cfg.train, resolve_device(cfg.train.device))
    try:
        with StopSignals() as signals, ExitStack() as closing:
            result = _pretrain(cfg, info, resume, overwrite, progress, init, timer, signals, closing, trust,
                               force_config)
    except BaseException:
        cleanup(info)
        raise
    cleanup(info, wait=True)  # all ranks leave together: none tears down its links while rank 0 still works
    return result


def _pretrain(cfg: Config, info: DistInfo, resume: str | None, overwrite: bool, progress: bool,
              init: str | None, timer: StepTimer | None, signals: StopSignals, closing: ExitStack, trust: bool,
              force_config: bool) -> RunResult:
    t = cfg.train
    main = info.is_main
    out, resume_path, stale = broadcast_object(  # rank 0's folder
        prepare_output_dir(cfg, resume, overwrite, trust, force_config, info.world_size))
    barrier()  # every rank has checked the folder before rank 0 writes into it
    cfg.output_dir = str(out)
    device = info.device
    configure_backends(device, t.tf32, t.threads)
    if timer is not None:
        timer.device = device
    seed_everything(t.seed)

    # data
    source = image_source(cfg)
    loader = pretrain_loader(cfg, source, info.rank, info.world_size, pin_memory=device.type == "cuda")
    closing.callback(close_loader, loader)  # on every way out of here
    sampler = loader.sampler
    steps_per_epoch = sampler.batches_per_epoch // t.accum_iter
    if steps_per_epoch == 0:
        raise DataError(
            f"data: {len(source)} images give no full step of train.batch_size {t.batch_size}"
            f" x train.accum_iter {t.accum_iter}; lower the batch size"
        )
    sampler.batches_per_epoch = steps_per_epoch * t.accum_iter  # drop a trailing partial accumulation

    # model, optimiser, schedule
    model = build_model(cfg).to(device)
    model.set_grad_checkpointing(t.activation_checkpointing)
    ckpt = load_checkpoint(resume_path, map_location=device, trust=trust) if resume_path is not None else None
    init_info = {}
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except (KeyError, RuntimeError) as e:  # weights only, or another model's
            why = state_mismatch(model, ckpt, e)
            raise CheckpointError(f"checkpoint {resume_path} cannot resume this run ({why})") from None
    elif init is not None:  # --init: weights only (any known format), fresh optimiser
        from ..interop.load import init_from

        init_info = init_from(model, init, trust)
    wrapped = wrap_model(model, info, t.precision)  # DDP wrapper, or FSDP shards ``model`` in place
    forward = maybe_compile(wrapped, t.compile)  # checkpoints keep using ``model``
    per_image = sequences_per_image(cfg.mask.type, cfg.mask.ratio)
    lr = effective_lr(t, info.world_size, per_image)
    opt = build_optimizer(model, t, lr)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    sched = build_scheduler(opt, t, lr, steps_per_epoch, total_steps)
    scaler = grad_scaler(info, enabled=t.precision == "fp16")
    mask_gen = torch.Generator(device).manual_seed(t.seed)
    guard = NonFiniteGuard(t.max_bad_steps, reduce=any_rank)  # every rank skips the same steps
    epoch, batch_in_epoch, global_step = 0, 0, 0

    if ckpt is not None:
        try:
            load_optimizer_state(model, opt, ckpt["optimizer"], info)
            sched.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"], mask_gen)
            epoch, batch_in_epoch, global_step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"]
        except (KeyError, RuntimeError, ValueError, TypeError) as e:  # weights only, or another model's
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"checkpoint {resume_path} cannot resume this run ({type(e).__name__}: {first})") from None
        guard.load_state_dict(ckpt.get("guard", {}))
        del ckpt

    for path in stale if main else ():  # --overwrite: the old run goes only now that the new one is ready
        path.unlink(missing_ok=True)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)  # half-written checkpoints of a killed run
        write_text_atomic(yaml.safe_dump(cfg.to_dict(), sort_keys=False), out / "config.yaml")
    own_log = main and resume_path is not None and resume_path.parent.resolve() == out.resolve()
    last_logged = truncate_log(out / "log.jsonl", global_step) if own_log else None  # no step logged twice
    log = JsonlLog(out / "log.jsonl") if main else _NoLog()
    warmup_steps = t.warmup_epochs * steps_per_epoch
    global_batch = t.batch_size * t.accum_iter * info.world_size
    if resume_path is None:
        log.write(type="start", lr=lr, steps_per_epoch=steps_per_epoch, images=len(source), data=str(source.root),
                  params=sum(p.numel() for p in model.parameters() if p.requires_grad), world_size=info.world_size,
                  global_batch=global_batch, sequences_per_step=global_batch * per_image,
                  lr_batch_unit=t.lr_batch_unit, total_steps=total_steps, warmup_steps=warmup_steps,
                  warmup_fraction=min(1.0, warmup_steps / total_steps), threads=torch.get_num_threads(),
                  device=str(device), **init_info)
    else:
        log.write(type="resume", checkpoint=str(resume_path), global_step=global_step, threads=torch.get_num_threads(),
                  device=str(device))
    if main:
        print(start_line(cfg, out, len(source), steps_per_epoch, total_steps, global_batch, lr, device), flush=True)

    last_good = resume_path if guard.consecutive == 0 else None  # newest checkpoint not inside a bad stretch

    def save() -> Path:  # every rank calls it; rank 0 writes (FSDP: all ranks gather, or write their shards)
        nonlocal last_good
        path = out / checkpoint_name(global_step)
        meta = {
            "format": FORMAT, "version": FORMAT_VERSION, "method": cfg.method, "config": cfg.to_dict(),
            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(mask_gen),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
            "guard": guard.state_dict(), "world_size": info.world_size,
        }
        if info.mode == "fsdp" and t.fsdp_checkpoint == "sharded":
            path = path.with_suffix(".dcp")
            save_sharded(meta, model, opt, path, info)
        else:
            state = {"model": model_state(model, info), "optimizer": optimizer_state(model, opt, info)}
            if main:
                write_checkpoint({**meta, **state}, path)
        if main:
            prune_checkpoints(out, t.keep_last)  # only once the new checkpoint is complete
        barrier()  # no rank runs ahead of (or exits before) rank 0's write
        if guard.consecutive == 0:
            last_good = path
        return path

    bar = tqdm(total=total_steps, initial=global_step, unit="step", disable=not (progress and main),
               dynamic_ncols=True)
    if main and resume_path is None:
        for line in warmup_notes(t, warmup_steps, total_steps):
            bar.write(line)
    model.train()
    if timer is not None:
        timer.begin()
    last_ckpt, last_loss, stopped = None, (math.nan if last_logged is None else last_logged), False
    while global_step < total_steps and not stopped:
        sampler.set_epoch(epoch, batch_in_epoch)
        skipped: dict[str, None] = {}  # unique unreadable files met this epoch, in order
        window: dict[str, torch.Tensor] = {}  # summed loss terms since the last log line
        window_steps, window_imgs, window_start, window_bad = 0, 0, time.perf_counter(), 0
        for imgs, _, bad in timed_batches(loader, timer):
            imgs, undecodable = batch_to_device(imgs, cfg, device)
            skipped.update(dict.fromkeys(bad + undecodable))
            if batch_in_epoch % t.accum_iter == 0:  # a step begins: what to restore if it turns out bad
                window_before, step_loss = window, 0
            grad_sync(wrapped, (batch_in_epoch + 1) % t.accum_iter == 0)  # all-reduce on the last micro-batch only
            with autocast(device, t.precision):
                step_out = forward(imgs, **mask_args(model, imgs.shape[0], mask_gen, info))
            scaler.scale(step_out.loss / t.accum_iter).backward()
            step_loss = step_loss + step_out.loss.detach()
            for name, value in step_out.terms.items():
                window[name] = window.get(name, 0) + value.detach().float() / t.accum_iter
            window_imgs += imgs.shape[0]
            batch_in_epoch += 1
            if batch_in_epoch % t.accum_iter:
                continue
            # fp16: scaled gradients are finite exactly when the true ones are, so the check needs no unscale
            skip = guard.is_bad(step_loss, model.parameters())
            if not skip:
                scaler.step(opt)  # unscales inside (fused AdamW: in its kernel)
            elif scaler.is_enabled():
                scaler.unscale_(opt)  # records the overflow, so update() lowers the scale as GradScaler's own skip does
            scaler.update()
            opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # a skipped first step makes PyTorch warn about the call order
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                sched.step()  # a skipped step still counts (see engine/guard.py)
            global_step += 1
            if skip:
                window, window_bad = window_before, window_bad + 1
                log.write(type="bad_step", step=global_step, epoch=epoch, consecutive=guard.consecutive + 1)
                bar.write(f"warning: step {global_step}: non-finite loss or gradient, update skipped")
            try:
                guard.record(skip, global_step, last_good)
            except TrainingError as e:
                bar.close()
                log.write(type="error", step=global_step, message=str(e))
                raise
            window_steps += not skip
            if timer is not None:
                timer.end(imgs.shape[0] * t.accum_iter)
            bar.update(1)
            stopped = any_rank(bool(signals.received)) or (t.stop_after_steps is not None and global_step >= t.stop_after_steps)
            done = global_step >= total_steps
            logged = global_step % t.log_every == 0 or batch_in_epoch == sampler.batches_per_epoch or stopped or done
            if logged and window_steps:
                # the one host sync per window; the mean over ranks is the global batch's loss
                terms = {k: all_reduce_mean(v).item() / window_steps for k, v in window.items()}
                last_loss = terms["loss"]
                speed = window_imgs * info.world_size / (time.perf_counter() - window_start)
                current_lr = opt.param_groups[0]["lr"]
                extra = {"bad_steps": window_bad} if window_bad else {}
                log.write(type="train", step=global_step, epoch=epoch, **terms, lr=current_lr, img_per_s=speed, **extra)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{current_lr:.2e}", img_s=f"{speed:.0f}", refresh=False)
            if logged:
                window = {}
                window_steps, window_imgs, window_start, window_bad = 0, 0, time.perf_counter(), 0
            if stopped or done:
                break
            if t.save_every_steps and global_step % t.save_every_steps == 0:
                last_ckpt = save()
            if timer is not None:
                timer.begin()
        if skipped:
            first = list(skipped)[:10]
            bar.write(f"warning: epoch {epoch}: skipped {len(skipped)} unreadable files, first: {', '.join(first[:3])}")
            log.write(type="skipped", epoch=epoch, count=len(skipped), first=first)
        if batch_in_epoch < sampler.batches_per_epoch:  # stopped or finished inside an epoch
            last_ckpt = save()
            break
        epoch, batch_in_epoch = epoch + 1, 0
        if epoch % t.save_every == 0 or global_step >= total_steps or stopped:
            last_ckpt = save()
    bar.close()
    already_finished = last_ckpt is None  # resumed a finished run: nothing ran, nothing new to save
    if already_finished:
        last_ckpt = resume_path
    stopped_by = signals.received if global_step < total_steps else None
    if stopped_by:
        log.write(type="signal", signal=stopped_by, step=global_step, checkpoint=str(last_ckpt))

    imgs = vis_batch(cfg, source, device)
    if imgs is not None and global_step >= total_steps:  # a finished run gets its picture (from rank 0)
        scale = max(1, 128 // max(cfg.model.image_size))
        shown = plain_model(model, cfg, info)  # FSDP: gathered into a fresh model on rank 0; all ranks call
        if main:
            save_reconstruction(out / "reconstruction.png", shown, imgs, cfg.data.mean, cfg.data.std, seed=t.seed,
                                scale=scale)
    report = None
    if timer is not None:
        report = timer.report(cfg, model, torch.zeros(2, cfg.model.in_chans, *cfg.model.image_size, device=device))
        log.write(type="benchmark", **report)
    log.write(type="end", global_step=global_step, epoch=epoch, checkpoint=str(last_ckpt), loss=last_loss,
              bad_steps=guard.total)
    return RunResult(out, last_ckpt, global_step, last_loss, report, stopped_by, guard.total, already_finished)
