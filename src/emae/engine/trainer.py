"""The pre-training loop, one for every method. Read it top to bottom.

Exact resume: the data order is a seeded permutation per epoch, each sample's augmentation runs under its own
seed, and masks come from a dedicated generator whose state is checkpointed. So N steps straight and N/2 steps,
a stop and ``--resume`` for the rest give the same parameters bit for bit (on CPU, in fp32).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ..config import Config
from ..data import eval_transform, image_source, pretrain_loader
from ..errors import ConfigError, DataError
from ..models import build_model
from ..viz import save_reconstruction
from .checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    checkpoint_name,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_atomic,
    set_rng_state,
)
from .distributed import DistInfo, all_reduce_mean, barrier, broadcast_object, cleanup, init_distributed, mask_args
from .distributed import grad_scaler, grad_sync, wrap_model
from .log import JsonlLog
from .optim import build_optimizer, build_scheduler, effective_lr
from .perf import StepTimer, configure_backends, maybe_compile
from .sharded import load_optimizer_state, model_state, optimizer_state, plain_model, save_sharded

RUN_FILES = ("log.jsonl", "config.yaml", "reconstruction.png")


@dataclass
class RunResult:
    output_dir: Path
    checkpoint: Path
    global_step: int
    loss: float
    benchmark: dict | None = None  # --benchmark: img/s, step times, data wait, memory, TFLOP/s, MFU


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_output_dir(cfg: Config, resume: str | None, overwrite: bool) -> tuple[Path, Path | None, list[Path]]:
    """The run folder, the checkpoint to resume from (None for a fresh run), and, with ``overwrite``, the old
    run's files, which the caller deletes only once the new run is ready to write."""
    if resume not in (None, "auto"):
        ckpt = Path(resume)
        out = Path(cfg.output_dir) if cfg.output_dir else ckpt.parent
        load_checkpoint(ckpt)  # fail early, in one line, on a bad path
        return out, ckpt, []
    if cfg.output_dir is None:
        if resume == "auto":
            raise ConfigError("--resume auto needs --output: the run folder to continue")
        out = Path("runs") / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        out = Path(cfg.output_dir)
    existing = list_checkpoints(out) + [out / f for f in RUN_FILES if (out / f).exists()]
    if resume == "auto":
        found = latest_valid_checkpoint(out)
        return out, (found[0] if found else None), []
    if existing and not overwrite:
        raise ConfigError(f"output folder {out} already holds a run; pass --resume auto to continue it or --overwrite")
    return out, None, existing


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
             init: str | None = None, timer: StepTimer | None = None) -> RunResult:
    """Pre-train; under torchrun / srun (or ``train.distributed``) each process runs this with its shard."""
    info = init_distributed(cfg.train, resolve_device(cfg.train.device))
    try:
        result = _pretrain(cfg, info, resume, overwrite, progress, init, timer)
    except BaseException:
        cleanup(info)
        raise
    cleanup(info, wait=True)  # all ranks leave together: none tears down its links while rank 0 still works
    return result


