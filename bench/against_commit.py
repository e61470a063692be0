"""The samplers' own work per evaluation at this checkout against another commit's, paired in one process.

    python bench/against_commit.py REV [--dims 2 16 64] [--samplers adaptive_ode adaptive_sde] [--repeats 15]
                                       [--processes [--inner 15]]

REV's `sdescore/` is extracted with `git archive` into a temporary directory under the name `sdescore_at_rev`
(the package imports itself relatively, so it runs renamed) and imported next to this checkout's `sdescore`.
For each dimension and sampler, both versions sample from the same x_T with a free score (a precomputed output
of the 3-layer MLP of `mlp.py`, batch 1024, VP-SDE, the budget and tolerances of `samplers.py`'s overhead
table), alternately, each run followed by two MLP calls; the figures are the medians over the repeats of
(own time per evaluation / MLP call) for each version, and of the per-repeat ratio new / old. Pairing in one
process cancels most of the drift of a shared machine, which moves unpaired figures by tens of percent.

In one process the two versions also share the allocator's heap, so a change in what a sampler allocates can read
differently there than on its own (the adaptive SDE solver's reused buffers read 0.64-0.85 at d = 64 in one
process and 0.85 in separate ones). `--processes` runs every measurement in a fresh process instead, old and new
alternately, each process timing `--inner` runs and reporting the median of its shares; the table then also
counts the pairs in which the new version was lower.

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

from mlp import MLPScore, free_score

ROOT = Path(__file__).resolve().parents[1]


def extract_at(rev: str, into: Path) -> None:
    """Write `sdescore` as it is at git revision `rev` to into/sdescore_at_rev."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "sdescore"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "sdescore").rename(into / "sdescore_at_rev")


def import_from(into: Path):
    """Import the sdescore_at_rev that `extract_at` wrote to `into`."""
    sys.path.insert(0, str(into))
    return importlib.import_module("sdescore_at_rev")


def timed_share(call, nfe: int, mlp, xb: torch.Tensor, tb: torch.Tensor) -> float:
    """One run of `call` (nfe evaluations): its time per evaluation over one MLP call timed right after it."""
    t0 = time.perf_counter()
    call()
    own = (time.perf_counter() - t0) / nfe
    t0 = time.perf_counter()
    mlp(xb, tb)
    mlp(xb, tb)
    return own / ((time.perf_counter() - t0) / 2)


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


def problem(dim: int) -> tuple[MLPScore, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MLP score of dimension `dim` (seed 0), x_T, and the batch (xb, tb) it is timed on: batch 1024."""
    torch.manual_seed(0)
    mlp = MLPScore(dim).eval()
    return mlp, torch.randn(1024, dim), torch.randn(1024, dim), torch.rand(1024)


def _share(pkg, name: str, dim: int, inner: int) -> float:
    """In this process: the median over `inner` runs of (own time per evaluation / one MLP call) of sampler `name`
    of package `pkg`, with the solver class that `pkg` registered as 'tsit5'."""
    mlp, x_T, xb, tb = problem(dim)
    with torch.inference_mode():
        call = sampler_call(pkg, name, free_score(mlp, xb, tb), x_T, SOLVERS.get("tsit5"))
        nfe = call().nfe
        return float(np.median([timed_share(call, nfe, mlp, xb, tb) for _ in range(inner)]))


def _in_processes(args) -> None:
    """--processes: every measurement in a fresh process, old and new alternately."""
    with tempfile.TemporaryDirectory() as tmp:
        extract_at(args.rev, Path(tmp))  # once; each worker imports it from there
        print("| d | sampler | own work, old | own work, new | new / old (median of paired ratios) | new lower |")
        print("|---|---|---|---|---|---|")
        for dim in args.dims:
            for name in args.samplers:
                shares = {"old": [], "new": []}
                for _ in range(args.repeats):
                    for which in ("old", "new"):
                        cmd = [sys.executable, __file__, args.rev, "--worker", which, "--old-path", tmp, "--dims",
                               str(dim), "--samplers", name, "--inner", str(args.inner), "--threads", str(args.threads)]
                        shares[which].append(float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
                old, new = np.array(shares["old"]), np.array(shares["new"])
                print(f"| {dim} | {name} | {100 * np.median(old):.1f} % | {100 * np.median(new):.1f} % | "
                      f"{float(np.median(new / old)):.3f} | {int((new < old).sum())} of {len(old)} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare against (e.g. HEAD~1)")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--samplers", nargs="+", default=["adaptive_ode", "adaptive_sde", "heun", "heun_churn"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--processes", action="store_true", help="measure each version in fresh processes")
    parser.add_argument("--inner", type=int, default=15, help="runs timed per process with --processes")
    parser.add_argument("--worker", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--old-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker is not None:  # one measurement, printed for the parent
        if args.worker == "old":
            pkg = import_from(Path(args.old_path))
        else:
            import sdescore as pkg
        print(_share(pkg, args.samplers[0], args.dims[0], args.inner))
        return
    if args.processes:
        _in_processes(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        native = SOLVERS.get("tsit5")
        extract_at(args.rev, Path(tmp))
        old = import_from(Path(tmp))
        old_tsit5 = SOLVERS.get("tsit5")
        if old_tsit5 is not native:  # sdescore registers 'tsit5' only where the name is free
            del SOLVERS["tsit5"]
        import sdescore as new

        new_tsit5 = SOLVERS.get("tsit5")

        print("| d | sampler | nfe old / new | own work, old | own work, new | new / old (median of paired ratios) |")
        print("|---|---|---|---|---|---|")
        for dim in args.dims:
            mlp, x_T, xb, tb = problem(dim)
            with torch.inference_mode():
                free = free_score(mlp, xb, tb)

                for name in args.samplers:
                    calls = {"old": sampler_call(old, name, free, x_T, old_tsit5),
                             "new": sampler_call(new, name, free, x_T, new_tsit5)}
                    nfe = {k: f().nfe for k, f in calls.items()}  # also the warm-up
                    shares = {"old": [], "new": []}
                    for _ in range(args.repeats):
                        for k, f in calls.items():
                            shares[k].append(timed_share(f, nfe[k], mlp, xb, tb))
                    ratio = float(np.median(np.array(shares["new"]) / np.array(shares["old"])))
                    print(f"| {dim} | {name} | {nfe['old']} / {nfe['new']} | {100 * np.median(shares['old']):.1f} % | "
                          f"{100 * np.median(shares['new']):.1f} % | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
