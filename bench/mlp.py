"""The score model every benchmark times: a 3-layer MLP s(x, t) = W3 silu(W2 silu(W1 [x, t])), t appended to x."""

from __future__ import annotations

import torch
from torch import nn


class MLPScore(nn.Module):
    """A 3-layer MLP score with the time appended to the input: (B, dim), (B,) -> (B, dim)."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))
