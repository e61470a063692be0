"""Training machinery: the loop, atomic checkpoints and torchrun/DDP plumbing."""

from __future__ import annotations

from .checkpoint import ema_state_dict, load_checkpoint, save_checkpoint
from .distributed import DistributedInfo, current_distributed, setup_distributed, teardown_distributed
from .trainer import StepInfo, TrainResult, batch_indices, train, warmup_factor

__all__ = [
    "train",
    "TrainResult",
    "StepInfo",
    "warmup_factor",
    "batch_indices",
    "save_checkpoint",
    "load_checkpoint",
    "ema_state_dict",
    "DistributedInfo",
    "setup_distributed",
    "teardown_distributed",
    "current_distributed",
]
