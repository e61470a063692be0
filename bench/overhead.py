"""Overhead of sdescore's samplers over the score evaluations they make.

Times, in one run and interleaved, `sde.reverse(score).sample(method='euler')` (torchsde),
`sdescore.pc_sample(predictor='euler_maruyama', corrector='none')` and the probability-flow ODE with a fixed
Euler grid, each against a bare Euler loop making the same score calls with the same MLP score. Reports (a) the
median of the paired ratios sampler / bare loop (1.00 = no overhead) and (b) the sampler's own extra work per step,
measured with a free score, as a share of one MLP call: on a shared machine (b) is the steadier figure.

    python bench/overhead.py [--batch 512] [--dim 2] [--hidden 256] [--steps 200] [--repeats 15] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

import sdescore as sds
from mlp import MLPScore


class FreeScore:
    """A score that costs next to nothing (-x): timing the loops with it isolates their own work."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x


def min_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)


def per_call_us(score, x: torch.Tensor, repeats: int, calls: int = 200) -> float:
    """Microseconds per call of score on x, the least disturbed of `repeats` runs of `calls` calls."""
    t = torch.full((x.shape[0],), 0.5)
    return 1e6 * min_time(lambda: [score(x, t) for _ in range(calls)], repeats) / calls


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
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps the timings quiet)")
    parser.add_argument("--out", type=Path, default=None, help="directory for overhead.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sde = sds.VPSDE()
    score = MLPScore(args.dim, args.hidden).eval()
    x_T = torch.randn(args.batch, args.dim)
    eps = 1e-3
    cases = {
        "reverse SDE, torchsde euler": (
            lambda s: sde.reverse(s).sample(x_T, steps=args.steps, method="euler", eps=eps),
            lambda s: bare_reverse_euler(sde, s, x_T, args.steps, eps),
        ),
        "pc_sample, euler_maruyama, no corrector": (
            lambda s: sds.pc_sample(sde, s, None, x_T=x_T, predictor="euler_maruyama", corrector="none",
                                    steps=args.steps, eps=eps, denoise=False),
            lambda s: bare_reverse_euler(sde, s, x_T, args.steps, eps),
        ),
        "probability-flow ODE, torchdiffeq euler": (
            lambda s: sde.probability_flow(s).sample(x_T, method="euler", steps=args.steps, eps=eps),
            lambda s: bare_ode_euler(sde, s, x_T, args.steps, eps),
        ),
    }
    rows = []
    free = FreeScore()
    with torch.no_grad():
        call_us = per_call_us(score, x_T, args.repeats)
        for name, (ours, bare) in cases.items():
            # (a) the paired ratio: each repeat times ours and the bare loop back to back, so a slow spell of the
            # shared machine hits both; the median of the per-pair ratios is the figure.
            ours(score), bare(score)  # warm-up
            ratios, t_ours, t_bare = [], [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter(); ours(score); a = time.perf_counter() - t0
                t0 = time.perf_counter(); bare(score); b = time.perf_counter() - t0
                ratios.append(a / b); t_ours.append(a); t_bare.append(b)
            # (b) the sampler's own work per step: both loops with a score that costs nothing, min over repeats
            # (the least disturbed run), the difference set against one MLP call.
            own = min_time(lambda: ours(free), args.repeats) - min_time(lambda: bare(free), args.repeats)
            own_us = 1e6 * own / args.steps
            rows.append((name, statistics.median(t_ours), statistics.median(t_bare), statistics.median(ratios),
                         own_us, 100.0 * own_us / call_us))
    header = (
        f"batch {args.batch}, dim {args.dim}, MLP hidden {args.hidden} ({call_us:.0f} µs a call), {args.steps} steps, "
        f"{args.repeats} repeats, {args.threads} thread(s), torch {torch.__version__}"
    )
    lines = [f"# Sampler overhead over the bare loop\n\n{header}\n",
             "(a) median over repeats of the paired ratio sdescore / bare loop, both with the MLP score; "
             "(b) the sampler's extra work per step over the bare loop's, both with a free score, "
             "as a share of one MLP call.\n",
             "| sampler | sdescore (s, median) | bare loop (s, median) | (a) paired ratio | (b) extra µs per step | (b) share of an MLP call |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.3f} | {b:.3f} | {r:.3f} | {u:+.0f} | {p:+.1f}% |" for n, a, b, r, u, p in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overhead.md").write_text(text)


if __name__ == "__main__":
    main()
