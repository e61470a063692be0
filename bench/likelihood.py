"""Exact log-likelihood: sdescore.log_likelihood against the reference recipe, on a closed-form mixture.

The baseline re-implements score_sde_pytorch's likelihood.py: scipy.integrate.solve_ivp(method='RK45') in the
SDE's time t on a flat numpy state (x, delta_logp), copying the state between numpy and torch at every
evaluation and running the network twice per evaluation (once for the drift, once inside the divergence).
sdescore integrates on torch's side with torchdiffeq, one network pass per evaluation, in its default time
variable, with its default method tsit5 (Tsitouras' 5(4) pair) and with dopri5 (the reference's Dormand–Prince
5(4) pair). All use the exact trace (D vector-Jacobian products), so the error against the analytic density is
the solver's alone; all are given the exact law at T as prior.

Target: the exact score of a centered, anisotropic 3-component Gaussian mixture in d = 8 (validation.mixtures).
1. Work-precision sweep: rtol = atol over 3e-4 .. 1e-6 on several batches, network passes (score evaluations)
   against the RMS error in nats of log p_eps(x); a least-squares line per method; at equal accuracy (the
   reference's error at its default tolerance 1e-5) the ratio of the passes read off the lines.
2. Wall time at 1e-5 with the score made to cost a network (exact score + 0 x a 3-layer MLP of width 1024, so
   that every evaluation and every vector-Jacobian product through it costs a forward and backward pass).
3. The reference's default trace, Hutchinson with one Rademacher probe.

    python bench/likelihood.py OUT_DIR [--batch 64] [--batches 3] [--hidden 1024] [--repeats 3] [--threads 1]

Writes OUT_DIR/likelihood.md and OUT_DIR/likelihood_work_precision.png (about 8 minutes on one CPU thread).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

import sdescore as sds
from mlp import MLPScore
from sdescore.likelihood import ExactTrace, HutchinsonTrace, RademacherProbe, log_likelihood
from validation import GaussianMixture, random_anisotropic

EPS = 1e-5
SWEEP = [3e-4, 2e-4, 1e-4, 5e-5, 3e-5, 2e-5, 1e-5, 5e-6, 3e-6, 2e-6, 1e-6]  # the reference's default 1e-5 among them
REFERENCE = "reference recipe (scipy RK45, t)"
OURS = ("tsit5", "dopri5")  # the default first


class NetworkCostScore:
    """The exact mixture score plus 0 x MLP(x, t): exact values at the cost of a network (forward and backward).

    hidden = 0: the exact score alone (no network), still counting the calls.
    """

    def __init__(self, exact, dim: int, hidden: int):
        self.exact = exact
        self.net = None
        if hidden:
            self.net = MLPScore(dim, hidden).double().requires_grad_(False)
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.net is None:
            return self.exact(x, t)
        return self.exact(x, t) + 0.0 * self.net(x, t)


def reference_likelihood(sde, score, x, *, rtol, atol, eps, prior_logp, probe=None):
    """score_sde_pytorch's likelihood_fn, re-implemented: RK45 on numpy, two network passes per evaluation.

    probe=None: exact trace; a tensor shaped like x: Hutchinson with that fixed probe (the reference's default).
    """
    shape, B = x.shape, x.shape[0]
    ode = sde.probability_flow(score)
    trace, probes = (ExactTrace(), None) if probe is None else (HutchinsonTrace(), probe[None])

    def drift_fn(xx, vec_t):
        return ode.velocity(xx, vec_t)

    def div_fn(xx, vec_t):  # get_div_fn: the drift again, under enable_grad
        with torch.enable_grad():
            xx = xx.clone().requires_grad_(True)
            return trace.divergence(drift_fn(xx, vec_t), xx, probes).detach()

    def ode_func(t, y):
        sample = torch.from_numpy(y[:-B]).reshape(shape).to(x.device, x.dtype)
        vec_t = torch.full((B,), t, dtype=torch.float64, device=x.device)
        with torch.no_grad():
            drift = drift_fn(sample, vec_t).reshape(-1).cpu().numpy()
        logp_grad = div_fn(sample, vec_t).cpu().numpy()
        return np.concatenate([drift, logp_grad], axis=0)

    init = np.concatenate([x.reshape(-1).cpu().numpy(), np.zeros(B)], axis=0)
    sol = solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    zp = sol.y[:, -1]
    z = torch.from_numpy(zp[:-B]).reshape(shape).to(x.device, x.dtype)
    delta_logp = torch.from_numpy(zp[-B:]).to(x.device, x.dtype)
    return prior_logp(z) + delta_logp, sol.nfev


def fit_work_precision(rows):
    """Least-squares line log(RMS error) = a + b log(passes) through a tolerance sweep (all batches together).

    The error at one tolerance scatters by a factor 3-10 between neighbouring tolerances (the signed local errors
    of a dozen steps partly cancel, or not), so a single crossing of two sweeps is luck; the fitted lines compare
    the two methods' work at equal accuracy over the whole range.
    """
    p = np.log([r["passes"] for r in rows])
    e = np.log([r["rms"] for r in rows])
    b, a = np.polyfit(p, e, 1)
    return a, b


def passes_for(fit, target):
    """Passes at which a fitted work-precision line reaches RMS error `target`."""
    a, b = fit
    return float(np.exp((np.log(target) - a) / b))


def passes_from(rows, target):
    """Mean over batches of the passes at the loosest tolerance from which every tighter one of the sweep has an
    RMS error <= target (a second reading of 'equal accuracy', without a fit); None if a batch never gets there."""
    passes = []
    for k in sorted({r["batch"] for r in rows}):
        sweep = sorted((r for r in rows if r["batch"] == k), key=lambda r: -r["tol"])
        first = next((i for i in range(len(sweep)) if all(r["rms"] <= target for r in sweep[i:])), None)
        if first is None:
            return None
        passes.append(sweep[first]["passes"])
    return float(np.mean(passes))


def bootstrap_ratio(ours, ref, target, *, n=2000, seed=0):
    """5 %, 95 % quantiles of passes_ours / passes_ref at `target` over bootstrap resamples of both sweeps' points."""
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n):
        o = [ours[i] for i in rng.integers(0, len(ours), len(ours))]
        r = [ref[i] for i in rng.integers(0, len(ref), len(ref))]
        ratios.append(passes_for(fit_work_precision(o), target) / passes_for(fit_work_precision(r), target))
    return tuple(float(q) for q in np.percentile(ratios, [5, 95]))


