"""The training loop: Adam with warm-up, gradient clipping, an EMA of the weights, checkpoints, resume, DDP.

Reproducibility is counter-based: every random number of step k is a function of (seed, k, rank), so
a run resumed from a checkpoint at step k continues exactly as the uninterrupted run (bitwise on CPU):

- data order: epoch e visits the examples in the permutation randperm(N) of a generator seeded from
  (seed, e); step k takes the global batch k mod (N // batch_size) of epoch k // (N // batch_size)
  (the incomplete last batch of an epoch is dropped), and rank r takes its entries r, r + W, r + 2W, ...
  (DistributedSampler's dealing). Resuming at step k skips the consumed batches by arithmetic.
- the loss noise: loss_fn(model, x0, generator) draws from a torch.Generator seeded from (seed, k, rank).
- everything else drawn from torch's global generator inside loss_fn (dropout) is seeded from
  (seed, k, rank) for that step; the caller's global RNG state is restored afterwards.

The checkpoint therefore stores the seed and the step, which fix all these states, together with the
model, the EMA, the optimizer, the scheduler and the loss history.

With W processes the global batch is split W ways and DistributedDataParallel averages the gradients, so
one step equals a single-process step on the combined batch whenever the loss of each example does not
depend on which rank drew its noise (for instance, noise keyed by the example).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset

from .._checks import check_int, check_real
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import _env_int, current_distributed, mean_over_ranks, range_over_ranks, shard

__all__ = ["train", "TrainResult", "StepInfo", "warmup_factor", "batch_indices", "stream_seed"]

LossFn = Callable[[nn.Module, Tensor, torch.Generator], Tensor]

# Independent random streams, one per purpose.
_DATA_STREAM, _LOSS_STREAM, _GLOBAL_STREAM = 0, 1, 2
_FORMAT = 1


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each optimizer step.

    step: completed steps; loss: the step's loss averaged over ranks; lr: the learning rate used;
    rank: this process's rank (callbacks run on every rank).
    """

    step: int
    loss: float
    lr: float
    rank: int


@dataclass
class TrainResult:
    """The trained model, its EMA copy in eval mode (use it for sampling), the per-step loss history and the final step."""

    model: nn.Module
    ema: nn.Module
    losses: list[float]
    step: int


def stream_seed(seed: int, stream: int, *keys: int) -> int:
    """A 64-bit seed for the random stream `stream` at `keys` (step, rank or epoch), via numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed, stream, *keys]).generate_state(1, np.uint64)[0])


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up of the learning rate: lr_k = lr * min(1, (k + 1) / warmup_steps) at optimizer step k = 0, 1, ...

    Goyal et al. (2017); Song et al. (2021) warm up over 5000 steps.
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, n_examples: int) -> Tensor:
    g = torch.Generator().manual_seed(stream_seed(seed, _DATA_STREAM, epoch))
    return torch.randperm(n_examples, generator=g)


def batch_indices(step: int, n_examples: int, batch_size: int, seed: int) -> Tensor:
    """Example indices (batch_size,) of the global batch of step `step`: a slice of the seeded permutation of its epoch."""
    epoch, b = divmod(step, n_examples // batch_size)
    return _epoch_permutation(seed, epoch, n_examples)[b * batch_size : (b + 1) * batch_size].clone()


def _n_examples(data: object) -> int:
    if isinstance(data, Tensor):
        if data.ndim < 1:
            raise ValueError("data must have shape (N, *dims), got a 0-dimensional tensor.")
        return data.shape[0]
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return len(data)  # type: ignore[arg-type]
    raise TypeError(
        f"data must be a tensor (N, *dims) or a torch.utils.data.Dataset with __len__, got {type(data).__name__}."
    )


def _fetch(data: Tensor | Dataset, idx: Tensor) -> Tensor:
    if isinstance(data, Tensor):
        return data[idx.to(data.device)]
    items = []
    for i in idx.tolist():
        item = data[i]
        if isinstance(item, (tuple, list)):  # (x, label) pairs: train on x
            item = item[0]
        if not isinstance(item, Tensor):
            raise TypeError(f"data[{i}] must be a tensor or a tuple starting with one, got {type(item).__name__}.")
        items.append(item)
    return torch.stack(items)


# the entries of train's checkpoint that a resume reads (it also writes "format", "world_size" and "scheduler")
_CHECKPOINT_KEYS = frozenset({"step", "seed", "batch_size", "n_examples", "model", "ema", "optimizer", "losses"})


def _check_checkpoint_path(path: object) -> None:
    """Refuse, before any training, a checkpoint path that no checkpoint can be written to: a directory, or a file
    under a path component that is not a directory (the error would otherwise come at the first checkpoint)."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"checkpoint_path must be a path (str or Path) or None, got {type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint_path={str(path)!r} is a directory; name the checkpoint file, e.g. {str(path / 'checkpoint.pt')!r}.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"checkpoint_path={str(path)!r} lies under {str(parent)!r}, which is a file, not a directory."
                )
            break


