"""Checkpoints written atomically and read with torch.load(weights_only=True).

A checkpoint is a tree of dicts, lists and tuples whose leaves are tensors or Python primitives (what the
weights-only unpickler accepts). It is written to a temporary file in the target's directory, flushed and
fsync'ed, then renamed over the target with os.replace (atomic on POSIX): a crash at any moment leaves
either the previous checkpoint or the new one, never a partial file under the checkpoint's name.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint"]

_PRIMITIVES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _check_tree(obj: Any, where: str) -> None:
    """Raise TypeError at the first leaf torch.load(weights_only=True) would refuse."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PRIMITIVES):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for key, value in obj.items():
            _check_tree(key, f"{where} key {key!r}")
            _check_tree(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_tree(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint entry {where} is a {type(obj).__name__}; only tensors, numbers, strings, None and "
        "dicts/lists/tuples of them load with weights_only=True."
    )


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically: temporary file in the same directory, fsync, os.replace, fsync the directory.

    Args:
        state: dict of tensors, numbers, strings and nested dicts/lists/tuples of them.
        path: the checkpoint file; its directory is created if missing.
    Returns the path written.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}.")
    _check_tree(state, "state")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = None) -> dict:
    """Read a checkpoint with torch.load(path, weights_only=True) (no arbitrary unpickling).

    Args:
        path: a file written by `save_checkpoint`.
        map_location: device to load the tensors onto (default: where they were saved).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dict.")
    return state
