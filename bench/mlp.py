"""The score model every benchmark times: a 3-layer MLP s(x, t) = W3 silu(W2 silu(W1 [x, t])), t appended to x."""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import nn


class MLPScore(nn.Module):
    """A 3-layer MLP score with the time appended to the input: (B, dim), (B,) -> (B, dim)."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


def free_score(mlp: MLPScore, xb: torch.Tensor, tb: torch.Tensor, copies: int = 4) -> Callable:
    """A score that does no work: it returns precomputed outputs of `mlp` at (xb, tb), `copies` distinct tensors in
    turn, so that each call, like a network's, gives a new tensor object. The fast samplers merge the terms of one
    tensor object in a linear combination (`sdescore.fast._Lin`): a score returning one tensor every call would
    have its past outputs combined as one, and the sampler's own work undercounted (by up to a third of the terms of
    DPM-Solver++(3M) at budget 50). Call under torch.inference_mode() or no_grad."""
    cycle = itertools.cycle([mlp(xb, tb) for _ in range(copies)])

    def free(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return next(cycle)

    return free