def measure(fn, repeats: int):
    """(result of the last run, median wall time in seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="directory for likelihood.md and likelihood_work_precision.png")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3, help="independent batches in the tolerance sweep")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps the timings quiet)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()

    base = random_anisotropic(d=8, n_modes=3, seed=0, spread=1.0, min_std=0.1, max_std=0.5)
    mixture = GaussianMixture(base.weights, base.means - base.mean(), base.covs)
    sdes = {"VP": sds.VPSDE(), "VE": sds.VESDE(), "sub-VP": sds.SubVPSDE()}
    methods = {
        REFERENCE: lambda sde, score, x, tol, prior: reference_likelihood(
            sde, score, x, rtol=tol, atol=tol, eps=EPS, prior_logp=prior),
        **{f"sdescore {m}": (lambda sde, score, x, tol, prior, m=m: (lambda r: (r.logp, r.nfe))(log_likelihood(
            sde, score, x, method=m, rtol=tol, atol=tol, eps=EPS, prior_logp=prior))) for m in OURS},
    }
    sweep, summary, walls, hutch, fits = [], [], [], [], {}
    for name, sde in sdes.items():
        exact = mixture.score_fn(sde)
        prior = mixture.marginal(sde, sde.T).log_prob
        # 1. work-precision sweep with the exact score (passes are counted, not timed)
        for k in range(args.batches):
            x = mixture.marginal(sde, EPS).sample(args.batch, torch.Generator().manual_seed(k))
            truth = mixture.marginal(sde, EPS).log_prob(x)
            for label, run in methods.items():
                for tol in SWEEP:
                    score = NetworkCostScore(exact, mixture.dim, 0)  # counts passes; no network
                    logp, _ = run(sde, score, x, tol, prior)
                    err = logp - truth
                    sweep.append(dict(sde=name, method=label, batch=k, tol=tol, passes=score.calls,
                                      rms=float(err.pow(2).mean().sqrt()), max=float(err.abs().max())))
        rows = {label: [r for r in sweep if r["sde"] == name and r["method"] == label] for label in methods}
        for label in methods:
            fits[name, label] = fit_work_precision(rows[label])
        ref_at = [r for r in rows[REFERENCE] if r["tol"] == 1e-5]
        target = float(np.exp(np.mean(np.log([r["rms"] for r in ref_at]))))  # geometric mean over the batches
        ref_passes = float(np.mean([r["passes"] for r in ref_at]))
        entry = dict(sde=name, target=target, ref_passes=ref_passes, ref_fit=passes_for(fits[name, REFERENCE], target),
                     ref_from=passes_from(rows[REFERENCE], target))
        for m in OURS:
            same = [r for r in rows[f"sdescore {m}"] if r["tol"] == 1e-5]
            entry[m] = dict(same_passes=float(np.mean([r["passes"] for r in same])),
                            same_rms=float(np.exp(np.mean(np.log([r["rms"] for r in same])))),
                            fit=passes_for(fits[name, f"sdescore {m}"], target),
                            ci=bootstrap_ratio(rows[f"sdescore {m}"], rows[REFERENCE], target),
                            from_=passes_from(rows[f"sdescore {m}"], target))
        summary.append(entry)
        print(f"[{time.perf_counter() - start:6.1f}s] {name}: sweep done", flush=True)

        # 2. wall time at the reference's default tolerance, every evaluation costing a network pass
        x = mixture.marginal(sde, EPS).sample(args.batch, torch.Generator().manual_seed(0))
        truth = mixture.marginal(sde, EPS).log_prob(x)
        score = NetworkCostScore(exact, mixture.dim, args.hidden)
        for label, run in methods.items():
            score.calls = 0
            (logp, _), wall = measure(lambda: run(sde, score, x, 1e-5, prior), args.repeats)
            walls.append(dict(sde=name, method=label, passes=score.calls // args.repeats, wall=wall,
                              rms=float((logp - truth).pow(2).mean().sqrt())))

        # 3. the reference's default trace: Hutchinson with one Rademacher probe, the same probe for both
        # log_likelihood draws its probes as RademacherProbe().draw((n_probes, *x.shape), generator): the same tensor
        probe = RademacherProbe().draw((1, *x.shape), torch.Generator().manual_seed(1), x.dtype, x.device)[0]
        tight = log_likelihood(sde, exact, x, trace="hutchinson", rtol=1e-9, atol=1e-9, eps=EPS, prior_logp=prior,
                               generator=torch.Generator().manual_seed(1))
        for label, run in (
            (REFERENCE, lambda: reference_likelihood(
                sde, score, x, rtol=1e-5, atol=1e-5, eps=EPS, prior_logp=prior, probe=probe)),
            ("sdescore (default)", lambda: (lambda r: (r.logp, r.nfe))(log_likelihood(
                sde, score, x, trace="hutchinson", rtol=1e-5, atol=1e-5, eps=EPS, prior_logp=prior,
                generator=torch.Generator().manual_seed(1)))),
        ):
            score.calls = 0
            (logp, evals), wall = measure(run, args.repeats)
            hutch.append(dict(sde=name, method=label, evals=evals, passes=score.calls // args.repeats, wall=wall,
                              solver=float((logp - tight.logp).pow(2).mean().sqrt()),
                              rms=float((logp - truth).pow(2).mean().sqrt())))
        print(f"[{time.perf_counter() - start:6.1f}s] {name}: timings done", flush=True)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plot(sweep, fits, summary, out / "likelihood_work_precision.png")
    lines = [
        "# Exact log-likelihood: sdescore vs the reference recipe",
        "",
        f"Command: `python bench/likelihood.py OUT_DIR --batch {args.batch} --batches {args.batches} --hidden {args.hidden} "
        f"--repeats {args.repeats} --threads {args.threads}` ({time.perf_counter() - start:.0f} s, torch {torch.__version__}).",
        "",
        f"Centered 3-component anisotropic Gaussian mixture, d = 8, float64, exact trace, eps = {EPS:g}, exact law at T "
        "as prior. Network passes = score evaluations (the reference makes two per ODE evaluation). Errors in nats "
        "against log p_eps(x) in closed form, RMS over a batch.",
        "",
        "## At equal accuracy",
        "",
        f"Tolerance sweep rtol = atol in {SWEEP[0]:g} .. {SWEEP[-1]:g} ({len(SWEEP)} values) on {args.batches} batches "
        f"of {args.batch} with the exact score; a least-squares line log(RMS error) vs log(passes) per method. Target "
        "accuracy: the reference's RMS error at its default tolerance 1e-5 (geometric mean over the batches). "
        "Ratio = sdescore's passes / the reference's, both read off their fitted lines at the target; in brackets "
        "its 90 % bootstrap interval (2000 resamples of both sweeps' points).",
        "",
        "| SDE | target RMS err | reference passes at 1e-5 (measured / fitted) | "
        + " | ".join(f"sdescore {m}: passes at target (fitted) | ratio" for m in OURS)
        + " | " + " | ".join(f"{m} at tol 1e-5: passes, RMS err" for m in OURS) + " |",
        "|---|---|---|" + "---|---|" * len(OURS) + "---|" * len(OURS),
    ]
    for e in summary:
        lines.append(
            f"| {e['sde']} | {e['target']:.1e} | {e['ref_passes']:.0f} / {e['ref_fit']:.0f} | "
            + " | ".join(f"{e[m]['fit']:.0f} | {e[m]['fit'] / e['ref_fit']:.3f} [{e[m]['ci'][0]:.3f}, {e[m]['ci'][1]:.3f}]" for m in OURS)
            + " | " + " | ".join(f"{e[m]['same_passes']:.0f}, {e[m]['same_rms']:.1e}" for m in OURS) + " |"
        )
    lines += [
        "",
        "The same comparison without a fit: per batch, the passes at the loosest tolerance from which every tighter "
        "tolerance of the sweep meets the target; mean over the batches.",
        "",
        "| SDE | target RMS err | reference | " + " | ".join(f"sdescore {m} | ratio" for m in OURS) + " |",
        "|---|---|---|" + "---|---|" * len(OURS),
    ]

    def _fmt(v, ref):
        return "not reached | -" if v is None or ref is None else f"{v:.0f} | {v / ref:.3f}"

    for e in summary:
        ref_text = "not reached" if e["ref_from"] is None else f"{e['ref_from']:.0f}"
        lines.append(f"| {e['sde']} | {e['target']:.1e} | {ref_text} | "
                     + " | ".join(_fmt(e[m]["from_"], e["ref_from"]) for m in OURS) + " |")
    lines += [
        "",
        "Fitted lines, log(RMS error) = a + b log(passes):",
        "",
        "| SDE | method | a | b |",
        "|---|---|---|---|",
    ]
    for (name, label), (a, b) in fits.items():
        lines.append(f"| {name} | {label} | {a:.2f} | {b:.2f} |")
    lines += [
        "",
        f"## Wall time at rtol = atol = 1e-5, the score costing a network pass (exact score + 0 x MLP of width {args.hidden})",
        "",
        f"Batch 0, median of {args.repeats} runs on {args.threads} thread(s).",
        "",
        "| SDE | method | network passes | wall time (s) | RMS err |",
        "|---|---|---|---|---|",
    ]
    for r in walls:
        lines.append(f"| {r['sde']} | {r['method']} | {r['passes']} | {r['wall']:.2f} | {r['rms']:.1e} |")
    lines += [
        "",
        "## Hutchinson trace (the reference's default), one Rademacher probe shared by both, rtol = atol = 1e-5",
        "",
        "Solver error: RMS difference from the same estimator integrated at rtol = atol = 1e-9. The error against "
        "the density is dominated by the probe's noise, the same for both.",
        "",
        "| SDE | method | ODE evaluations | network passes | wall time (s) | RMS solver error | RMS error vs density |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in hutch:
        lines.append(
            f"| {r['sde']} | {r['method']} | {r['evals']} | {r['passes']} | {r['wall']:.3f} | {r['solver']:.1e} | {r['rms']:.1e} |"
        )
    lines += [
        "",
        "## The sweep",
        "",
        "| SDE | method | batch | rtol = atol | network passes | RMS error | max error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sweep:
        lines.append(f"| {r['sde']} | {r['method']} | {r['batch']} | {r['tol']:.1e} | {r['passes']} | {r['rms']:.1e} | {r['max']:.1e} |")
    text = "\n".join(lines) + "\n"
    (out / "likelihood.md").write_text(text)
    print("\n".join(lines[:40]))
    print(f"wrote {out / 'likelihood.md'} and {out / 'likelihood_work_precision.png'}")


def plot(sweep, fits, summary, path: Path) -> None:
    """Work-precision diagram: RMS error against network passes, one panel per SDE, with the fitted lines."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["sde"] for e in summary]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharey=True)
    colors = {REFERENCE: "tab:gray", **{f"sdescore {m}": c for m, c in zip(OURS, ("tab:blue", "tab:orange"))}}
    for ax, e in zip(np.atleast_1d(axes), summary):
        for label, color in colors.items():
            rows = [r for r in sweep if r["sde"] == e["sde"] and r["method"] == label]
            p = np.array([r["passes"] for r in rows], dtype=float)
            ax.scatter(p, [r["rms"] for r in rows], s=10, color=color, alpha=0.6, label=label)
            a, b = fits[e["sde"], label]
            grid = np.geomspace(p.min(), p.max(), 50)
            ax.plot(grid, np.exp(a + b * np.log(grid)), color=color)
        ax.axhline(e["target"], color="k", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([50, 100, 200, 400])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{e['sde']}-SDE, d = 8")
        ax.set_xlabel("network passes")
    np.atleast_1d(axes)[0].set_ylabel("RMS error of log p (nats)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
