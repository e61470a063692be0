"""A small deterministic training problem shared by the training tests; also a script for subprocess runs.

    python tests/_training_problem.py --checkpoint PATH --n-steps N [--kill-at K] [--out FILE]

trains it with checkpoints every 3 steps; --kill-at K sends SIGKILL to itself after step K (no cleanup, as a
crash would), --out saves the final parameters, EMA and losses.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdescore.data import toy_2d  # noqa: E402
from sdescore.nets import ScoreMLP  # noqa: E402
from sdescore.training import train  # noqa: E402

N_EXAMPLES, BATCH, SEED = 100, 16, 7  # 6 steps per epoch: a run of 14 steps crosses two epoch boundaries


def make_data() -> torch.Tensor:
    return toy_2d("ring", N_EXAMPLES, torch.Generator().manual_seed(1))


def make_model() -> ScoreMLP:
    torch.manual_seed(0)
    # dropout draws from the global RNG inside the loss: resume must reproduce it too
    return ScoreMLP(2, hidden=32, depth=2, embedding_dim=16, dropout=0.2)


def dsm_loss(model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Denoising score matching with sigma ~ logU(0.05, 2) and noise from the trainer's generator."""
    sigma = torch.exp(torch.empty(x0.shape[0]).uniform_(-3.0, 0.7, generator=generator))
    z = torch.randn(x0.shape, generator=generator)
    s = model(x0 + sigma[:, None] * z, sigma)
    return ((sigma[:, None] * s + z) ** 2).sum(dim=1).mean()


def run(checkpoint: str | None, n_steps: int, callback=None, resume: bool = True):
    return train(
        make_model(),
        dsm_loss,
        make_data(),
        batch_size=BATCH,
        n_steps=n_steps,
        lr=1e-2,
        warmup_steps=4,
        ema_decay=0.9,
        seed=SEED,
        checkpoint_path=checkpoint,
        checkpoint_every=3,
        resume=resume,
        progress=False,
        callback=callback,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n-steps", type=int, required=True)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    def kill(info):
        if info.step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = run(args.checkpoint, args.n_steps, callback=kill if args.kill_at is not None else None)
    if args.out:
        torch.save({"model": result.model.state_dict(), "ema": result.ema.state_dict(), "losses": result.losses}, args.out)


if __name__ == "__main__":
    main()
