"""torch.distributed plumbing for torchrun: join the process group, shard the data, average across ranks.

The same script runs on one CPU, one GPU or many: `torchrun --nproc_per_node=N script.py` sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (torchrun's contract); a plain `python script.py`
sets none of them and runs as a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistributedInfo",
    "setup_distributed",
    "teardown_distributed",
    "current_distributed",
    "shard",
    "mean_over_ranks",
    "range_over_ranks",
]


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands: its rank among world_size processes, its local rank on the node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer (torchrun sets it), got {value!r}.") from None


# The device that setup_distributed chose (None before it runs and after teardown_distributed): the default
# device of current_distributed, so that setup_distributed("cpu") then train(device=None) trains on the CPU in
# one process as it does under torchrun with gloo.
_chosen_device: torch.device | None = None


def _default_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def setup_distributed(device: str | torch.device | None = None) -> DistributedInfo:
    """Join the process group that torchrun describes ('nccl' on CUDA, else 'gloo'); a single process otherwise.

    Reads RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 it calls init_process_group (env://
    rendezvous through MASTER_ADDR and MASTER_PORT) and selects the GPU LOCAL_RANK. Call once at the start
    of a script and `teardown_distributed()` at its end.

    Args:
        device: None (default) for the GPU LOCAL_RANK when CUDA is available, else the CPU; 'cpu' to train on
            the CPU with gloo even on a machine with GPUs; 'cuda' for the GPU LOCAL_RANK with nccl.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} are inconsistent; launch with torchrun.")
    if device is None:
        device = _default_device(local_rank)
    else:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}.") from err
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}.")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but CUDA is not available; pass device='cpu'.")
        device = torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs; "
                "use --nproc_per_node at most the number of GPUs."
            )
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    global _chosen_device
    _chosen_device = device
    return current_distributed()


def current_distributed() -> DistributedInfo:
    """This process's rank, world size, local rank and default device (rank 0 of 1 without a process group).

    The device is the one `setup_distributed` chose, if it ran (and `teardown_distributed` did not since);
    otherwise the CPU in a gloo process group (the group cannot reduce CUDA tensors), else the GPU LOCAL_RANK
    when CUDA is available. `train(device=None)` trains there.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        on_cpu = dist.get_backend() == "gloo"
    else:
        rank, world_size, on_cpu = 0, 1, False
    local_rank = _env_int("LOCAL_RANK", 0) if world_size > 1 else 0
    fallback = torch.device("cpu") if on_cpu else _default_device(local_rank)
    device = _chosen_device if _chosen_device is not None else fallback
    return DistributedInfo(rank, world_size, local_rank, device)


def teardown_distributed() -> None:
    """Leave the process group, if one was joined, and forget the device `setup_distributed` chose."""
    global _chosen_device
    _chosen_device = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """The part of a global batch that rank `rank` processes: indices[rank::world_size], as DistributedSampler deals.

    Args:
        indices: (B,) example indices of the global batch, B divisible by world_size.
    """
    if indices.shape[0] % world_size:
        raise ValueError(f"a global batch of {indices.shape[0]} cannot be split evenly over {world_size} processes.")
    return indices[rank::world_size]


def mean_over_ranks(value: Tensor) -> Tensor:
    """The average of `value` over all ranks (itself without a process group); gloo has no AVG, so SUM / world."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def range_over_ranks(value: int, device: torch.device) -> tuple[int, int]:
    """(min, max) of an integer over all ranks, from one all_reduce; (value, value) without a process group.

    Args:
        value: this rank's integer.
        device: where the reduced tensor lives (the CPU under gloo, this rank's GPU under nccl).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value, value
    seen = torch.tensor([value, -value], dtype=torch.int64, device=device)
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    return -int(seen[1]), int(seen[0])
