"""Multi-process training on PyTorch's own engine: torchrun or SLURM environments, DDP and FSDP (FSDP2).

Every helper here is a no-op (or the obvious single-process answer) when no process group is running, so the
training loop calls them unconditionally.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError, EmaeError
from ..masks import Mask


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    mode: str = "none"  # none | ddp | fsdp
    owns_group: bool = False  # this process started the group, so it also ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str) -> int | None:
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-005,009],cpu1`` -> ``gpu003``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ConfigError(f"SLURM_JOB_NODELIST: cannot read {nodelist!r}; set MASTER_ADDR to the first node's name")
    prefix, ranges = m.group(1), m.group(2)
    return prefix + re.split(r"[-,]", ranges)[0] if ranges else prefix


def env_layout() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's variables, else from srun's (SLURM_PROCID ...), else 0, 0, 1."""
    if _env_int("RANK") is not None and _env_int("WORLD_SIZE") is not None:
        return _env_int("RANK"), _env_int("LOCAL_RANK") or 0, _env_int("WORLD_SIZE")
    if _env_int("SLURM_PROCID") is not None and _env_int("SLURM_STEP_NUM_TASKS") is not None:  # set by srun only
        return _env_int("SLURM_PROCID"), _env_int("SLURM_LOCALID") or 0, _env_int("SLURM_STEP_NUM_TASKS")
    return 0, 0, 1


def _rendezvous_env() -> None:
    """MASTER_ADDR / MASTER_PORT for ``env://``: torchrun sets them; under srun they come from the node list."""
    if "MASTER_ADDR" not in os.environ:
        if not os.environ.get("SLURM_JOB_NODELIST"):
            raise ConfigError("MASTER_ADDR is not set: launch with torchrun or srun, or export MASTER_ADDR/PORT")
        os.environ["MASTER_ADDR"] = first_host(os.environ["SLURM_JOB_NODELIST"])
    if "MASTER_PORT" not in os.environ:
        job = _env_int("SLURM_JOB_ID")
        if job is None:
            raise ConfigError("MASTER_PORT is not set: launch with torchrun, or srun, or export MASTER_PORT")
        os.environ["MASTER_PORT"] = str(20000 + job % 20000)


def resolve_mode(t: TrainConfig, world_size: int) -> str:
    if t.distributed == "auto":
        return "ddp" if world_size > 1 else "none"
    if t.distributed == "none" and world_size > 1:
        raise ConfigError(f"train.distributed: 'none' but {world_size} processes were launched; use auto, ddp or fsdp")
    return t.distributed


def init_distributed(t: TrainConfig, device: torch.device) -> DistInfo:
    """Join (or start) the process group the launcher describes; picks this process's device (cuda:LOCAL_RANK)."""
    rank, local_rank, world_size = env_layout()
    if _on():  # the caller started the group
        rank, world_size = dist.get_rank(), dist.get_world_size()
    mode = resolve_mode(t, world_size)
    if mode == "none":
        return DistInfo(device=device)
    if device.type == "cuda":
        if device.index not in (None, local_rank) and world_size > 1:
            raise ConfigError(f"train.device: {str(device)!r} with {world_size} processes; use cuda or auto "
                              "(each process takes cuda:LOCAL_RANK)")
        # srun --gpus-per-task shows each task one GPU (cuda:0) whatever its local id
        device = torch.device("cuda", local_rank % torch.cuda.device_count() if world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    backend = t.dist_backend if t.dist_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("train.dist_backend: 'nccl' needs CUDA devices; use gloo (or auto) on CPU")
    if not dist.is_available() or (backend == "gloo" and not dist.is_gloo_available()):
        raise ConfigError(f"train.distributed: {mode!r} needs torch.distributed with the {backend} backend")
    owns = not dist.is_initialized()
    if owns:
        if world_size == 1 and "MASTER_ADDR" not in os.environ:  # a group of one, e.g. FSDP on one GPU
            rendezvous = {"store": dist.HashStore()}
        else:
            _rendezvous_env()
            rendezvous = {"init_method": "env://"}
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                device_id=device if device.type == "cuda" else None, **rendezvous)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), device, mode, owns)


_ENDED = False  # this process ended a group it had started


def cleanup(info: DistInfo, wait: bool = False) -> None:
    """End the group this process started; ``wait``: after every rank has got here. The finished run's wrapped
    model (FSDP's DTensors and device mesh hold the group, in reference cycles) is collected first, while the group
    still works, rather than at interpreter exit."""
    global _ENDED
    if info.owns_group and dist.is_initialized():
        gc.collect()
        if wait:
            dist.barrier()
        dist.destroy_process_group()
        _ENDED = True


