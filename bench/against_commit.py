"""The samplers' own work per evaluation at this checkout against another commit's, paired in one process.

    python bench/against_commit.py REV [--dims 2 16 64] [--samplers adaptive_ode adaptive_sde] [--repeats 15]

REV's `sdescore/` is extracted with `git archive` into a temporary directory under the name `sdescore_at_rev`
(the package imports itself relatively, so it runs renamed) and imported next to this checkout's `sdescore`.
For each dimension and sampler, both versions sample from the same x_T with a free score (a precomputed output
of the 3-layer MLP of `mlp.py`, batch 1024, VP-SDE, the budget and tolerances of `samplers.py`'s overhead
table), alternately, each run followed by two MLP calls; the figures are the medians over the repeats of
(own time per evaluation / MLP call) for each version, and of the per-repeat ratio new / old. Pairing in one
process cancels most of the drift of a shared machine, which moves unpaired figures by tens of percent.

Both packages register Tsitouras' pair with torchdiffeq under the name 'tsit5' (with their own step,
`sdescore._rk`); each version's class is put back in torchdiffeq's table before each of its runs, so each
`adaptive_ode` runs with its own step.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchdiffeq._impl.odeint import SOLVERS

from mlp import MLPScore

ROOT = Path(__file__).resolve().parents[1]


def load_at(rev: str, into: Path):
    """Import `sdescore` as it is at git revision `rev`, under the name sdescore_at_rev."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "sdescore"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "sdescore").rename(into / "sdescore_at_rev")
    sys.path.insert(0, str(into))
    return importlib.import_module("sdescore_at_rev")


def sampler_call(pkg, name: str, sde_score, x_T: torch.Tensor, tsit5):
    """A no-argument call of sampler `name` of package `pkg` with the overhead table's settings, run with the
    torchdiffeq solver class `tsit5` (the one `pkg` registered) under that name."""
    sampler, sde = pkg.fast.FAST_SAMPLERS[name], pkg.VPSDE()
    if name == "adaptive_ode":
        kw = dict(rtol=1e-3, atol=1e-3)
    elif name == "adaptive_sde":
        kw = dict(rtol=0.1, generator=torch.Generator().manual_seed(0))
    else:
        kw = dict(steps=sampler.steps_for(50), generator=torch.Generator().manual_seed(0))

    def call():
        if tsit5 is not None:
            SOLVERS["tsit5"] = tsit5
        return sampler(sde, sde_score, x_T, eps=1e-3, **kw)

    return call


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare against (e.g. HEAD~1)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--samplers", nargs="+", default=["adaptive_ode", "adaptive_sde", "heun", "heun_churn"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        native = SOLVERS.get("tsit5")
        old = load_at(args.rev, Path(tmp))
        old_tsit5 = SOLVERS.get("tsit5")
        if old_tsit5 is not native:  # sdescore registers 'tsit5' only where the name is free
            del SOLVERS["tsit5"]
        import sdescore as new

        new_tsit5 = SOLVERS.get("tsit5")

        print("| d | sampler | nfe old / new | own work, old | own work, new | new / old (median of paired ratios) |")
        print("|---|---|---|---|---|---|")
        for dim in args.dims:
            torch.manual_seed(0)
            mlp = MLPScore(dim).eval()
            x_T, xb, tb = torch.randn(1024, dim), torch.randn(1024, dim), torch.rand(1024)
            with torch.inference_mode():
                out = mlp(xb, tb)

                def free(x, t):
                    return out

                for name in args.samplers:
                    calls = {"old": sampler_call(old, name, free, x_T, old_tsit5),
                             "new": sampler_call(new, name, free, x_T, new_tsit5)}
                    nfe = {k: f().nfe for k, f in calls.items()}  # also the warm-up
                    shares = {"old": [], "new": []}
                    for _ in range(args.repeats):
                        for k, f in calls.items():
                            t0 = time.perf_counter()
                            f()
                            own = (time.perf_counter() - t0) / nfe[k]
                            t0 = time.perf_counter()
                            mlp(xb, tb)
                            mlp(xb, tb)
                            shares[k].append(own / ((time.perf_counter() - t0) / 2))
                    ratio = float(np.median(np.array(shares["new"]) / np.array(shares["old"])))
                    print(f"| {dim} | {name} | {nfe['old']} / {nfe['new']} | {100 * np.median(shares['old']):.1f} % | "
                          f"{100 * np.median(shares['new']):.1f} % | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
