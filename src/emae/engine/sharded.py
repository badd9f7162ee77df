"""Model and optimiser state under FSDP: gathered ("full") state dicts in the plain single-process format, and
sharded checkpoints (``checkpoint-N.dcp/``: torch.distributed.checkpoint shards + ``meta.pt``) that load, gathered,
into one process.

Full optimiser states are stored as ``torch.optim.Optimizer.state_dict()`` stores them (parameters numbered in
group order), so every checkpoint resumes with or without FSDP, on any number of processes.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .atomic import fsync_dir, save_atomic
from .distributed import DistInfo, barrier
from .safe_load import check_pickle, torch_load

META = "meta.pt"


def _full():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _by_index(osd: dict) -> dict:
    """Optimiser state keyed by parameter name (torch.distributed's format) -> keyed by number (the plain one)."""
    ids = {name: i for i, name in enumerate(n for g in osd["param_groups"] for n in g["params"])}
    return {"state": {ids[k]: v for k, v in osd["state"].items()},
            "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]]}


def _by_name(osd: dict, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    return {"state": {order[i]: v for i, v in osd["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in osd["param_groups"]]}


def model_state(model: nn.Module, info: DistInfo) -> dict:
    """The plain (unsharded, unwrapped) state dict; under FSDP gathered to rank 0 (others get {}): all ranks call."""
    if info.mode != "fsdp":
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full())


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, info: DistInfo) -> dict:
    """As :func:`model_state`, for the optimiser, in ``Optimizer.state_dict()``'s format."""
    if info.mode != "fsdp":
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt, options=_full())
    return _by_index(osd) if osd else {}


def plain_model(model: nn.Module, cfg, info: DistInfo) -> nn.Module | None:
    """``model`` itself, or under FSDP a fresh unsharded copy on rank 0 (None elsewhere): all ranks call."""
    if info.mode != "fsdp":
        return model
    state = model_state(model, info)
    if not info.is_main:
        return None
    from ..models import build_model

    copy = build_model(cfg)
    copy.load_state_dict(state)
    return copy.to(info.device)


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, osd: dict, info: DistInfo) -> None:
    """Load a full (plain-format) optimiser state; under FSDP every rank keeps its shard."""
    if info.mode != "fsdp":
        opt.load_state_dict(osd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, _by_name(osd, model, opt), options=StateDictOptions(full_state_dict=True))


def save_sharded(meta: dict, model: nn.Module, opt: torch.optim.Optimizer, path: Path, info: DistInfo) -> None:
    """Every rank writes its shards into a temporary folder; rank 0 adds ``meta.pt`` and renames it to ``path``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    tmp = path.with_name(f".{path.name}.tmp")
    if info.is_main and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, opt)}
    dcp.save(state, checkpoint_id=str(tmp))
    if info.is_main:
        save_atomic(meta, tmp / META)  # fsynced, like a plain checkpoint
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    barrier()


def is_sharded(path: Path) -> bool:
    return path.is_dir() and (path / META).is_file() and (path / ".metadata").is_file()


def load_meta(path: Path, trust: bool = False) -> dict:
    """A sharded checkpoint's ``meta.pt``: everything but the model and optimiser."""
    return torch_load(path / META, "cpu", trust)


_DCP_METADATA = ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                 "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")


def _dcp_global(module: str, name: str) -> bool:
    """The types a torch.distributed.checkpoint ``.metadata`` pickle holds (it is read with plain pickle)."""
    return ((module == "torch.distributed.checkpoint.metadata" and name in _DCP_METADATA)
            or (module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo")
            or (module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)))
            or (module, name) in {("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                                  ("pathlib", "WindowsPath"), ("collections", "OrderedDict")})


def _gather(path: Path, trust: bool) -> dict:
    """All shards in this process. torch.distributed.checkpoint unpickles the metadata and non-tensor items in full,
    so unless trusted they are first proven harmless: the metadata by a restricted unpickler, items weights-only."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict  # as dcp_to_torch_save does

    class SafeItems(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            raw = value.read()
            if not trust:
                torch_load(io.BytesIO(raw), "cpu")  # UnsafeCheckpointError before the full unpickle below
            super().load_bytes(read_item, io.BytesIO(raw))

    if not trust:
        check_pickle(path / ".metadata", _dcp_global)
    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(str(path)), planner=SafeItems(), no_dist=True)
    return state


def load_sharded(path: Path, trust: bool = False) -> dict:
    """A sharded checkpoint gathered into one process: the same dict a full checkpoint holds."""
    ckpt = load_meta(path, trust)
    state = _gather(path, trust)
    ckpt["model"] = state["model"]
    ckpt["optimizer"] = _by_index(state["optimizer"])
    return ckpt


def consolidate(path: str | Path, output: str | Path, trust: bool = False) -> Path:
    """Write a sharded checkpoint folder as one ordinary ``.pt`` checkpoint file."""
    save_atomic(load_sharded(Path(path), trust), output)
    return Path(output)