def ended_group() -> bool:
    """Whether this process started and then ended a process group (the CLI then exits without teardown)."""
    return _ENDED


def _on() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """Rank 0 (also before the group starts and after it ends: read from the launcher's environment)."""
    return dist.get_rank() == 0 if _on() else env_layout()[0] == 0


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if _on():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (a new tensor; ``x`` itself on one process)."""
    if not _on():
        return x
    y = x.detach().to(_device(), torch.float32).clone()
    dist.all_reduce(y)
    return (y / dist.get_world_size()).to(x.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: for decisions (stop, skip a step) all ranks must share."""
    if not _on():
        return bool(flag)
    y = torch.tensor([float(flag)], device=_device())
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    return bool(y.item())


def on_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` run by rank 0 alone, its result given to every rank. For checks that touch shared
    files (two ranks probing one new folder remove it under each other). An :class:`EmaeError` raised there is
    raised on every rank with the same message, so no rank waits for a peer that has already left."""
    if not _on():
        return fn(*args, **kwargs)
    box = [(None, None)]
    if dist.get_rank() == 0:
        try:
            box = [(fn(*args, **kwargs), None)]
        except EmaeError as e:
            box = [(None, e)]
    dist.broadcast_object_list(box, src=0)
    result, error = box[0]
    if error is not None:
        raise error
    return result


# ---------------------------------------------------------------- masks: one global draw, sliced per rank


def rank_mask(model: nn.Module, batch: int, generator: torch.Generator, info: DistInfo) -> Mask:
    """This rank's rows of the mask a single process would draw for the whole global batch.

    Rank r holds global batch positions r, r + W, r + 2W, ... (the sampler interleaves), so every rank draws
    the global mask from the same generator and keeps those images' rows: masks equal the 1-process run's."""
    full = model.make_mask(batch * info.world_size, generator=generator, device=generator.device)
    n = full.mask.shape[0]
    images = torch.arange(batch, device=full.mask.device) * info.world_size + info.rank
    rows = (images[:, None] * full.parts + torch.arange(full.parts, device=images.device)).flatten()
    sliced = {f.name: getattr(full, f.name)[rows] for f in dataclasses.fields(full)
              if torch.is_tensor(getattr(full, f.name)) and getattr(full, f.name).shape[:1] == (n,)}
    return dataclasses.replace(full, **sliced)  # every per-sequence tensor, whatever the mask type adds


def mask_args(model: nn.Module, batch: int, generator: torch.Generator, info: DistInfo) -> dict:
    """Keyword arguments of the training forward that set its mask."""
    if info.world_size == 1:
        return {"generator": generator}
    return {"mask": rank_mask(model, batch, generator, info)}


# ---------------------------------------------------------------- wrapping


def wrap_model(model: nn.Module, info: DistInfo, precision: str) -> nn.Module:
    """DDP: a wrapper to call (``model`` stays the plain module). FSDP: ``model`` is sharded in place, one unit
    per Transformer block plus the root, with a bf16/fp16 parameter policy for mixed precision."""
    if info.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if info.mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # MaskedAutoencoder returns views (pred[:, 1:]); nothing modifies them in place, so FSDP's warning is moot
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        policy = MixedPrecisionPolicy()
        if precision in ("bf16", "fp16"):
            low = torch.bfloat16 if precision == "bf16" else torch.float16
            policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
        block_lists = [m.blocks for m in model.modules() if isinstance(getattr(m, "blocks", None), nn.ModuleList)]
        for blocks in block_lists:  # ViT encoder and decoder; each stage of a Swin / PVT encoder
            for block in blocks:
                fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
    return model


def grad_scaler(info: DistInfo, enabled: bool) -> torch.amp.GradScaler:
    """fp16's loss scaler; under FSDP the sharded one, which agrees on skipping a step across ranks."""
    if info.mode == "fsdp":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(info.device.type, enabled=enabled)
    return torch.amp.GradScaler(info.device.type, enabled=enabled)


def grad_sync(wrapped: nn.Module, enabled: bool) -> None:
    """Gradient all-reduce on or off for the next backward: off for micro-batches inside an accumulation."""
    if hasattr(wrapped, "require_backward_grad_sync"):  # DDP (what its no_sync() context toggles)
        wrapped.require_backward_grad_sync = enabled
    elif hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(enabled)