def _pretrain(cfg: Config, info: DistInfo, resume: str | None, overwrite: bool, progress: bool,
              init: str | None, timer: StepTimer | None) -> RunResult:
    t = cfg.train
    main = info.is_main
    out, resume_path, stale = broadcast_object(prepare_output_dir(cfg, resume, overwrite))  # rank 0's folder
    barrier()  # every rank has checked the folder before rank 0 writes into it
    cfg.output_dir = str(out)
    device = info.device
    configure_backends(device, t.tf32)
    if timer is not None:
        timer.device = device
    seed_everything(t.seed)

    # data
    source = image_source(cfg)
    loader = pretrain_loader(cfg, source, info.rank, info.world_size, pin_memory=device.type == "cuda")
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
    ckpt = load_checkpoint(resume_path, map_location=device) if resume_path is not None else None
    init_info = {}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    elif init is not None:  # --init: weights only (any known format), fresh optimiser
        from ..interop.load import init_from

        init_info = init_from(model, init)
    wrapped = wrap_model(model, info, t.precision)  # DDP wrapper, or FSDP shards ``model`` in place
    forward = maybe_compile(wrapped, t.compile)  # checkpoints keep using ``model``
    lr = effective_lr(t, info.world_size)
    opt = build_optimizer(model, t, lr)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    sched = build_scheduler(opt, t, lr, steps_per_epoch, total_steps)
    scaler = grad_scaler(info, enabled=t.precision == "fp16")
    mask_gen = torch.Generator(device).manual_seed(t.seed)
    epoch, batch_in_epoch, global_step = 0, 0, 0

    if ckpt is not None:
        load_optimizer_state(model, opt, ckpt["optimizer"], info)
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], mask_gen)
        epoch, batch_in_epoch, global_step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"]
        del ckpt

    for path in stale if main else ():  # --overwrite: the old run goes only now that the new one is ready
        path.unlink(missing_ok=True)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log = JsonlLog(out / "log.jsonl") if main else _NoLog()
    if resume_path is None:
        log.write(type="start", lr=lr, steps_per_epoch=steps_per_epoch, images=len(source), data=str(source.root),
                  params=sum(p.numel() for p in model.parameters() if p.requires_grad), world_size=info.world_size,
                  global_batch=t.batch_size * t.accum_iter * info.world_size, **init_info)
    else:
        log.write(type="resume", checkpoint=str(resume_path), global_step=global_step)

    def save() -> Path:  # every rank calls it; rank 0 writes (FSDP: all ranks gather, or write their shards)
        path = out / checkpoint_name(global_step)
        meta = {
            "format": FORMAT, "version": FORMAT_VERSION, "method": cfg.method, "config": cfg.to_dict(),
            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(mask_gen),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
        }
        if info.mode == "fsdp" and t.fsdp_checkpoint == "sharded":
            path = path.with_suffix(".dcp")
            save_sharded(meta, model, opt, path, info)
        else:
            state = {"model": model_state(model, info), "optimizer": optimizer_state(model, opt, info)}
            if main:
                save_atomic({**meta, **state}, path)
        if main:
            prune_checkpoints(out, t.keep_last)
        barrier()  # no rank runs ahead of (or exits before) rank 0's write
        return path

    bar = tqdm(total=total_steps, initial=global_step, unit="step", disable=not (progress and main),
               dynamic_ncols=True)
    model.train()
    if timer is not None:
        timer.begin()
    last_ckpt, last_loss, stopped = None, float("nan"), False
    while global_step < total_steps and not stopped:
        sampler.set_epoch(epoch, batch_in_epoch)
        skipped: dict[str, None] = {}  # unique unreadable files met this epoch, in order
        window: dict[str, torch.Tensor] = {}  # summed loss terms since the last log line
        window_steps, window_imgs, window_start = 0, 0, time.perf_counter()
        for imgs, _, bad in timed_batches(loader, timer):
            skipped.update(dict.fromkeys(bad))
            imgs = imgs.to(device, non_blocking=True)
            grad_sync(wrapped, (batch_in_epoch + 1) % t.accum_iter == 0)  # all-reduce on the last micro-batch only
            with autocast(device, t.precision):
                step_out = forward(imgs, **mask_args(model, imgs.shape[0], mask_gen, info))
            scaler.scale(step_out.loss / t.accum_iter).backward()
            for name, value in step_out.terms.items():
                window[name] = window.get(name, 0) + value.detach().float() / t.accum_iter
            window_imgs += imgs.shape[0]
            batch_in_epoch += 1
            if batch_in_epoch % t.accum_iter:
                continue
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            global_step += 1
            window_steps += 1
            if timer is not None:
                timer.end(imgs.shape[0] * t.accum_iter)
            bar.update(1)
            stopped = t.stop_after_steps is not None and global_step >= t.stop_after_steps
            done = global_step >= total_steps
            if global_step % t.log_every == 0 or batch_in_epoch == sampler.batches_per_epoch or stopped or done:
                # the one host sync per window; the mean over ranks is the global batch's loss
                terms = {k: all_reduce_mean(v).item() / window_steps for k, v in window.items()}
                last_loss = terms["loss"]
                speed = window_imgs * info.world_size / (time.perf_counter() - window_start)
                current_lr = opt.param_groups[0]["lr"]
                log.write(type="train", step=global_step, epoch=epoch, **terms, lr=current_lr, img_per_s=speed)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{current_lr:.2e}", img_s=f"{speed:.0f}", refresh=False)
                window = {}
                window_steps, window_imgs, window_start = 0, 0, time.perf_counter()
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
    if last_ckpt is None:  # resumed a finished run
        last_ckpt = save()

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
    log.write(type="end", global_step=global_step, epoch=epoch, checkpoint=str(last_ckpt), loss=last_loss)
    return RunResult(out, last_ckpt, global_step, last_loss, report)
