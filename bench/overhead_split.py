"""Split a fast sampler's overhead figure (a) into its own work and the network's slowdown inside it.

(a) of `bench/samplers.py` is time(sampler with the MLP) / time(the same MLP calls replayed bare) - 1. This script
times, for one sampler at budget 50 (VP-SDE, batch 1024, one thread): the run with the MLP, the replay of its
calls, the run with a free score (the sampler's own work), and the MLP calls timed one by one inside the sampler;
the minima over the repeats. The difference between the calls inside and the replay is the network's slowdown when
its calls alternate with the sampler's memory traffic.

    python bench/overhead_split.py --sampler heun --dims 2 64 --repeats 15
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sdescore as sds  # noqa: E402
from sdescore.fast import FAST_SAMPLERS, FixedStepSampler  # noqa: E402

from mlp import MLPScore, free_score  # noqa: E402


def split(name: str, dim: int, repeats: int) -> dict[str, float]:
    """Seconds (minima over `repeats`): with the MLP, the replay, the free run, and the MLP calls inside the run."""
    sampler, sde = FAST_SAMPLERS[name], sds.VPSDE()
    if not isinstance(sampler, FixedStepSampler):
        raise SystemExit(f"--sampler must be a fixed-step sampler of FAST_SAMPLERS, got {name!r}.")
    torch.manual_seed(0)
    mlp = MLPScore(dim).eval()
    x_T, xb, tb = torch.randn(1024, dim), torch.randn(1024, dim), torch.rand(1024)

    def run(score):
        return sampler(sde, score, x_T, steps=sampler.steps_for(50), eps=1e-3, generator=torch.Generator().manual_seed(0))

    with torch.inference_mode():
        calls, inside = [], []

        def recorder(x, t):
            calls.append((x.clone(), t.clone()))
            return mlp(x, t)

        def timed(x, t):
            t0 = time.perf_counter()
            out = mlp(x, t)
            inside.append(time.perf_counter() - t0)
            return out

        run(recorder)
        free = free_score(mlp, xb, tb)
        best = dict.fromkeys(("with_mlp", "replay", "own", "mlp_inside"), float("inf"))
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(mlp)
            best["with_mlp"] = min(best["with_mlp"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            for x, t in calls:
                mlp(x, t)
            best["replay"] = min(best["replay"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            run(free)
            best["own"] = min(best["own"], time.perf_counter() - t0)
            inside.clear()
            run(timed)
            best["mlp_inside"] = min(best["mlp_inside"], sum(inside))
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| d | with MLP (ms) | replay (ms) | (a) | MLP inside the sampler (ms) | slowdown | own work (ms) | own / replay |")
    print("|---|---|---|---|---|---|---|---|")
    for dim in args.dims:
        b = split(args.sampler, dim, args.repeats)
        print(f"| {dim} | {1e3 * b['with_mlp']:.1f} | {1e3 * b['replay']:.1f} | {b['with_mlp'] / b['replay'] - 1:+.1%} | "
              f"{1e3 * b['mlp_inside']:.1f} | {b['mlp_inside'] / b['replay'] - 1:+.1%} | {1e3 * b['own']:.1f} | "
              f"{b['own'] / b['replay']:.1%} |")


if __name__ == "__main__":
    main()
