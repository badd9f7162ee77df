"""The training engine: optimiser, schedule, checkpoints, logging, and the one loop."""

from .atomic import save_atomic
from .checkpoint import FORMAT_VERSION, latest_valid_checkpoint, list_checkpoints, load_checkpoint
from .log import JsonlLog, read_log
from .optim import build_optimizer, build_scheduler, effective_lr, warmup_cosine
from .trainer import RunResult, pretrain

__all__ = [
    "FORMAT_VERSION", "JsonlLog", "RunResult", "build_optimizer", "build_scheduler", "effective_lr",
    "latest_valid_checkpoint", "list_checkpoints", "load_checkpoint", "pretrain", "read_log", "save_atomic",
    "warmup_cosine",
]
