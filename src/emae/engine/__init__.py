"""The training engine: the one loop and its hooks, optimiser and schedule, checkpoints, logging, pre-training."""

from .atomic import save_atomic
from .checkpoint import FORMAT_VERSION, latest_valid_checkpoint, list_checkpoints, load_checkpoint
from .log import JsonlLog
from .loop import Hook, Loop, Position, StepInfo, StepLoss, fit
from .optim import Schedule, build_optimizer, effective_lr, warmup_cosine
from .session import RunResult
from .trainer import PretrainOptions, pretrain
from ..records import read_log

__all__ = [
    "FORMAT_VERSION", "Hook", "JsonlLog", "Loop", "Position", "PretrainOptions", "RunResult", "Schedule",
    "StepInfo", "StepLoss", "build_optimizer", "effective_lr", "fit", "latest_valid_checkpoint", "list_checkpoints",
    "load_checkpoint", "pretrain", "read_log", "save_atomic", "warmup_cosine",
]
