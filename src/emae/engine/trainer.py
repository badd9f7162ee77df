"""Pre-training, every method through the one loop: :func:`pretrain` sets a run up (folder, data, model, optimiser,
restored state, log), hands it to :func:`emae.engine.loop.fit` with its hooks, and reports the end.

Exact resume: the data order is a seeded permutation per epoch, each sample's augmentation runs under its own
seed, and masks come from a dedicated generator whose state is checkpointed. So N steps straight and N/2 steps,
a stop and ``--resume`` for the rest give the same parameters bit for bit (on CPU, in fp32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import Config
from ..data import batch_to_device, close_loader, image_source, pretrain_loader
from ..errors import CheckpointError, DataError
from ..masks import PARALLEL_MASKS, sequences_per_image
from ..models import MaskedAutoencoder, build_model
from .checkpoint import load_checkpoint, state_mismatch
from .checkpointing import restore
from .device import resolve_device, seed_everything
from .distributed import DistInfo, cleanup, init_distributed, mask_args, on_main, wrap_model
from .hooks import SkippedFilesHook
from .loop import Hook, StepLoss, fit
from .monitor import MonitorHook
from .optim import build_optimizer, effective_lr
from .perf import configure_backends, maybe_compile
from .pictures import PictureHook
from .precision import MasterWeights
from .session import LoopParts, RunResult, default_run_dir, finish, make_loop, open_run_log, prepare_output_dir
from .signals import StopSignals
from .tracking import require as require_trackers

__all__ = ["PretrainOptions", "RunResult", "pretrain"]

RUN_FILES = ("log.jsonl", "config.yaml", "reconstruction.png", "tb", "wandb-id.txt")
Initialiser = Callable[[MaskedAutoencoder], dict]  # --init: copies weights into the model, returns a log summary


@dataclass
class PretrainOptions:
    resume: str | None = None  # a checkpoint, or "auto": the newest valid one in cfg.output_dir (else a fresh run)
    overwrite: bool = False
    progress: bool = True
    init: Initialiser | None = None  # start from other weights (resolved above the engine: emae.interop.init_from)
    trust: bool = False  # unpickle checkpoints in full (can run code from them)
    force_config: bool = False  # resume although the config changes keys a resumed run keeps
    hooks: Sequence[Hook] = field(default_factory=tuple)  # extra loop hooks (benchmarks: a StepTimer), run early


def pretrain(cfg: Config, resume: str | None = None, overwrite: bool = False, progress: bool = True,
             init: Initialiser | None = None, trust: bool = False, force_config: bool = False,
             hooks: Sequence[Hook] = ()) -> RunResult:
    """Pre-train; under torchrun / srun (or ``train.distributed``) each process runs this with its shard.
    SIGTERM / SIGINT stop it after the current step with a checkpoint. ``resume``: a checkpoint, or "auto";
    ``cfg`` must match its config except where a run may change (:mod:`emae.engine.resume`) unless
    ``force_config``. Whatever ends the run, its loader workers are shut down before this returns or raises."""
    opts = PretrainOptions(resume, overwrite, progress, init, trust, force_config, hooks)
    info = init_distributed(cfg.train, resolve_device(cfg.train.device))
    try:
        with StopSignals() as signals, ExitStack() as closing:
            result = run_pretraining(cfg, info, opts, signals, closing)
    except BaseException:
        cleanup(info)
        raise
    cleanup(info, wait=True)  # all ranks leave together: none tears down its links while rank 0 still works
    return result


def run_pretraining(cfg: Config, info: DistInfo, opts: PretrainOptions, signals: StopSignals,
                    closing: ExitStack) -> RunResult:
    t = cfg.train
    require_trackers(t.tensorboard, t.wandb)  # a missing package: one line before any work
    out, resume_path, stale = on_main(  # rank 0 checks the folder and the checkpoint; every rank gets its answer
        prepare_output_dir, cfg, default_run_dir(cfg.method), opts.resume, opts.overwrite, opts.trust,
        opts.force_config, info.world_size, RUN_FILES)
    cfg.output_dir = str(out)
    ckpt = load_checkpoint(resume_path, map_location=info.device, trust=opts.trust) if resume_path else None
    configure_backends(info.device, t.tf32, t.threads)
    seed_everything(t.seed)

    source = image_source(cfg, progress=opts.progress and info.is_main)
    loader = pretrain_loader(cfg, source, info.rank, info.world_size, pin_memory=info.device.type == "cuda",
                             device=info.device)  # data.device_prefetch prepares batches ahead on it
    closing.callback(close_loader, loader)
    steps_per_epoch = loader.sampler.batches_per_epoch // t.accum_iter
    if steps_per_epoch == 0:
        raise DataError(f"data: {len(source)} images give no full step of train.batch_size {t.batch_size}"
                        f" x train.accum_iter {t.accum_iter}; lower the batch size")
    loader.sampler.batches_per_epoch = steps_per_epoch * t.accum_iter  # drop a trailing partial accumulation

    model = build_model(cfg).to(info.device)
    model.set_grad_checkpointing(t.activation_checkpointing)
    init_info = load_weights(model, ckpt, resume_path, opts.init)
    model.set_fused_norm(t.fused_norm)
    masters = MasterWeights(model) if t.bf16_params else None  # bf16 weights, before a wrapper registers them
    wrapped = wrap_model(model, info, t.precision)  # DDP wrapper, or FSDP shards ``model`` in place
    forward = maybe_compile(wrapped, t.compile, t.compile_mode)  # checkpoints keep using ``model``
    per_image = sequences_per_image(cfg.mask.type, cfg.mask.ratio)
    lr = effective_lr(t, info.world_size, per_image)
    mask_gen = torch.Generator(info.device).manual_seed(t.seed)
    bar = tqdm(total=t.max_steps or t.epochs * steps_per_epoch, unit="step",
               disable=not (opts.progress and info.is_main), dynamic_ncols=True)
    skipped = SkippedFilesHook(bar)

    def step_loss(imgs: torch.Tensor) -> StepLoss:
        out = forward(imgs, **mask_args(model, imgs.shape[0], mask_gen, info))
        return StepLoss(out.loss, out.terms, imgs.shape[0])

    def to_device(batch) -> torch.Tensor:
        imgs, _, bad = batch
        imgs, undecodable = batch_to_device(imgs, cfg, info.device)
        skipped.note(bad + undecodable)
        return imgs

    def optimizer(m: MaskedAutoencoder) -> torch.optim.Optimizer:
        return build_optimizer(m, t, lr)

    opt = masters.optimizer(optimizer, model) if masters is not None else optimizer(model)  # AdamW of fp32 masters
    parts = LoopParts(model, wrapped, step_loss, to_device, opt, lr, loader, loader.sampler, steps_per_epoch)
    meta = {"command": "pretrain", "method": cfg.method, "config": cfg.to_dict()}
    late = [PictureHook(cfg, source, info), skipped, *monitor_hooks(cfg, info, opts.progress)]
    loop = make_loop(parts, t, info, out, None, signals, meta, bar, early=list(opts.hooks), late=late,
                     generators={"mask": mask_gen}, sharded=info.mode == "fsdp" and t.fsdp_checkpoint == "sharded")
    if ckpt is not None:
        restore(loop, ckpt, resume_path, generators={"mask": mask_gen})
        del ckpt
    bar.update(loop.pos.step)
    loop.log, last_loss = open_run_log(out, cfg.to_dict(), t, resume_path, loop.pos.step, stale, info.is_main)
    try:
        write_start(loop, cfg, source, lr, per_image, init_info, resume_path, bar)
        fit(loop)
        return finish(loop, signals, last_loss, resume_path)
    finally:
        bar.close()
        loop.log.close()  # flushes the event files, also when the run fails


def load_weights(model: MaskedAutoencoder, ckpt: dict | None, path: Path | None, init: Initialiser | None) -> dict:
    """The resumed checkpoint's weights, or ``init``'s (weights only, fresh optimiser); a log summary."""
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except (KeyError, RuntimeError) as e:  # weights only, or another model's
            raise CheckpointError(f"checkpoint {path} cannot resume this run ({state_mismatch(model, ckpt, e)})") \
                from None
        return {}
    return init(model) if init is not None else {}


def monitor_hooks(cfg: Config, info: DistInfo, progress: bool) -> list[Hook]:
    return [MonitorHook(cfg, info, progress)] if cfg.train.monitor.data else []


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


def start_line(cfg: Config, out: Path, images: int, steps_per_epoch: int, total_steps: int, global_batch: int,
               lr: float, device: torch.device) -> str:
    """The line a run prints as it starts: what it trains, how long, on what."""
    return (f"{cfg.method} {cfg.model.arch} on {images} images: {total_steps} steps ({steps_per_epoch} per epoch), "
            f"global batch {global_batch}, lr {lr:.3g}; {device.type}, {torch.get_num_threads()} threads; run {out}")


def write_start(loop, cfg: Config, source, lr: float, per_image: int, init_info: dict, resume_path: Path | None,
                bar: tqdm) -> None:
    """The start record of a fresh run (a resume record otherwise), the start line and the warmup notes."""
    t, info = cfg.train, loop.info
    warmup_steps = t.warmup_epochs * loop.steps_per_epoch
    global_batch = t.batch_size * t.accum_iter * info.world_size
    machine = {"threads": torch.get_num_threads(), "device": str(info.device)}
    if resume_path is not None:
        loop.log.write(type="resume", checkpoint=str(resume_path), global_step=loop.pos.step, **machine)
    else:
        loop.log.write(type="start", lr=lr, steps_per_epoch=loop.steps_per_epoch, images=len(source),
                       data=str(source.root), params=sum(p.numel() for p in loop.model.parameters() if p.requires_grad),
                       world_size=info.world_size, global_batch=global_batch,
                       sequences_per_step=global_batch * per_image,
                       lr_batch_unit=t.lr_batch_unit, total_steps=loop.total_steps, warmup_steps=warmup_steps,
                       warmup_fraction=min(1.0, warmup_steps / loop.total_steps), sequences_per_image=per_image,
                       **machine, **init_info)
    if info.is_main:
        print(start_line(cfg, loop.out, len(source), loop.steps_per_epoch, loop.total_steps, global_batch, lr,
                         info.device), flush=True)
        for line in (warmup_notes(t, warmup_steps, loop.total_steps) + consistency_notes(cfg, per_image)
                     if resume_path is None else ()):
            bar.write(line)
