"""Overhead of sdescore's samplers over the score evaluations they make.

Times, in one run and interleaved, `sde.reverse(score).sample(method='euler')` (torchsde),
`sdescore.pc_sample(predictor='euler_maruyama', corrector='none')` and the probability-flow ODE with a fixed
Euler grid, each against a bare Euler loop making the same score calls with the same MLP score. Reports
medians over repeats and the ratio sampler / bare loop (1.00 = no overhead).

    python bench/overhead.py [--batch 512] [--dim 2] [--hidden 256] [--steps 500] [--repeats 7] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import sdescore as sds


class MLPScore(nn.Module):
    """A 3-layer MLP score s(x, t) with the time appended to the input."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))


def bare_reverse_euler(sde, score, x, steps, eps):
    """The loop every score-SDE codebase writes: x <- x - (f - g^2 s) h + g sqrt(h) z."""
    h = (sde.T - eps) / steps
    B = x.shape[0]
    for i in range(steps):
        t = torch.full((B,), sde.T - i * h, dtype=torch.float64)
        g = sde.g(t)
        g2 = (g * g).to(x.dtype)[:, None]
        x = x - (sde.f(x, t) - g2 * score(x, t.to(x.dtype))) * h + g.to(x.dtype)[:, None] * math.sqrt(h) * torch.randn_like(x)
    return x


def bare_ode_euler(sde, score, x, steps, eps):
    h = (sde.T - eps) / steps
    B = x.shape[0]
    for i in range(steps):
        t = torch.full((B,), sde.T - i * h, dtype=torch.float64)
        g = sde.g(t)
        x = x - (sde.f(x, t) - 0.5 * (g * g).to(x.dtype)[:, None] * score(x, t.to(x.dtype))) * h
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps the timings quiet)")
    parser.add_argument("--out", type=Path, default=None, help="directory for overhead.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sde = sds.VPSDE()
    score = MLPScore(args.dim, args.hidden).eval()
    x_T = torch.randn(args.batch, args.dim)
    eps = 1e-3
    ode = sde.probability_flow(score)
    rsde = sde.reverse(score)
    cases = {
        "reverse SDE, torchsde euler": (
            lambda: rsde.sample(x_T, steps=args.steps, method="euler", eps=eps),
            lambda: bare_reverse_euler(sde, score, x_T, args.steps, eps),
        ),
        "pc_sample, euler_maruyama, no corrector": (
            lambda: sds.pc_sample(sde, score, None, x_T=x_T, predictor="euler_maruyama", corrector="none",
                                  steps=args.steps, eps=eps, denoise=False),
            lambda: bare_reverse_euler(sde, score, x_T, args.steps, eps),
        ),
        "probability-flow ODE, torchdiffeq euler": (
            lambda: ode.sample(x_T, method="euler", steps=args.steps, eps=eps),
            lambda: bare_ode_euler(sde, score, x_T, args.steps, eps),
        ),
    }
    rows = []
    with torch.no_grad():
        for name, (ours, bare) in cases.items():
            ours(), bare()  # warm-up
            t_ours, t_bare = [], []
            for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
                t0 = time.perf_counter(); ours(); t_ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter(); bare(); t_bare.append(time.perf_counter() - t0)
            m_ours, m_bare = statistics.median(t_ours), statistics.median(t_bare)
            rows.append((name, m_ours, m_bare, m_ours / m_bare))
    header = (
        f"batch {args.batch}, dim {args.dim}, MLP hidden {args.hidden}, {args.steps} steps, "
        f"median of {args.repeats}, {args.threads} thread(s), torch {torch.__version__}"
    )
    lines = [f"# Sampler overhead over the bare loop\n\n{header}\n",
             "| sampler | sdescore (s) | bare loop (s) | ratio |", "|---|---|---|---|"]
    lines += [f"| {n} | {a:.3f} | {b:.3f} | {r:.3f} |" for n, a, b, r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overhead.md").write_text(text)


if __name__ == "__main__":
    main()