def _resolve_device(device: str | torch.device | None) -> torch.device:
    info = current_distributed()
    if device is None:
        return info.device
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {device!r}.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available in this torch build or machine; pass device='cpu'.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    return device


def _check_loss(loss: object, step: int) -> Tensor:
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor (the batch mean), got {got} at step {step}.")
    if not loss.requires_grad:
        raise ValueError(f"loss_fn returned a tensor that does not require grad at step {step}; was it computed under no_grad?")
    return loss


def train(
    model: nn.Module,
    loss_fn: LossFn,
    data: Tensor | Dataset,
    *,
    batch_size: int,
    n_steps: int,
    lr: float = 2e-4,
    warmup_steps: int = 0,
    grad_clip: float | None = 1.0,
    ema_decay: float = 0.9999,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    bf16: bool = True,
    compile_model: bool = False,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    progress: bool = True,
    log_every: int = 50,
    callback: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train `model` by minimising loss_fn(model, x0, generator) with Adam, warm-up, clipping and an EMA of the weights.

    Adam (Kingma & Ba 2015) at learning rate lr * warmup_factor(k); gradients clipped to global norm
    grad_clip; EMA (Polyak averaging) theta_ema <- decay theta_ema + (1 - decay) theta after each step via
    torch.optim.swa_utils.AveragedModel, starting from the weights after the first step. Song et al. (2021)
    train with lr 2e-4, warm-up 5000, clipping 1 and decay 0.9999 (0.999 for NCSN-style VE models).

    Under torchrun the model is wrapped in DistributedDataParallel, each rank processes batch_size /
    world_size examples of every global batch, rank 0 writes checkpoints and shows the progress bar; every
    rank must find the same checkpoint to resume from (shared storage), else a ValueError stops the run.
    See the module docstring for the data order and the random streams.

    Args:
        model: the network; moved to `device` and trained in place.
        loss_fn: loss_fn(model, x0, generator) -> scalar tensor; x0 is this rank's batch (b, *dims) on
            `device`, and all noise should come from `generator` (a torch.Generator on `device`).
        data: a tensor (N, *dims) (kept where it is, batches moved to `device`) or a Dataset whose items
            are tensors or tuples starting with one.
        batch_size: the global batch size, over all ranks; at most N and divisible by the world size.
        n_steps: total optimizer steps of the run, counting the steps of a resumed checkpoint.
        lr: peak learning rate.
        warmup_steps: linear warm-up length (0: none).
        grad_clip: maximum global gradient norm, or None for no clipping.
        ema_decay: EMA decay in [0, 1).
        betas: Adam's (beta1, beta2).
        weight_decay: Adam's L2 penalty.
        seed: the seed of every random stream of the run (non-negative int).
        device: where to train; default the device `setup_distributed` chose if it ran, else the GPU
            LOCAL_RANK if CUDA is available, else the CPU (the CPU in a gloo process group).
        bf16: run forward and loss under bfloat16 autocast on CUDA (ignored on the CPU).
        compile_model: train through torch.compile(model).
        checkpoint_path: file to write checkpoints to (atomically), or None for no checkpoints.
        checkpoint_every: steps between checkpoints; one is also written after the last step.
        resume: continue from checkpoint_path when that file exists. The run continues with the model, the
            EMA, Adam's moments, the step and the loss history of the checkpoint, and with the lr, warmup_steps,
            betas, weight_decay, grad_clip and ema_decay of this call (they may differ from the checkpoint's:
            rerun with a lower lr after a divergence). A checkpoint of another seed, batch_size or dataset
            size, or at a step beyond n_steps, is refused with a ValueError.
        progress: show a tqdm bar with the loss and the throughput (rank 0 only).
        log_every: steps between updates of the progress bar and of the loss history's host copy.
        callback: called as callback(StepInfo) after every step, on every rank (forces a host sync per step).
    Returns TrainResult(model, ema, losses, step): `losses` has one rank-averaged loss per step.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if isinstance(model, DistributedDataParallel) or hasattr(model, "_orig_mod"):
        raise TypeError("model must be the plain network; train wraps it in DDP and torch.compile (compile_model=True) itself.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, x0, generator), got {type(loss_fn).__name__}.")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(StepInfo) or None, got {type(callback).__name__}.")
    n_examples = _n_examples(data)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    n_steps = check_int("n_steps", n_steps, minimum=0)
    lr = check_real("lr", lr, positive=True)
    warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
    if grad_clip is not None:
        grad_clip = check_real("grad_clip", grad_clip, positive=True)
    ema_decay = check_real("ema_decay", ema_decay, nonnegative=True)
    if ema_decay >= 1:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}.")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}.")
    betas = (check_real("betas[0]", betas[0], nonnegative=True), check_real("betas[1]", betas[1], nonnegative=True))
    if not (betas[0] < 1 and betas[1] < 1):
        raise ValueError(f"betas must lie in [0, 1) (Adam's moment decays), got {tuple(betas)}.")
    weight_decay = check_real("weight_decay", weight_decay, nonnegative=True)
    seed = check_int("seed", seed, minimum=0)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    log_every = check_int("log_every", log_every, minimum=1)
    if checkpoint_path is not None:
        _check_checkpoint_path(checkpoint_path)

    info = current_distributed()
    launched = _env_int("WORLD_SIZE", 1)
    if launched > 1 and info.world_size == 1:
        raise ValueError(
            f"this process was launched as one of WORLD_SIZE={launched} (torchrun) but has joined no process group, so "
            "each process would train alone on the same device and write the same checkpoint; call "
            "sdescore.training.setup_distributed() before train()."
        )
    rank, world = info.rank, info.world_size
    if batch_size > n_examples:
        raise ValueError(f"batch_size={batch_size} exceeds the {n_examples} examples of data; lower batch_size.")
    if batch_size % world:
        raise ValueError(
            f"batch_size={batch_size} (the global batch) must be divisible by the world size {world}; "
            f"use a multiple of {world}."
        )
    device = _resolve_device(device)

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)

    start, losses = 0, []
    if checkpoint_path is not None and resume and Path(checkpoint_path).is_file():
        state = load_checkpoint(checkpoint_path, map_location=device)
        missing = sorted(_CHECKPOINT_KEYS - set(state))
        if missing:
            raise ValueError(
                f"checkpoint {checkpoint_path} lacks the entries {missing} that train writes; it is not a checkpoint of "
                "sdescore.train. Pass another checkpoint_path or resume=False."
            )
        for key, want in (("seed", seed), ("batch_size", batch_size), ("n_examples", n_examples)):
            if state.get(key) != want:
                raise ValueError(
                    f"checkpoint {checkpoint_path} was written with {key}={state.get(key)!r} but this run has "
                    f"{key}={want!r}; resuming would not continue that run. Use the same settings or resume=False."
                )
        if int(state["step"]) > n_steps:
            raise ValueError(
                f"checkpoint {checkpoint_path} is at step {int(state['step'])}, beyond n_steps={n_steps}: resuming "
                f"would return a model trained for more steps than asked. Pass n_steps >= {int(state['step'])} to "
                "continue it (equal: take it as it is), or resume=False to train afresh."
            )
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])  # Adam's moments and step counts
        # load_state_dict restored the checkpoint's lr, betas and weight_decay: the call's values win, so that
        # rerunning with a lower lr after a divergence trains at that lr.
        for group in optimizer.param_groups:
            group.update(initial_lr=lr, betas=betas, weight_decay=weight_decay)
        start, losses = int(state["step"]), state["losses"].tolist()
    # Built after the resume: with last_epoch=start - 1 its initial step sets lr * warmup_factor(start), the lr
    # of step `start`. (The checkpoint's "scheduler" entry is still written; the schedule is a function of the step.)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: warmup_factor(k, warmup_steps), last_epoch=start - 1
    )

    # Each rank looked for the checkpoint itself: on storage that is not shared they disagree, and the loops
    # would issue different numbers of collectives (a hang). Agree on the start step, or stop here.
    lo, hi = range_over_ranks(start, device)
    if lo != hi:
        raise ValueError(
            f"the ranks resume from different steps ({lo} to {hi}; this is rank {rank} at step {start}): "
            f"checkpoint_path={str(checkpoint_path)!r} must name the same file on every rank, on a filesystem "
            "shared by all nodes."
        )

    train_model: nn.Module = model
    if world > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        train_model = torch.compile(train_model)
    autocast = bf16 and device.type == "cuda"
    rng_devices = [device.index] if device.type == "cuda" else []
    generator = torch.Generator(device=device)

    def checkpoint(step: int) -> None:
        if rank == 0:
            save_checkpoint(
                {
                    "format": _FORMAT,
                    "step": step,
                    "seed": seed,
                    "batch_size": batch_size,
                    "n_examples": n_examples,
                    "world_size": world,
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "losses": torch.tensor(losses, dtype=torch.float64),
                },
                checkpoint_path,  # type: ignore[arg-type]
            )
        if world > 1:
            torch.distributed.barrier()

    from tqdm.auto import tqdm  # the optional dependency `train`; imported here so that `import sdescore` needs no tqdm

    bar = tqdm(total=n_steps, initial=start, disable=not (progress and rank == 0), unit="step", dynamic_ncols=True)
    pending: list[Tensor] = []
    t_last, step_last = time.perf_counter(), start
    model.train()
    try:
        for k in range(start, n_steps):
            lr_k = optimizer.param_groups[0]["lr"]
            x0 = _fetch(data, shard(batch_indices(k, n_examples, batch_size, seed), rank, world))
            x0 = x0.to(device, non_blocking=True)
            generator.manual_seed(stream_seed(seed, _LOSS_STREAM, k, rank))
            with torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(stream_seed(seed, _GLOBAL_STREAM, k, rank))
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = _check_loss(loss_fn(train_model, x0, generator), k)
                optimizer.zero_grad(set_to_none=True)
                loss.float().backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update_parameters(model)
            pending.append(mean_over_ranks(loss.detach().float()))

            done = k + 1
            due = checkpoint_path is not None and (done % checkpoint_every == 0 or done == n_steps)
            if callback is not None or due or done % log_every == 0 or done == n_steps:
                new = torch.stack(pending).tolist()
                pending.clear()
                bad = [i for i, v in enumerate(new) if not math.isfinite(v)]
                if bad:
                    raise FloatingPointError(f"the loss became {new[bad[0]]} at step {done - len(new) + bad[0]}; lower lr or check the data.")
                losses.extend(new)
                now = time.perf_counter()
                rate = batch_size * (done - step_last) / max(now - t_last, 1e-9)
                bar.set_postfix(loss=f"{new[-1]:.4g}", ex_per_s=f"{rate:.1f}", refresh=False)
                bar.update(done - bar.n)
                t_last, step_last = now, done
            if due:
                checkpoint(done)
            if callback is not None:
                callback(StepInfo(step=done, loss=losses[-1], lr=lr_k, rank=rank))
    finally:
        bar.close()
    return TrainResult(model=model, ema=ema.module.eval(), losses=losses, step=n_steps)
