"""Checkpoints written atomically and read with torch.load(weights_only=True).

A checkpoint is a tree of dicts, lists and tuples whose leaves are tensors or Python primitives (what the
weights-only unpickler accepts). It is written to a temporary file in the target's directory, flushed and
fsync'ed, then renamed over the target with os.replace (atomic on POSIX): a crash at any moment leaves
either the previous checkpoint or the new one, never a partial file under the checkpoint's name.
"""

from __future__ import annotations

import os
import pickle
import secrets
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "ema_state_dict"]

# Exact types: the weights-only unpickler refuses subclasses (numpy.float64, IntEnum, str subclasses,
# namedtuple, defaultdict), so an isinstance test would let through states that save but never load.
_PRIMITIVES = frozenset({bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size})
_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})
_MAPPINGS = frozenset({dict, OrderedDict})
_SEQUENCES = frozenset({list, tuple})


def _check_tree(obj: Any, where: str) -> None:
    """Raise TypeError at the first leaf torch.load(weights_only=True) would refuse."""
    kind = type(obj)
    if kind in _TENSORS or kind in _PRIMITIVES:
        return
    if kind in _MAPPINGS:
        for key, value in obj.items():
            _check_tree(key, f"{where} key {key!r}")
            _check_tree(value, f"{where}[{key!r}]")
        return
    if kind in _SEQUENCES:
        for i, value in enumerate(obj):
            _check_tree(value, f"{where}[{i}]")
        return
    hint = ""
    for base, fix in ((np.generic, "x.item()"), (float, "float(x)"), (int, "int(x)"), (complex, "complex(x)"),
                      (str, "str(x)"), (tuple, "tuple(x)"), (dict, "dict(x)"), (list, "list(x)")):
        if isinstance(obj, base):
            hint = f" Convert it with {fix}."
            break
    raise TypeError(
        f"checkpoint entry {where} is a {kind.__module__}.{kind.__qualname__}; only tensors, numbers, strings, None "
        "and dicts/lists/tuples of them (exactly these types, not subclasses such as numpy.float64, IntEnum, "
        f"namedtuple or defaultdict) load with weights_only=True.{hint}"
    )


