"""python -m validation: run every check of sdescore against closed forms and print the table.

    python -m validation                 # all checks (a few minutes on 2 CPU cores)
    python -m validation --quick         # the quick subset (under a minute)
    python -m validation --plots out/    # also write the PNG figures to out/
    python -m validation --only converters losses
    python -m validation --only pc_sampler --seeds 1 20   # the same checks for seeds 1..20, summarised per row
    python -m validation --list

Exits with status 1 when a check fails; with --seeds, when a row is flagged (see `validation.checks.seed_study`).
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    from .checks import CHECKS, format_seed_study, format_table, run_checks, seed_study

    parser = argparse.ArgumentParser(prog="python -m validation", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run the quick subset with smaller samples")
    parser.add_argument("--plots", metavar="DIR", default=None, help="write PNG figures to DIR")
    parser.add_argument("--only", nargs="+", metavar="CHECK", default=None, help="run only these checks")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--seeds", type=int, nargs=2, metavar=("FIRST", "LAST"), default=None,
                        help="run the checks once per seed FIRST..LAST and summarise each row over the seeds: how "
                             "often it failed, its worst figure, and whether a test's p-values lean low (instead of "
                             "one table for --seed)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the checks use small tensors, where threads cost more than they give)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for c in CHECKS.values():
            print(f"{c.name:20s} {'quick' if c.quick else 'full ':5s}  {c.description}")
        return 0
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)

    def progress(name, rows):
        bad = sum(r.status == "FAIL" for r in rows)
        secs = sum(r.seconds for r in rows)
        state = "skipped" if rows and all(r.status == "skip" for r in rows) else ("FAILED" if bad else "ok")
        print(f"  {name:20s} {state:8s} {secs:6.1f}s", file=sys.stderr, flush=True)

    if args.seeds is not None:
        first, last = args.seeds
        if not 0 <= first < last:
            parser.error(f"--seeds needs 0 <= FIRST < LAST (two seeds at least), got {first} {last}")
        if args.plots:
            parser.error("--seeds draws no figures; drop --plots")
        seeds = list(range(first, last + 1))
        runs = []
        for seed in seeds:
            print(f"seed {seed}", file=sys.stderr, flush=True)
            try:
                runs.append(run_checks(args.only, quick=args.quick, seed=seed, progress=progress))
            except ValueError as err:
                parser.error(str(err))
        study = seed_study(runs)
        print(format_seed_study(study, seeds))
        return 1 if any(r.flagged for r in study) else 0
    try:
        rows = run_checks(args.only, quick=args.quick, plots=args.plots, seed=args.seed, progress=progress)
    except ValueError as err:
        parser.error(str(err))
    print(format_table(rows))
    if args.plots:
        print(f"figures written to {args.plots}")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
