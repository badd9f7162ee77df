"""Pre-training, one loop for every method: :func:`pretrain` sets a run up (folder, data, model, optimiser,
restored state, log) and hands it to :mod:`emae.engine.loop` (epochs, steps, log lines, checkpoints, picture, end).

Exact resume: the data order is a seeded permutation per epoch, each sample's augmentation runs under its own
seed, and masks come from a dedicated generator whose state is checkpointed. So N steps straight and N/2 steps,
a stop and ``--resume`` for the rest give the same parameters bit for bit (on CPU, in fp32).
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from ..config import Config
from ..data import close_loader, image_source, pretrain_loader
from ..errors import CheckpointError, ConfigError, DataError
from ..masks import PARALLEL_MASKS, sequences_per_image
from ..models import build_model
from .atomic import check_writable, write_text_atomic
from .checkpoint import (latest_valid_checkpoint, list_checkpoints, load_checkpoint, remove_temporaries, set_rng_state,
                         state_mismatch)
from .device import resolve_device, seed_everything
from .distributed import DistInfo, any_rank, cleanup, init_distributed, on_main
from .distributed import grad_scaler, is_main, wrap_model
from .guard import NonFiniteGuard
from .loop import finish, train
from .optim import build_optimizer, build_scheduler, effective_lr
from .perf import StepTimer, configure_backends, maybe_compile
from .resume import announce, check_resume_config, truncate_log
from .run import Run, RunResult, vis_batch
from .sharded import load_optimizer_state
from .signals import StopSignals
from .tracking import RunLog
from .tracking import require as require_trackers

__all__ = ["RunResult", "pretrain", "prepare_output_dir", "vis_batch"]

RUN_FILES = ("log.jsonl", "config.yaml", "reconstruction.png", "tb", "wandb-id.txt")  # tb: TensorBoard events


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


def consistency_notes(cfg: Config, parts: int) -> list[str]:
    """A warning when the self-consistency term is on but cannot act: it compares two parts' predictions on the
    patches masked in both, and with K = 2 parts (mask ratio 0.5) every patch is visible in one of the two."""
    if cfg.mask.type in PARALLEL_MASKS and cfg.consistency.enabled and cfg.consistency.weight and parts < 3:
        return [f"warning: consistency.weight={cfg.consistency.weight:g} has no effect with K = {parts} parts "
                f"(mask.ratio={cfg.mask.ratio:g}): no patch is masked in two parts, so the term is always 0"]
    return []


def _check_resume(cfg: Config, path: Path, ckpt: dict, world_size: int, force: bool) -> None:
    changes = check_resume_config(cfg, ckpt, path, world_size, force)
    if is_main():
        announce(path, ckpt, changes, force)


def start_line(cfg: Config, out: Path, images: int, steps_per_epoch: int, total_steps: int, global_batch: int,
               lr: float, device: torch.device) -> str:
    """The line a run prints as it starts: what it trains, how long, on what."""
    return (f"{cfg.method} {cfg.model.arch} on {images} images: {total_steps} steps ({steps_per_epoch} per epoch), "
            f"global batch {global_batch}, lr {lr:.3g}; {device.type}, {torch.get_num_threads()} threads; run {out}")


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
    require_trackers(cfg.train.tensorboard, cfg.train.wandb)  # a missing package: one line before any work
    out, resume_path, stale = on_main(  # rank 0 checks the folder and the checkpoint; every rank gets its answer
        prepare_output_dir, cfg, resume, overwrite, trust, force_config, info.world_size)
    cfg.output_dir = str(out)
    ckpt = load_checkpoint(resume_path, map_location=info.device, trust=trust) if resume_path is not None else None
    run, init_info = set_up(cfg, info, out, resume_path, ckpt, init, timer, progress, closing, trust)
    if ckpt is not None:
        restore(run, ckpt)
        del ckpt
    run.bar = tqdm(total=run.total_steps, initial=run.global_step, unit="step",
                   disable=not (progress and info.is_main), dynamic_ncols=True)
    open_log(run, stale, init_info)
    try:
        train(run, signals)
        run.bar.close()
        return finish(run, signals)
    finally:
        run.bar.close()
        run.log.close()  # flushes the event files, also when the run fails


# ---------------------------------------------------------------- set up


def set_up(cfg: Config, info: DistInfo, out: Path, resume_path: Path | None, ckpt: dict | None, init: str | None,
           timer: StepTimer | None, progress: bool, closing: ExitStack, trust: bool) -> tuple[Run, dict]:
    """Data, model (with the checkpoint's weights, or ``init``'s), optimiser, schedule, scaler, mask generator.
    The loader's workers are shut down by ``closing``, on every way out of the run."""
    t, device = cfg.train, info.device
    configure_backends(device, t.tf32, t.threads)
    if timer is not None:
        timer.device = device
    seed_everything(t.seed)

    source = image_source(cfg, progress=progress and info.is_main)
    loader = pretrain_loader(cfg, source, info.rank, info.world_size, pin_memory=device.type == "cuda",
                             device=device)  # issue 25: device= lets data.device_prefetch prepare batches ahead
    closing.callback(close_loader, loader)
    steps_per_epoch = loader.sampler.batches_per_epoch // t.accum_iter
    if steps_per_epoch == 0:
        raise DataError(
            f"data: {len(source)} images give no full step of train.batch_size {t.batch_size}"
            f" x train.accum_iter {t.accum_iter}; lower the batch size"
        )
    loader.sampler.batches_per_epoch = steps_per_epoch * t.accum_iter  # drop a trailing partial accumulation

    model = build_model(cfg).to(device)
    model.set_grad_checkpointing(t.activation_checkpointing)
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
    per_image = sequences_per_image(cfg.mask.type, cfg.mask.ratio)
    lr = effective_lr(t, info.world_size, per_image)
    opt = build_optimizer(model, t, lr)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    run = Run(
        cfg=cfg, info=info, out=out, resume_path=resume_path, source=source, loader=loader,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps, model=model, wrapped=wrapped,
        forward=maybe_compile(wrapped, t.compile),  # checkpoints keep using ``model``
        opt=opt, sched=build_scheduler(opt, t, lr, steps_per_epoch, total_steps),
        scaler=grad_scaler(info, enabled=t.precision == "fp16"), mask_gen=torch.Generator(device).manual_seed(t.seed),
        guard=NonFiniteGuard(t.max_bad_steps, reduce=any_rank),  # every rank skips the same steps
        lr=lr, timer=timer, last_good=resume_path,
    )
    return run, {**init_info, "sequences_per_image": per_image}