def _create_temporary(path: Path) -> tuple[int, Path]:
    """An exclusive new file `.{name}.{random}.tmp` next to `path`, opened for writing.

    Its mode is open()'s: 0666 less the umask, which the kernel applies (no process-wide umask juggling).
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically: temporary file in the same directory, fsync, os.replace, fsync the directory.

    The file gets the permissions of a file created by open() (0666 less the umask), and `state` is checked
    first: an entry that torch.load(weights_only=True) would refuse raises TypeError naming it, and nothing
    is written.

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
    fd, tmp = _create_temporary(path)
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


# What a damaged or foreign file makes torch.load or zipfile raise, besides UnpicklingError and RuntimeError
_FORMAT_ERRORS = (OSError, EOFError, KeyError, IndexError, struct.error, zipfile.BadZipFile, UnicodeDecodeError)


def _load_weights(file: BinaryIO, path: Path, map_location: Any, damaged: str, remedy: str) -> Any:
    """torch.load(file, weights_only=True), its errors of the file's format raised as ValueError naming path.

    Only errors of the file's format are reported as a damaged file: a device or memory error of torch.load (a CUDA
    checkpoint on a CPU-only machine, a bad map_location) comes through as it is.
    """
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words a refused global "Unsupported global: GLOBAL m.f was not an allowed global" (any object
        # outside the allowlist) or "unsupported GLOBAL m.f whose module m is blocked" (os, subprocess, ...)
        refused = next((ln.strip() for ln in str(e).splitlines() if "unsupported global" in ln.lower()), None)
        if refused is None:  # the pickle stream itself is broken
            raise ValueError(f"{damaged} (UnpicklingError: {str(e).splitlines()[0]}): {remedy}.") from e
        raise ValueError(
            f"{path} holds an object that torch.load(weights_only=True) refuses ({refused}); it was not constructed. "
            "save_checkpoint never writes one: the file comes from elsewhere. Do not load it with weights_only=False "
            "unless you trust its source, since unpickling can run arbitrary code."
        ) from e
    except _FORMAT_ERRORS as e:  # UnicodeDecodeError: a damaged string in a legacy (non-zip) file
        raise ValueError(f"{damaged} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): {remedy}.") from e
    except RuntimeError as e:
        # torch's archive reader (caffe2/serialize/inline_container.cc) raises RuntimeError on a malformed archive,
        # as a device error does (a CUDA checkpoint on a CPU-only machine): only the former is the file's fault
        if not any(k in str(e) for k in ("PytorchStreamReader", "inline_container", "hasRecord", "magic number")):
            raise
        raise ValueError(f"{damaged} ({type(e).__name__}: {str(e).splitlines()[0]}): {remedy}.") from e


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = None) -> dict:
    """Read a checkpoint with torch.load(weights_only=True) (no arbitrary unpickling), its records' CRC-32 checked.

    The check and the load read the same open file, so a checkpoint that another process replaces at `path`
    meanwhile (`save_checkpoint` renames atomically) cannot be checked in one version and loaded in the other.
    A damaged, truncated or foreign file raises ValueError naming it, and so does one holding an object outside
    the weights-only allowlist (never constructed: a pickled payload cannot run).

    Args:
        path: a file written by `save_checkpoint`.
        map_location: device to load the tensors onto (default: where they were saved).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a regular file (a directory?); pass the checkpoint file's path.")
    damaged = f"{path} is not a readable checkpoint"
    remedy = "the file is damaged or not a torch.save file; restore a copy, or train with resume=False"
    with open(path, "rb") as file:  # one open file for the check and the load (the docstring says why)
        # torch.load does not verify the CRC-32 of the zip records torch.save writes: a flipped byte in a tensor
        # record would load as wrong weights and be saved again with a fresh CRC. Check every record first.
        try:
            bad = None
            if zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as archive:
                    bad = archive.testzip()
        # zipfile's own refusals of a damaged archive besides BadZipFile: NotImplementedError (an unknown
        # compression method or zip version), RuntimeError (an encrypted record), and the format errors below
        except (NotImplementedError, RuntimeError, *_FORMAT_ERRORS) as e:
            raise ValueError(f"{damaged} ({type(e).__name__}: {e}): {remedy}.") from e
        if bad is not None:
            raise ValueError(f"{damaged}: its record {bad!r} fails its CRC-32 check; {remedy}.")
        file.seek(0)
        state = _load_weights(file, path, map_location, damaged, remedy)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dict.")
    return state


def ema_state_dict(checkpoint: dict | str | os.PathLike, map_location: str | torch.device | None = None) -> dict:
    """The EMA weights of a `train` checkpoint as the bare network's state dict: net.load_state_dict(ema_state_dict(p)).

    `train` stores the EMA as the state dict of a torch.optim.swa_utils.AveragedModel: the network's keys
    prefixed with "module." and a counter "n_averaged". This strips both, so a freshly constructed network
    of the same architecture loads the averaged weights (the ones TrainResult.ema holds).

    Args:
        checkpoint: a checkpoint path written by `train`, or the dict `load_checkpoint` returned for it.
        map_location: device to load the tensors onto when `checkpoint` is a path.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_checkpoint(checkpoint, map_location=map_location)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"checkpoint must be a path or a checkpoint dict, got {type(checkpoint).__name__}.")
    ema = checkpoint.get("ema")
    if not isinstance(ema, dict) or "n_averaged" not in ema:
        got = "no 'ema' entry" if ema is None else f"an 'ema' entry without 'n_averaged' ({type(ema).__name__})"
        raise ValueError(
            f"checkpoint has {got}; expected the state dict of an AveragedModel (keys 'n_averaged', 'module.*') "
            f"as sdescore.training.train writes it. Its keys: {sorted(checkpoint)}."
        )
    prefix = "module."
    return OrderedDict((k[len(prefix):], v) for k, v in ema.items() if k.startswith(prefix))