def restore(run: Run, ckpt: dict) -> None:
    """Optimiser, schedule, scaler, mask generator, position in the data and the guard's count, from ``ckpt``."""
    try:
        load_optimizer_state(run.model, run.opt, ckpt["optimizer"], run.info)
        run.sched.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], run.mask_gen)
        run.epoch, run.batch_in_epoch, run.global_step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"]
    except (KeyError, RuntimeError, ValueError, TypeError) as e:  # weights only, or another model's
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {run.resume_path} cannot resume this run ({type(e).__name__}: {first})") \
            from None
    run.guard.load_state_dict(ckpt.get("guard", {}))
    run.last_good = run.resume_path if run.guard.consecutive == 0 else None


def open_log(run: Run, stale: list[Path], init_info: dict) -> None:
    """Rank 0 clears an overwritten run's files, writes config.yaml and opens the log (log.jsonl, TensorBoard,
    W&B): a start record for a fresh run, a resume record otherwise."""
    cfg, t, main, out = run.cfg, run.cfg.train, run.info.is_main, run.out
    for path in stale if main else ():  # --overwrite: the old run goes only now that the new one is ready
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)  # half-written checkpoints of a killed run
        write_text_atomic(yaml.safe_dump(cfg.to_dict(), sort_keys=False), out / "config.yaml")
    own_log = main and run.resume_path is not None and run.resume_path.parent.resolve() == out.resolve()
    if own_log:  # no step logged twice (TensorBoard purges its own copy of them: resume_step)
        last_logged = truncate_log(out / "log.jsonl", run.global_step)
        run.last_loss = math.nan if last_logged is None else last_logged
    run.log = RunLog(out, enabled=main, tensorboard=t.tensorboard, wandb=t.wandb, wandb_project=t.wandb_project,
                     wandb_name=t.wandb_name, config=cfg.to_dict(),
                     resume_step=None if run.resume_path is None else run.global_step)
    warmup_steps = t.warmup_epochs * run.steps_per_epoch
    global_batch = t.batch_size * t.accum_iter * run.info.world_size
    per_image = init_info.pop("sequences_per_image")
    machine = {"threads": torch.get_num_threads(), "device": str(run.info.device)}
    if run.resume_path is not None:
        run.log.write(type="resume", checkpoint=str(run.resume_path), global_step=run.global_step, **machine)
    else:
        run.log.write(type="start", lr=run.lr, steps_per_epoch=run.steps_per_epoch, images=len(run.source),
                      data=str(run.source.root),
                      params=sum(p.numel() for p in run.model.parameters() if p.requires_grad),
                      world_size=run.info.world_size, global_batch=global_batch,
                      sequences_per_step=global_batch * per_image, lr_batch_unit=t.lr_batch_unit,
                      total_steps=run.total_steps, warmup_steps=warmup_steps,
                      warmup_fraction=min(1.0, warmup_steps / run.total_steps), **machine, **init_info)
    if main:
        print(start_line(cfg, out, len(run.source), run.steps_per_epoch, run.total_steps, global_batch, run.lr,
                         run.info.device), flush=True)
        notes = warmup_notes(t, warmup_steps, run.total_steps) + consistency_notes(cfg, per_image)
        for line in notes if run.resume_path is None else ():
            run.bar.write(line)
