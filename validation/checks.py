"""The registry of checks: every identity sdescore relies on, measured against closed forms.

Each check is a function of a `Context` that records rows (check, SDE, measure, figure, tolerance, pass/fail,
time). `run_checks` runs a selection and `format_table` prints it; `python -m validation` does both. Statistical
rows state their null level: a p-value row passes when p >= LEVEL (1e-3 per row); a z-score row passes when
|z| <= Z_MAX (4.5, a two-sided level of 7e-6 per z). Seeds are fixed, so a run is reproducible.

Family-wise level: with k p-value rows at LEVEL (the samplers' sample rows, three tests each, the ODE encodings
and the Langevin weights; some 75 in the full run at this writing) and the z rows' 7e-6 each, a correct sdescore
run with a new `--seed` fails some row by chance with probability at most about k x 1e-3 (Bonferroni; the sliced
KS rows are conservative, the weight rows asymptotic): several percent. At the fixed default seed the run is deterministic: in CI a failure is
a real change, not chance.

The samplers' sample rows test three things, each at LEVEL: the 1-D projections (sliced KS), the mass of each mode
(mode weights) and the spread within the modes (KS of log p_eps(x) against exact draws); the first two cannot see
modes that are too wide or too narrow.

Checks that need a function another part of sdescore provides name it in `needs`; while `sdescore` lacks it,
the check is skipped with the reason 'not available yet'.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import scipy.stats as sps
import torch
from torch import Tensor

import sdescore
from sdescore import SDE, VESDE, VPSDE, SampleResult, SubVPSDE
from sdescore._checks import check_int, check_real

from .mixtures import DiffusedMixture, GaussianMixture, ncsn_toy, random_anisotropic, ring, single_gaussian
from .stats import TestResult, check_level, log_density_ks_test, mode_weight_test, sliced_ks_test

__all__ = [
    "Row",
    "Check",
    "Context",
    "CHECKS",
    "SDES",
    "LEVEL",
    "Z_MAX",
    "U",
    "ROUNDOFF",
    "ROUNDOFF_UNITS",
    "register",
    "run_checks",
    "format_table",
    "fitted_order",
    "SamplerReport",
    "check_sampler",
    "SeedStudyRow",
    "seed_study",
    "format_seed_study",
]

f64 = torch.float64
LEVEL = 1e-3
Z_MAX = 4.5
# Float64 identities. Each side of an identity row is at most a few dozen float64 operations on the same inputs,
# each rounding with a relative error of at most the unit roundoff U = 2^-53 of the largest term it combines, so
# the two sides differ by a modest multiple of U in units of that term (Higham 2002, ch. 3), times the
# amplification kappa of any cancellation the row names. The rows allow ROUNDOFF_UNITS = 256 such units
# (2.8e-14): 28 U is the largest measured over seeds 0-2, and 34 U kappa for the posterior covariance over seeds
# 0-4; a float32 step anywhere (1e-7) fails them by six orders of magnitude.
U = 2.0**-53
ROUNDOFF_UNITS = 256
ROUNDOFF = ROUNDOFF_UNITS * U
EPS = 1e-3  # end time of the samplers checked here

SDES: dict[str, Callable[[], SDE]] = {
    "VE": lambda: VESDE(sigma_min=0.01, sigma_max=50.0),
    "VP": lambda: VPSDE(beta_min=0.1, beta_max=20.0),
    "subVP": lambda: SubVPSDE(beta_min=0.1, beta_max=20.0),
}


# ---------------------------------------------------------------------- rows, context, registry
@dataclass(frozen=True)
class Row:
    """One measured figure against its tolerance. status: 'pass', 'FAIL' or 'skip'."""

    check: str
    sde: str
    measure: str
    figure: float
    tolerance: str
    status: str
    seconds: float
    note: str = ""
    null_p: bool = False  # the figure is the p-value of a test whose null hypothesis holds (uniform or conservative)

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


class Context:
    """What a check sees: the mode (quick or full), where plots go, the seed, and the recorders of rows."""

    def __init__(self, *, quick: bool = False, plots: str | Path | None = None, seed: int = 0):
        self.quick = bool(quick)
        self.plots = None if plots is None else Path(plots)
        self.seed = seed
        self.rows: list[Row] = []
        self.check = ""
        self._clock = time.perf_counter()

    def pick(self, quick: Any, full: Any) -> Any:
        """The quick-mode value or the full one."""
        return quick if self.quick else full

    def generator(self, *salt: Any) -> torch.Generator:
        """A CPU generator seeded from the run's seed, the check's name and `salt`: reproducible and independent."""
        key = repr((self.seed, self.check) + salt).encode()
        return torch.Generator().manual_seed(zlib.crc32(key))

    def restart_clock(self) -> None:
        self._clock = time.perf_counter()

    def _add(self, sde: str, measure: str, figure: float, tolerance: str, ok: bool, note: str, null_p: bool = False) -> None:
        now = time.perf_counter()
        figure = float(figure)
        status = "pass" if ok and not math.isnan(figure) else "FAIL"
        self.rows.append(Row(self.check, sde, measure, figure, tolerance, status, now - self._clock, note, null_p))
        self._clock = now

    def at_most(self, sde: str, measure: str, figure: float, tol: float, note: str = "") -> None:
        self._add(sde, measure, figure, f"<= {tol:.3g}", float(figure) <= tol, note)

    def at_least(self, sde: str, measure: str, figure: float, tol: float, note: str = "") -> None:
        self._add(sde, measure, figure, f">= {tol:.3g}", float(figure) >= tol, note)

    def near(self, sde: str, measure: str, figure: float, target: float, tol: float, note: str = "") -> None:
        self._add(sde, measure, figure, f"{target:g} +- {tol:g}", abs(float(figure) - target) <= tol, note)

    def holds(self, sde: str, measure: str, ok: bool, note: str = "") -> None:
        """A yes/no identity (figure 0 when it holds, 1 when not)."""
        self._add(sde, measure, 0.0 if ok else 1.0, "== 0", bool(ok), note)

    def accepts(self, sde: str, what: str, result: TestResult, level: float = LEVEL, note: str = "") -> None:
        """A statistical test whose null hypothesis (the samples follow the law) must not be rejected."""
        self._add(sde, f"p, {result.name}: {what}", result.p_value, f">= {level:g}", result.passed(level), note, True)

    def rejects(self, sde: str, what: str, result: TestResult, level: float = LEVEL, note: str = "") -> None:
        """A statistical test whose null hypothesis must be rejected (a method expected to fail does)."""
        self._add(sde, f"p, {result.name}: {what}", result.p_value, f"< {level:g}", not result.passed(level), note)

    def skip(self, reason: str) -> None:
        self.rows.append(Row(self.check, "-", "-", float("nan"), "-", "skip", 0.0, reason))

    def fail(self, reason: str) -> None:
        now = time.perf_counter()
        self.rows.append(Row(self.check, "-", "error", float("nan"), "-", "FAIL", now - self._clock, reason))
        self._clock = now

    def plot_path(self, name: str) -> Path | None:
        """Where to write a figure, or None when plots are off."""
        if self.plots is None:
            return None
        self.plots.mkdir(parents=True, exist_ok=True)
        return self.plots / f"{name}.png"


@dataclass(frozen=True)
class Check:
    """A named check: `run(ctx)` records rows; `quick` puts it in the --quick subset; `needs` names sdescore functions."""

    name: str
    run: Callable[[Context], None]
    quick: bool
    needs: tuple[str, ...]
    description: str


CHECKS: dict[str, Check] = {}


def register(name: str, *, quick: bool = False, needs: Sequence[str] = ()) -> Callable:
    """Decorator adding a check function to CHECKS under `name`."""

    def add(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        doc = (fn.__doc__ or name).strip().splitlines()[0]
        CHECKS[name] = Check(name, fn, quick, tuple(needs), doc)
        return fn

    return add


def run_checks(
    names: Iterable[str] | None = None,
    *,
    quick: bool = False,
    plots: str | Path | None = None,
    seed: int = 0,
    progress: Callable[[str, list[Row]], None] | None = None,
) -> list[Row]:
    """Run the checks named (default: all, or the quick subset with quick=True) and return their rows.

    An exception inside a check becomes a FAIL row carrying its message; the other checks still run.
    `progress(name, rows)` is called after each check with that check's rows.
    """
    seed = check_int("seed", seed, minimum=0)
    if names is None:
        selected = [c for c in CHECKS.values() if c.quick or not quick]
    else:
        names = list(names)
        unknown = [n for n in names if n not in CHECKS]
        if unknown:
            raise ValueError(f"unknown checks {unknown}; the checks are {sorted(CHECKS)}.")
        selected = [CHECKS[n] for n in names]
    ctx = Context(quick=quick, plots=plots, seed=seed)
    for chk in selected:
        start = len(ctx.rows)
        ctx.check = chk.name
        ctx.restart_clock()
        missing = [n for n in chk.needs if not hasattr(sdescore, n)]
        if missing:
            ctx.skip("not available yet: " + ", ".join(f"sdescore.{n}" for n in missing))
        else:
            try:
                chk.run(ctx)
            except Exception as err:  # a broken check is a failed check, and the others still run
                ctx.fail(f"{type(err).__name__}: {err}")
        if progress is not None:
            progress(chk.name, ctx.rows[start:])
    return ctx.rows


def _table(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a plain-text table: columns as wide as their widest cell, the third (the measure) cut at 100."""
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i]) for i in range(len(head))]
    widths[2] = min(widths[2], 100)
    line = lambda cells: "  ".join(str(c)[: widths[i]].ljust(widths[i]) for i, c in enumerate(cells))  # noqa: E731
    return [line(head), line("-" * w for w in widths)] + [line(b) for b in body]


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table of the rows and a summary line."""
    head = ("check", "SDE", "measure", "figure", "tolerance", "result", "time")
    body = [
        (r.check, r.sde, r.measure + (f"  [{r.note}]" if r.note else ""), "-" if math.isnan(r.figure) else f"{r.figure:.3g}",
         r.tolerance, r.status, f"{r.seconds:.1f}s")
        for r in rows
    ]
    out = _table(head, body)
    n_fail = sum(r.status == "FAIL" for r in rows)
    n_skip = sum(r.status == "skip" for r in rows)
    out.append(f"\n{len(rows) - n_fail - n_skip} passed, {n_fail} failed, {n_skip} skipped, "
               f"{sum(r.seconds for r in rows):.1f}s")
    return "\n".join(out)


# ---------------------------------------------------------------------- the same checks over many seeds
@dataclass(frozen=True)
class SeedStudyRow:
    """One row of the checks followed over seeds: how often it failed, its worst figure, and for a test whose null
    hypothesis holds (`Row.null_p`) the one-sided Kolmogorov–Smirnov p-value of its p-values against U(0, 1),
    small when they lean low (a bias a single run may not show). `flagged` as `seed_study` decides."""

    check: str
    sde: str
    measure: str
    tolerance: str
    seeds: int
    failures: int
    worst: float
    uniformity_p: float | None
    flagged: bool


def _worst(figures: Sequence[float], tolerance: str) -> float:
    """The figure nearest to failing: the largest for '<= tol', '< tol' and '== 0', the smallest for '>= tol', the
    farthest from the target for 'target +- tol'."""
    if tolerance.startswith(">="):
        return min(figures)
    if " +- " in tolerance:
        target = float(tolerance.split(" +- ")[0])
        return max(figures, key=lambda f: abs(f - target))
    return max(figures)


def seed_study(runs: Sequence[Sequence[Row]], level: float = LEVEL) -> list[SeedStudyRow]:
    """Summarise the rows of the same checks run with different seeds (`runs`: one list of rows per seed).

    A row is flagged when it failed in any seed, except a p-value row of a true null hypothesis, which fails by
    chance at rate <= level: that is flagged when its p-values lean low, the one-sided KS test of them against
    U(0, 1) (alternative: stochastically smaller; a conservative test passes it) rejecting at `level`. Rows are
    matched by (check, SDE, measure); one missing from some seed's run is summarised over the seeds that have it.
    """
    level = check_level(level)
    grouped: dict[tuple[str, str, str], list[Row]] = {}
    for rows in runs:
        for r in rows:
            if r.status != "skip":
                grouped.setdefault((r.check, r.sde, r.measure), []).append(r)
    out = []
    for (check, sde, measure), rows in grouped.items():
        figures = [r.figure for r in rows]
        failures = sum(r.failed for r in rows)
        uniformity = None
        if all(r.null_p for r in rows) and not any(math.isnan(f) for f in figures):
            uniformity = float(sps.kstest(figures, "uniform", alternative="greater").pvalue)
            flagged = uniformity < level
        else:
            flagged = failures > 0
        out.append(SeedStudyRow(check, sde, measure, rows[0].tolerance, len(rows), failures,
                                _worst(figures, rows[0].tolerance), uniformity, flagged))
    return out


def format_seed_study(rows: Sequence[SeedStudyRow], seeds: Sequence[int]) -> str:
    """A plain-text table of `seed_study`'s rows and a summary line."""
    head = ("check", "SDE", "measure", "seeds", "failed", "worst", "tolerance", "p-values uniform (1-sided KS p)", "")
    body = [(r.check, r.sde, r.measure, str(r.seeds), str(r.failures), f"{r.worst:.3g}", r.tolerance,
             "-" if r.uniformity_p is None else f"{r.uniformity_p:.3g}", "FLAG" if r.flagged else "")
            for r in rows]
    out = _table(head, body)
    n_flag = sum(r.flagged for r in rows)
    out.append(f"\n{len(rows)} rows over seeds {seeds[0]}-{seeds[-1]}: {n_flag} flagged (a row without p-values "
               f"failed in some seed, or a row's p-values lean low at {LEVEL:g})")
    return "\n".join(out)


# ---------------------------------------------------------------------- helpers
def fitted_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope p of log(error) = c - p log(steps): the measured order of convergence."""
    x = torch.log(torch.tensor([float(s) for s in steps], dtype=f64))
    y = torch.log(torch.tensor([float(e) for e in errors], dtype=f64))
    xc = x - x.mean()
    return float(-(xc * (y - y.mean())).sum() / (xc * xc).sum())


def _samples_of(out: Any, where: str) -> Tensor:
    x = out.x if isinstance(out, SampleResult) else out
    if not isinstance(x, Tensor):
        raise TypeError(f"{where} must return a tensor or a SampleResult, got {type(out).__name__}.")
    return x


def _sdes(ctx: Context, quick_names: Sequence[str] = ("VE", "VP", "subVP")) -> list[tuple[str, SDE]]:
    names = quick_names if ctx.quick else tuple(SDES)
    return [(n, SDES[n]()) for n in names]


def _rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b|: a normwise relative error that stays meaningful where b vanishes."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def _in_units_of(a: Tensor, b: Tensor, scale: Tensor, ref: Tensor) -> float:
    """max_i ||scale_i (a_i - b_i)|| / ||ref_i||: the error of a term of an identity in units of its largest term."""
    return float(((scale[:, None] * (a - b)).norm(dim=1) / ref.norm(dim=1).clamp(min=1e-300)).max())


def _drift_coefficient(sde: SDE, t: Tensor) -> Tensor:
    """f(t) of a linear drift f(x, t) = f(t) x, shape (B,)."""
    return sde.f(torch.ones(t.shape[0], 1, dtype=f64), t)[:, 0]


def _noisy_points(target: GaussianMixture, sde: SDE, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """x_t = alpha x0 + std z with x0 ~ target and one time per sample, t ~ U(EPS, T)."""
    t = EPS + (sde.T - EPS) * torch.rand(n, generator=gen, dtype=f64)
    x0 = target.sample(n, gen)
    alpha, std = sde.kernel(t)
    return alpha[:, None] * x0 + std[:, None] * torch.randn(x0.shape, generator=gen, dtype=f64), t


# ---------------------------------------------------------------------- symbolic identities
@register("symbolic", quick=True)
def _symbolic(ctx: Context) -> None:
    """Kernels from the moment ODEs (sympy) equal the paper's and the torch code, and so do f, g and the prior density;
    Fokker-Planck, reverse-SDE, PF, DSM identities."""
    from . import symbolic as sym

    for name, residual in sym.general_identities().items():
        ctx.holds("any linear", f"{name} (residual simplifies to 0)", residual == 0, "f, g, alpha, var generic")
    for name, sde in _sdes(ctx):
        sch = sym.schedule(sde)
        kernel = sch.derive()
        ctx.holds(name, "moment ODEs and initial values hold", all(r == 0 for r in kernel.moment_ode_residuals()),
                  f"var(0) = {kernel.var0}")
        ctx.holds(name, "derived kernel == paper's closed form",
                  sym.symbolically_equal(kernel.alpha, sch.alpha) and sym.symbolically_equal(kernel.variance, sch.variance))
        ctx.at_most(name, "torch kernel & marginal_prob vs closed form (max rel err)",
                    sym.kernel_error(sde, kernel, sch.params), ROUNDOFF)
        ctx.at_most(name, "torch f, linear_drift and g vs the schedule's f(t), g(t) (max rel err)",
                    sym.coefficient_error(sde, sch), ROUNDOFF, "the kernel rows test the closed forms; this, the SDE itself")
        z = sde.prior_sampling((64, 3), generator=ctx.generator(name, "prior"), dtype=f64)
        want = -0.5 * (z / sde.prior_std).pow(2).sum(1) - 3 * math.log(sde.prior_std) - 1.5 * math.log(2 * math.pi)
        ctx.at_most(name, "prior_logp vs log N(z; 0, prior_std^2 I) (max rel err)", _rel(sde.prior_logp(z), want), ROUNDOFF)
        if not ctx.quick:
            for label, fn in (("Fokker-Planck", sym.fokker_planck_residual),
                              ("probability flow keeps p_t", sym.probability_flow_residual),
                              ("reverse SDE keeps p_t", sym.reverse_sde_residual)):
                ctx.holds(name, f"{label} for this schedule", sym.vanishes(fn(kernel), sch.params), "40 digits, 8 points")


# ---------------------------------------------------------------------- the kernel against the forward SDE
def _em_moments(sde: SDE, n: int, var0: float, at: Sequence[int]) -> dict[int, tuple[float, float]]:
    """Exact mean coefficient and variance of Euler–Maruyama with n steps on [0, T] for dx = f(t) x dt + g(t) dw:
    m <- (1 + f h) m, v <- (1 + f h)^2 v + g^2 h, from m = 1, v = var0; recorded after the steps listed in `at`."""
    h = sde.T / n
    tk = torch.arange(n, dtype=f64) * h
    a = (1.0 + _drift_coefficient(sde, tk) * h).tolist()
    g2h = (sde.g(tk) ** 2 * h).tolist()
    m, v, out = 1.0, var0, {}
    for k in range(n):
        m, v = a[k] * m, a[k] * a[k] * v + g2h[k]
        if k + 1 in at:
            out[k + 1] = (m, v)
    return out


@register("kernel_simulation", quick=True)
def _kernel_simulation(ctx: Context) -> None:
    """The Gaussian kernel (sde.kernel) matches an Euler–Maruyama simulation of the forward SDE from its f and g, and
    the exact EM moments extrapolated to h -> 0."""
    N = ctx.pick(1 << 13, 1 << 15)
    x0 = 1.5
    series = []
    for name, sde in _sdes(ctx):
        times = torch.tensor([0.0, 0.5 * sde.T, sde.T], dtype=f64)
        alpha, std = sde.kernel(times)
        var0 = float(std[0]) ** 2  # the law at t = 0 is the data smoothed by std(0) (VE: sigma_min, SMLD convention)
        # the fewest steps whose EM bias (exact, from the moment recursion) is below a quarter standard error
        for n in (500, 1000, 2000, 4000, 8000, 16000):
            mom = _em_moments(sde, n, var0, (n // 2, n))
            ok = True
            for k, (m, v) in mom.items():
                i = 1 if k == n // 2 else 2
                se_m, se_v = float(std[i]) / math.sqrt(N), float(std[i]) ** 2 * math.sqrt(2.0 / N)
                ok &= abs(m - float(alpha[i])) * x0 <= se_m / 4 and abs(v - float(std[i]) ** 2) <= se_v / 4
            if ok:
                break
        ctx.holds(name, "EM moment bias below a quarter standard error within 16000 steps", ok,
                  f"{n} steps" if ok else "not reached: f, g and the kernel disagree, or the kernel converges slowly")
        if not ok:
            continue
        gen = ctx.generator(name)
        B, d = N // 8, 8
        x = float(alpha[0]) * x0 + float(std[0]) * torch.randn(B, d, generator=gen, dtype=f64)
        h = sde.T / n
        zs = []
        for k in range(n):
            t = torch.full((B,), k * h, dtype=f64)
            x = x + sde.f(x, t) * h + sde.g(t)[:, None] * (math.sqrt(h) * torch.randn(B, d, generator=gen, dtype=f64))
            if k + 1 in (n // 2, n):
                i = 1 if k + 1 == n // 2 else 2
                a, s = float(alpha[i]), float(std[i])
                mean, var = float(x.mean()), float(x.var())
                zs += [(mean - a * x0) / (s / math.sqrt(N)), (var - s * s) / (s * s * math.sqrt(2.0 / N))]
        ctx.at_most(name, "forward EM simulation vs kernel mean & var at T/2, T (max |z|)", max(map(abs, zs)), Z_MAX,
                    f"{n} steps, N={N}, EM bias < SE/4")
        steps = [64, 128, 256, 512, 1024]
        errs = []
        for n in steps:
            m, v = _em_moments(sde, n, var0, (n,))[n]
            errs.append(max(abs(m / float(alpha[2]) - 1), abs(v / float(std[2]) ** 2 - 1)))
        order = fitted_order(steps, errs)
        series.append((name, steps, errs, order, 1.0))
        ctx.near(name, "EM moments -> kernel at T: fitted weak order", order, 1.0, 0.1, "exact EM moment recursion")
        # The EM moments' error expands in powers of h (smooth coefficients): Richardson's eliminations of the h, h^2
        # and h^3 terms over 2048 to 16384 steps leave O(h^4) and rounding, 3e-13 here: f and g alone must give the
        # kernel to 1e-10.
        table = [_em_moments(sde, n, var0, (n,))[n] for n in (2048, 4096, 8192, 16384)]
        for k in (1, 2, 3):
            table = [tuple((2**k * b - a) / (2**k - 1) for a, b in zip(lo, hi)) for lo, hi in zip(table, table[1:])]
        (m_x, v_x), = table
        err = max(abs(m_x / float(alpha[2]) - 1), abs(v_x / float(std[2]) ** 2 - 1))
        ctx.at_most(name, "EM moments extrapolated to h -> 0 (Richardson, 2048-16384 steps) vs kernel at T (max rel err)",
                    err, 1e-10, "from f and g alone: g scaled by 1 + 1e-9 fails it")
    path = ctx.plot_path("kernel_forward_em_order")
    if path is not None:
        from .plots import plot_convergence

        plot_convergence(path, series, title="forward Euler–Maruyama moments -> kernel at T", ylabel="relative error")


# ---------------------------------------------------------------------- closed forms and converters
@register("mixture_identities", quick=True)
def _mixture_identities(ctx: Context) -> None:
    """The mixture's closed forms agree with autograd: score = grad log p_t, Cov[x0|x_t] = second-order Tweedie."""
    target = random_anisotropic(3, 3, seed=11)
    for name, sde in _sdes(ctx):
        p = target.diffuse(sde)
        x, t = _noisy_points(target, sde, 64, ctx.generator(name))
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(p.log_prob(x, t).sum(), x)
        ctx.at_most(name, "score vs autograd of log p_t (max rel err)", _rel(p.score(x, t), grad), ROUNDOFF)
        x = x.detach()[:6]
        cov = p.posterior_cov(x, t[:6])
        alpha, std = sde.kernel(t[:6])
        errs = []
        for i in range(6):
            H = torch.autograd.functional.hessian(lambda z: p.log_prob(z[None], t[i : i + 1]).sum(), x[i])
            A = std[i] ** 2 * H
            want = std[i] ** 2 / alpha[i] ** 2 * (torch.eye(3, dtype=f64) + A)
            # I + std^2 H cancels (A is near -I where the posterior is narrow): kappa = (1 + max|A|) / max|I + A|
            kappa = float((1 + A.abs().max()) / (torch.eye(3, dtype=f64) + A).abs().max())
            errs.append(_rel(cov[i], want) / (U * kappa))
        ctx.at_most(name, "posterior_cov vs (std^2/alpha^2)(I + std^2 Hess log p_t): max rel err / (U kappa)", max(errs),
                    ROUNDOFF_UNITS, "kappa: the cancellation in I + std^2 Hess")


@register("converters", quick=True)
def _converters(ctx: Context) -> None:
    """sdescore's converters (score_from_eps, eps_from_score, score_from_denoiser, denoiser_from_score) equal the closed forms."""
    targets = {"ring": ring(), "aniso-4d": random_anisotropic(4, 3, seed=0)}
    for name, sde in _sdes(ctx):
        for tname, target in targets.items():
            p = target.diffuse(sde)
            x, t = _noisy_points(target, sde, 512, ctx.generator(name, tname))
            s, e, D = p.score(x, t), p.eps(x, t), p.denoiser(x, t)
            alpha, std = sde.kernel(t)
            # Tweedie: x = alpha D - std^2 s and eps = -std s. The denoiser converters cancel terms of size |x|, so
            # their errors are measured in units of |x| (near t = 0 sub-VP has std^2 ~ 1e-8: digits are lost as 1/std^2).
            err = max(
                _rel(sdescore.score_from_eps(sde, p.eps)(x, t), s),
                _rel(sdescore.eps_from_score(sde, p.score)(x, t), e),
                _in_units_of(sdescore.score_from_denoiser(sde, p.denoiser)(x, t), s, std**2, x),
                _in_units_of(sdescore.denoiser_from_score(sde, p.score)(x, t), D, alpha, x),
            )
            ctx.at_most(name, f"converters vs Tweedie closed forms, {tname} (max err, units of |x|)", err, ROUNDOFF)
    path = ctx.plot_path("score_field_ring_vp")
    if path is not None:
        from .plots import plot_score_field

        sde = SDES["VP"]()
        p = ring().diffuse(sde)
        plot_score_field(path, p, [0.01, 0.1, 0.3], other=sdescore.score_from_denoiser(sde, p.denoiser),
                         other_label="score_from_denoiser(exact D)", title="VP, ring: analytic score vs converted denoiser")


# ---------------------------------------------------------------------- losses
def _gaussian_dsm_floor(p: DiffusedMixture, t: Tensor) -> Tensor:
    """E ||std s(x_t) + z||^2 / 2 at the exact score of a Gaussian: (d - std^2 tr C(t)^{-1}) / 2, shape (B,).

    Since E[z | x_t] = -std s(x_t): E||std s + z||^2 = d - std^2 E||s||^2, and E||s||^2 = tr C^{-1} for N(m, C)."""
    alpha, std = p.kernel(t)
    lam = p.mixture.eigenvalues[0]
    c = alpha[:, None] ** 2 * lam + std[:, None] ** 2
    return 0.5 * (p.mixture.dim - (std[:, None] ** 2 / c).sum(1))


def _z_mean(values: Tensor, expected: Tensor) -> float:
    """z-score of mean(values) against mean(expected), with the standard error of the values."""
    n = values.shape[0]
    return float((values.mean() - expected.mean()) / (values.std() / math.sqrt(n)))


@register("losses", quick=True, needs=("dsm_loss", "eps_loss", "ncsn_loss"))
def _losses(ctx: Context) -> None:
    """DSM, epsilon and NCSN losses: the exact score is their stationary point, their floor is the closed form, and
    each per-sample value is lambda ||residual||^2 / 2 on given times and noise."""
    gauss = random_anisotropic(3, 1, seed=5)
    mix = ring()
    n_t, reps = 32, ctx.pick(128, 1024)
    for name, sde in _sdes(ctx):
        gen = ctx.generator(name)
        t = (EPS + (sde.T - EPS) * (torch.arange(n_t, dtype=f64) + 0.5) / n_t).repeat(reps)
        x0 = gauss.sample(t.shape[0], gen)
        p = gauss.diffuse(sde)
        floor = _gaussian_dsm_floor(p, t)
        g2_over_std2 = sde.g(t) ** 2 / sde.kernel(t)[1] ** 2
        for weighting, expected in (("sigma2", floor), ("likelihood", g2_over_std2 * floor)):
            loss = sdescore.dsm_loss(sde, p, x0, weighting=weighting, t=t, reduce="none", generator=gen)
            ctx.at_most(name, f"dsm_loss({weighting}) at the exact score vs closed-form floor (|z|)",
                        abs(_z_mean(loss, expected)), Z_MAX, "Gaussian, d=3")
        loss = sdescore.eps_loss(sde, p.eps, x0, t=t, reduce="none", generator=gen)
        ctx.at_most(name, "eps_loss at the exact eps vs closed-form floor (|z|)", abs(_z_mean(loss, floor)), Z_MAX)
        # stationarity on a mixture: d/d delta of the loss of s* + delta h vanishes in expectation at delta = 0
        q = mix.diffuse(sde)
        x0 = mix.sample(t.shape[0], gen)
        z = torch.randn(x0.shape, generator=gen, dtype=f64)
        A = torch.randn(2, 2, generator=gen, dtype=f64)
        b = torch.randn(2, generator=gen, dtype=f64)

        def perturbed(delta: float, base: float = 0.0):
            def score(x, tt):
                return q(x, tt) + (delta + base) * (x @ A + b)

            return sdescore.dsm_loss(sde, score, x0, t=t, noise=z, reduce="none")

        # the per-sample values themselves, on given (t, z) and the ring's score (residuals far from 0): each loss is
        # lambda ||residual||^2 / 2 as documented, to rounding (the floor rows above test the mathematics, with
        # Monte-Carlo error; these see a wrong weighting, time or noise at once)
        alpha, std = sde.kernel(t)
        x_t = alpha[:, None] * x0 + std[:, None] * z
        resid = (q(x_t, t) + z / std[:, None]).pow(2).sum(1)
        for weighting, lam in (("sigma2", std**2), ("likelihood", sde.g(t) ** 2)):
            got = sdescore.dsm_loss(sde, q, x0, weighting=weighting, t=t, noise=z, reduce="none")
            ctx.at_most(name, f"dsm_loss({weighting}) = lambda ||s(x_t) + z/std||^2 / 2 per sample (max rel err)",
                        _rel(got, 0.5 * lam * resid), ROUNDOFF, "given t and z, ring")
        got = sdescore.eps_loss(sde, q.eps, x0, t=t, noise=z, reduce="none")
        ctx.at_most(name, "eps_loss = ||eps(x_t) - z||^2 / 2 per sample (max rel err)",
                    _rel(got, 0.5 * (q.eps(x_t, t) - z).pow(2).sum(1)), ROUNDOFF, "given t and z, ring")
        for base, must in ((0.0, "exact"), (0.2, "shifted")):
            slope = (perturbed(1.0, base) - perturbed(-1.0, base)) / 2  # per-sample dL/d delta (the loss is quadratic)
            zs = float(slope.mean() / (slope.std() / math.sqrt(slope.shape[0])))
            if must == "exact":
                ctx.at_most(name, "dsm_loss: dL/d delta at the exact score, ring (|z|)", abs(zs), Z_MAX)
            else:
                ctx.at_least(name, "dsm_loss: dL/d delta at a shifted score, ring (|z|, power)", abs(zs), Z_MAX)
    # NCSN: sigma-conditioned, lambda(sigma) = sigma^2
    L = 10
    sigmas = torch.exp(torch.linspace(math.log(50.0), math.log(0.01), L, dtype=f64))
    n = n_t * reps
    labels = torch.arange(n) % L
    gen = ctx.generator("ncsn")
    x0 = gauss.sample(n, gen)
    noised = gauss.noised()
    loss = sdescore.ncsn_loss(noised, x0, sigmas, labels, reduce="none", generator=gen)
    ctx.at_most("NCSN", "ncsn_loss at the exact score vs closed-form floor (|z|)",
                abs(_z_mean(loss, _gaussian_dsm_floor(noised, sigmas[labels]))), Z_MAX)
    ring_noised = mix.noised()
    x0 = mix.sample(n, gen)
    z = torch.randn(x0.shape, generator=gen, dtype=f64)
    s = sigmas[labels][:, None]
    got = sdescore.ncsn_loss(ring_noised, x0, sigmas, labels, noise=z, reduce="none")
    want = 0.5 * (s * ring_noised(x0 + s * z, s[:, 0]) + z).pow(2).sum(1)
    ctx.at_most("NCSN", "ncsn_loss = ||sigma s(x0 + sigma z, sigma) + z||^2 / 2 per sample (max rel err)", _rel(got, want),
                ROUNDOFF, "given labels and z, ring")


# ---------------------------------------------------------------------- samplers from the exact score
def _spread_test(x: Tensor, law: GaussianMixture, gen: torch.Generator) -> TestResult:
    """The spread of samples x within the modes of a law: KS of log p(x) against 10 n exact draws."""
    return log_density_ks_test(x, law, n_reference=10 * x.shape[0], generator=gen)


def _spread_note(result: TestResult) -> str:
    return f"mean log p {result.detail['mean_log_p']:.3f}, exact {result.detail['reference_mean_log_p']:.3f}"


def _law_tests(x: Tensor, law: GaussianMixture, gen: torch.Generator) -> tuple[TestResult, TestResult, TestResult]:
    """The three tests of samples x against a law, in this order from one generator: the 1-D projections (sliced KS),
    the mass of each mode (mode weights) and the spread within the modes (`_spread_test`)."""
    return (sliced_ks_test(x, law, generator=gen), mode_weight_test(x, law, generator=gen), _spread_test(x, law, gen))


def _sample_rows(ctx: Context, name: str, sde: SDE, target: GaussianMixture, x: Tensor, what: str) -> None:
    """Three rows, each at LEVEL: `_law_tests` against the exact p_eps."""
    ks, w, spread = _law_tests(x, target.marginal(sde, EPS), ctx.generator(name, what, "test"))
    ctx.accepts(name, what, ks)
    ctx.accepts(name, what, w, note=f"max |w - w_true| = {w.detail['max_abs_error']:.3f}")
    ctx.accepts(name, what, spread, note=_spread_note(spread))


@register("reverse_sde", quick=True)
def _reverse_sde(ctx: Context) -> None:
    """Reverse-SDE samples (sde.reverse(score).sample, torchsde) from the exact score follow the mixture at t = eps."""
    target = ring()
    n = ctx.pick(1000, 2000)
    # steps per method: the higher-order methods cost more per step and need fewer of them
    methods = ctx.pick({"euler": 250}, {"euler": 1000, "heun": 500, "srk": 250})
    shown = {}
    for name, sde in _sdes(ctx):
        p = target.score_fn(sde)
        for method, steps in methods.items():
            gen = ctx.generator(name, method)
            x_T = sde.prior_sampling((n, 2), generator=gen, dtype=f64)
            x = sde.reverse(p).sample(x_T, steps=steps, method=method, eps=EPS, generator=gen).x
            _sample_rows(ctx, name, sde, target, x, f"reverse SDE {method}, {steps} steps")
            if method == "euler":
                shown[f"{name} reverse SDE"] = x
    path = ctx.plot_path("samples_reverse_sde")
    if path is not None:
        from .plots import plot_samples

        plot_samples(path, target.marginal(SDES["VP"](), EPS), shown, title="reverse-SDE samples (Euler–Maruyama) vs p_eps")


# The Langevin corrector's signal-to-noise ratio in the pc_sampler rows. Its step x + delta s + sqrt(2 delta) z with
# delta ~ 2 a r^2 var (Song et al.'s rule) leaves N(m, var) at var / (1 - delta / (2 var)): a relative variance bias
# of about a r^2 that no number of steps removes, since the rule ties delta to r and not to the time step. At the
# default r = 0.16 (2.6 %), over seeds 1-20 of the full run, three of the six corrector rows' log-density KS
# p-values fell below 0.05 in 10-30 % of the seeds (KS uniformity p of their 20 values: 0.0008-0.055 at 500 steps,
# 0.0004-0.009 at 1000: more steps did not help); at r = 0.04 (0.16 %) the twelve corrector rows (log-density and
# mode weights) gave uniformity p >= 0.04 at 500 steps.
PC_SNR = 0.04


@register("pc_sampler", quick=True)
def _pc_sampler(ctx: Context) -> None:
    """Predictor–corrector samples (sdescore.pc_sample) from the exact score follow the mixture at t = eps (the Langevin
    corrector at snr = PC_SNR, where its stationary bias is below what the tests can see)."""
    target = ring()
    n, steps = ctx.pick(1000, 2000), ctx.pick(250, 500)
    combos = ctx.pick(
        (("reverse_diffusion", "langevin"),),
        (("reverse_diffusion", "langevin"), ("euler_maruyama", "none"), ("ancestral_sampling", "langevin")),
    )
    for name, sde in _sdes(ctx):
        p = target.score_fn(sde)
        for predictor, corrector in combos:
            gen = ctx.generator(name, predictor, corrector)
            x = sdescore.pc_sample(sde, p, (n, 2), predictor=predictor, corrector=corrector, steps=steps, eps=EPS,
                                   generator=gen, dtype=f64, snr=PC_SNR).x
            snr = f", snr {PC_SNR:g}" if corrector == "langevin" else ""
            _sample_rows(ctx, name, sde, target, x, f"PC {predictor}+{corrector}, {steps} steps{snr}")


# The adaptive reverse-SDE solver's relative tolerance in its rows, per SDE: the bias of its steps must be below
# what the tests see at the full run's 2000 samples. Measured as the mean log p_eps of the samples minus that of
# exact draws (30 seeds of 2000 unless noted; the log-density test sees this offset): VE +0.016 +- 0.004 at rtol
# 0.02 (its log-density p-values leaned low over seeds 1-20: uniformity p 0.02), +0.015 +- 0.003 at 0.01,
# -0.005 +- 0.004 at 0.005 (20 seeds); VP +0.002 +- 0.004 at 0.02. (Euler–Maruyama with 1000 steps: VE
# -0.006 +- 0.005.)
ADAPTIVE_SDE_RTOL = {"VE": 0.005, "VP": 0.02, "subVP": 0.02}


@register("adaptive_sde", quick=True, needs=("adaptive_sde_sample",))
def _adaptive_sde(ctx: Context) -> None:
    """Adaptive reverse-SDE samples (sdescore.adaptive_sde_sample, Brownian bridge on rejection) from the exact score
    follow the mixture at t = eps; the published redraw of rejected noise does not (its spread test rejects)."""
    target = ring()
    n = ctx.pick(1000, 2000)
    for name, sde in _sdes(ctx):
        p = target.score_fn(sde)
        rtol = ADAPTIVE_SDE_RTOL[name]
        for redraw in (False, True):
            gen = ctx.generator(name, redraw)
            x_T = sde.prior_sampling((n, 2), generator=gen, dtype=f64)
            out = sdescore.adaptive_sde_sample(sde, p, x_T, rtol=rtol, eps=EPS, generator=gen, redraw_rejected=redraw)
            what = f"adaptive SDE, rtol {rtol:g}, {'redrawn' if redraw else 'bridged'} noise"
            if redraw:  # the published variant: the accepted increments are selected by size
                spread = _spread_test(out.x, target.marginal(sde, EPS), ctx.generator(name, what, "test"))
                ctx.rejects(name, what, spread, note=f"{_spread_note(spread)}; nfe {out.nfe}")
            else:
                _sample_rows(ctx, name, sde, target, out.x, what)


# ---------------------------------------------------------------------- samplers as exact linear chains
# N(0, c I) in 64 dimensions. The PC rows take a small c, where the last step's noise is 40 % of the final variance
# (VP): a sampler that forgets denoise=True fails them. The reverse SDE, which adds noise at every step, keeps its
# power to see a score error with the larger c.
CHAIN_D, CHAIN_C_PC, CHAIN_C_SDE = 64, 1e-3, 0.25


class _RecordingLangevin:
    """sdescore's Langevin corrector (one step per time), recording its realised step size epsilon: x_mean = x + epsilon s,
    so epsilon = <x_mean - x, s> / ||s||^2 over the whole batch (the rule's batch-mean norms make it one number)."""

    def __init__(self) -> None:
        self.inner = sdescore.samplers.CORRECTORS["langevin"]
        self.epsilons: list[float] = []

    def evals(self, n_steps: int) -> int:
        return self.inner.evals(n_steps)

    def step(self, sde, score, x, t, h, n_steps, snr, generator):
        seen = []

        def recording(y, tt):
            s = score(y, tt)
            seen.append(s)
            return s

        x_new, x_mean = self.inner.step(sde, recording, x, t, h, n_steps, snr, generator)
        (s,) = seen
        self.epsilons.append(float(((x_mean - x) * s).sum() / s.pow(2).sum()))
        return x_new, x_mean


def _isotropic_score(sde: SDE, c: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact score of N(0, c I) diffused by sde: -x / (alpha(t)^2 c + std(t)^2), for x of shape (B, d)."""

    def score(x: Tensor, t: Tensor) -> Tensor:
        alpha, std = sde.kernel(t.to(torch.float64))
        return x / -(alpha**2 * c + std**2).to(x.dtype)[:, None]

    return score


@register("sampler_chains", quick=True, needs=("pc_sample",))
def _sampler_chains(ctx: Context) -> None:
    """On N(0, c I) the score is linear, -x / V(t) with V = alpha^2 c + std^2, so every predictor, the Langevin
    corrector and the reverse SDE's Euler step are linear chains x <- A x + B z with an exact variance recursion
    v <- A^2 v + B^2, from each method's formula in its paper: the samples' second moment must match it. (The
    corrector's step size comes from batch norms: its realised value is read back, and the recursion uses it.) A score
    scaled by 0.98 moved every row's |z| to 5.1 or more (full mode; the null's largest was 1.8 of 21 rows), where the
    law tests of `pc_sampler` and `reverse_sde` pass a 10 % error; a PC sampler without its denoising step fails the
    VP rows at |z| ~ 1e5."""
    steps = ctx.pick(100, 200)
    combos = ctx.pick(
        (("reverse_diffusion", "langevin"),),
        tuple((p, c) for p in ("euler_maruyama", "reverse_diffusion", "ancestral_sampling") for c in ("none", "langevin")),
    )
    B = 2048
    n = B * CHAIN_D
    for name, sde in _sdes(ctx):
        c = CHAIN_C_PC
        score = _isotropic_score(sde, c)

        def V(t: float) -> float:  # of the c in force
            alpha, std = sde.kernel(torch.tensor([t], dtype=f64))
            return float(alpha) ** 2 * c + float(std) ** 2

        def coefficients(t: float) -> tuple[float, float]:  # a(t) of the drift a x, and g(t)
            ones = torch.ones(1, 1, dtype=f64)
            tt = torch.tensor([t], dtype=f64)
            return float(sde.f(ones, tt)), float(sde.g(tt))

        def em(t: float, h: float) -> tuple[float, float]:  # x - [f - g^2 s] h + g sqrt(h) z (Song et al. 2021, eq. 6)
            a, g = coefficients(t)
            return 1.0 - (a + g * g / V(t)) * h, g * g * h

        def reverse_diffusion(t: float, h: float) -> tuple[float, float]:  # x - f_i + G_i^2 s + G_i z (eq. 46)
            f_i, G_i = sde.discretize(torch.ones(1, 1, dtype=f64), torch.tensor([t], dtype=f64), dt=h)
            G2 = float(G_i) ** 2
            return 1.0 - float(f_i) - G2 / V(t), G2

        def ancestral(t: float, h: float) -> tuple[float, float]:  # posterior q(x_s | x_t, Tweedie's x0) of the chain
            (at, st), (as_, ss) = [tuple(float(v) for v in sde.kernel(torch.tensor([u], dtype=f64))) for u in (t, t - h)]
            a = at / as_
            b2 = st * st - a * a * ss * ss
            return (1.0 - b2 / V(t)) / a, b2 * ss * ss / (st * st)

        predictors = {"euler_maruyama": em, "reverse_diffusion": reverse_diffusion, "ancestral_sampling": ancestral}

        def moment_rows(x: Tensor, v: float, what: str) -> None:
            z = (float(x.pow(2).mean()) - v) / (v * math.sqrt(2.0 / n))
            ctx.at_most(name, f"{what}: second moment vs exact chain variance (|z|)", abs(z), Z_MAX,
                        f"d={CHAIN_D}, c={c}, n={B}; exact v={v:.5g}")

        grid = torch.linspace(sde.T, EPS, steps + 1, dtype=f64).tolist()
        for predictor, corrector in combos:
            gen = ctx.generator(name, "chain", predictor, corrector)
            x_T = math.sqrt(V(sde.T)) * torch.randn(B, CHAIN_D, generator=gen)  # float32: the chain, not rounding
            recorder = _RecordingLangevin() if corrector == "langevin" else "none"
            x = sdescore.pc_sample(sde, score, None, x_T=x_T, predictor=predictor, corrector=recorder, steps=steps,
                                   eps=EPS, generator=gen).x
            v = V(sde.T)
            for i in range(steps):
                t, h = grid[i], grid[i] - grid[i + 1]
                if corrector == "langevin":  # x + eps s + sqrt(2 eps) z at t (Song et al. 2021, algorithm 5)
                    e = recorder.epsilons[i]
                    v = (1.0 - e / V(t)) ** 2 * v + 2.0 * e
                A, B2 = predictors[predictor](t, h)
                v = A * A * v + (B2 if i < steps - 1 else 0.0)  # denoise: the last step adds no noise
            moment_rows(x, v, f"PC {predictor}+{corrector}, {steps} steps")
        # the reverse SDE through torchsde's Euler-Maruyama: the same chain in solver time s = T - t, noise every step
        c = CHAIN_C_SDE
        score = _isotropic_score(sde, c)
        gen = ctx.generator(name, "chain", "torchsde")
        x_T = math.sqrt(V(sde.T)) * torch.randn(B, CHAIN_D, generator=gen)  # float32: the chain, not rounding
        x = sde.reverse(score).sample(x_T, steps=steps, method="euler", eps=EPS, generator=gen).x
        s_end = sde.T - EPS
        dt = s_end / steps * (1.0 + 1e-9)  # the step `sample` hands torchsde; the last one is clipped to s_end
        v, s = V(sde.T), 0.0
        for i in range(steps):
            h = dt if i < steps - 1 else s_end - s
            A, B2 = em(sde.T - s, h)
            v, s = A * A * v + B2, s + h
        moment_rows(x, v, f"reverse SDE, torchsde euler, {steps} steps")


@register("probability_flow", quick=True)
def _probability_flow(ctx: Context) -> None:
    """Probability-flow ODE: samples follow p_eps, encodings follow p_T, decode(encode(x)) = x, and the Gaussian's closed form."""
    target = ring()
    gauss = single_gaussian()
    n = ctx.pick(500, 2000)
    shown = {}
    for name, sde in _sdes(ctx):
        gen = ctx.generator(name)
        ode = sde.probability_flow(target.score_fn(sde))
        x = ode.sample(sde.prior_sampling((n, 2), generator=gen, dtype=f64), eps=EPS).x
        _sample_rows(ctx, name, sde, target, x, "ODE samples, dopri5")
        shown[f"{name} ODE"] = x
        x0 = target.marginal(sde, EPS).sample(n, gen)
        z = ode.encode(x0, eps=EPS).x
        ctx.accepts(name, "ODE encodings ~ p_T", sliced_ks_test(z, target.marginal(sde, sde.T), generator=gen))
        x0 = x0[:100]
        z = ode.encode(x0, eps=EPS, rtol=1e-7, atol=1e-7).x
        back = ode.sample(z, eps=EPS, rtol=1e-7, atol=1e-7).x
        ctx.at_most(name, "decode(encode(x)) - x, rtol=atol=1e-7 (max rel err)", _rel(back, x0), 1e-5, "100 rtol")
        x_T = sde.prior_sampling((64, 2), generator=gen, dtype=f64)
        exact = gauss.ode_solution(sde, x_T, sde.T, EPS)
        num = sde.probability_flow(gauss.score_fn(sde)).sample(x_T, eps=EPS, rtol=1e-8, atol=1e-8).x
        ctx.at_most(name, "ODE sample vs closed-form flow of a Gaussian, rtol=atol=1e-8 (max rel err)",
                    _rel(num, exact), 1e-6, "100 rtol")
    path = ctx.plot_path("samples_probability_flow")
    if path is not None:
        from .plots import plot_samples

        plot_samples(path, target.marginal(SDES["VP"](), EPS), shown, title="probability-flow ODE samples vs p_eps")


@register("likelihood", quick=True, needs=("log_likelihood",))
def _likelihood(ctx: Context) -> None:
    """log_likelihood through the ODE equals the analytic log-density (exact trace and Hutchinson), and the Hutchinson
    divergence is unbiased against the exact trace at a fixed point."""
    eps = 1e-5
    targets = ctx.pick({"ring": ring()}, {"ring": ring(), "aniso-8d": random_anisotropic(8, 3, seed=2)})
    n = ctx.pick(32, 128)
    for name, sde in _sdes(ctx, ("VP",)):
        for tname, target in targets.items():
            p = target.diffuse(sde)
            gen = ctx.generator(name, tname)
            x = target.marginal(sde, eps).sample(n, gen)
            exact = p.log_prob(x, eps)
            prior = lambda z: p.log_prob(z, sde.T)  # noqa: E731  the exact law at T isolates the solver's error
            _hutchinson_rows(ctx, name, p, x, tname)
            res = sdescore.log_likelihood(sde, p, x, trace="exact", eps=eps, prior_logp=prior)
            # torchdiffeq's RMS norm bounds the batch's error: single samples' errors run to tens of times the mean's
            ctx.at_most(name, f"log_likelihood exact trace, default tolerances: |mean error|, {tname} (nats)",
                        abs(float((res.logp - exact).mean())), 2e-3,
                        f"max single {float((res.logp - exact).abs().max()):.1e}; prior = exact p_T")
            res = sdescore.log_likelihood(sde, p, x, trace="exact", eps=eps, prior_logp=prior, rtol=1e-7, atol=1e-7)
            ctx.at_most(name, f"log_likelihood exact trace, rtol=atol=1e-7: max error, {tname} (nats)",
                        float((res.logp - exact).abs().max()), 1e-4, "prior = exact p_T")
            if not ctx.quick:
                res = sdescore.log_likelihood(sde, p, x, trace="hutchinson", eps=eps, prior_logp=prior, generator=gen,
                                              rtol=1e-7, atol=1e-7)
                err = res.logp - exact
                ctx.at_most(name, f"log_likelihood Hutchinson: mean error, {tname} (|z|)",
                            abs(float(err.mean() / (err.std() / math.sqrt(n)))), Z_MAX, "unbiased")


def _hutchinson_rows(ctx: Context, name: str, p: DiffusedMixture, x: Tensor, tname: str) -> None:
    """The Hutchinson estimator of div s at fixed (x, t) against the exact trace: its mean over K probes has variance
    Var(e^T J e) / K, with Var = 2 ||J||_F^2 for Gaussian probes and 2 (||J||_F^2 - sum J_ii^2) for Rademacher ones
    (J the symmetric Hessian of log p_t). The z-score of the summed error over the batch is N(0, 1) under the null;
    a trace biased by 1 % moved it to 4.6 (Gaussian, K = 8000) and 16 (Rademacher, K = 2000) on the ring."""
    from sdescore.likelihood import PROBES, TRACES

    t = torch.full((x.shape[0],), 0.3, dtype=f64)
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():  # row i of J for the whole batch at once: the samples are independent
        v = p.score(xg, t)
        J = torch.stack([torch.autograd.grad(v[:, i].sum(), xg, retain_graph=True)[0] for i in range(x.shape[1])], 1)
    tr = torch.diagonal(J, dim1=1, dim2=2).sum(1)
    frob = J.pow(2).sum((1, 2))
    # K per probe law: Gaussian probes' variance is the larger (the diagonal adds to it)
    for probe, K, var in (("gaussian", 8000, 2 * frob), ("rademacher", 2000, 2 * (frob - torch.diagonal(J, dim1=1, dim2=2).pow(2).sum(1)))):
        with torch.enable_grad():
            v = p.score(xg, t)
            est = TRACES["hutchinson"].divergence(v, xg, TRACES["hutchinson"].draw(xg, PROBES[probe], K, ctx.generator(name, tname, probe)))
        z = float((est.detach() - tr).sum() / (var / K).sum().sqrt())
        ctx.at_most(name, f"Hutchinson divergence, {K} {probe} probes, vs exact trace at t = 0.3, {tname} (|z|)", abs(z), Z_MAX,
                    "summed over the batch; Var from the exact Hessian")


@register("annealed_langevin", quick=True, needs=("langevin", "annealed_langevin"))
def _annealed_langevin(ctx: Context) -> None:
    """Annealed Langevin recovers the 0.2/0.8 weights of Song & Ermon's (2019) toy, plain Langevin cannot; and the
    annealed samples follow the exact law of the chain within each mode (its AR(1) variance, then the denoising)."""
    target = ncsn_toy()
    n = ctx.pick(1000, 2000)
    gen = ctx.generator()
    x_init = 16.0 * torch.rand(n, 2, generator=gen, dtype=f64) - 8.0  # uniform on [-8, 8]^2, as in the paper
    sigmas = torch.exp(torch.linspace(math.log(20.0), math.log(1.0), 10, dtype=f64))
    plain = _samples_of(sdescore.langevin(target.score, x_init, 0.1, 1000, generator=gen), "langevin")
    annealed = _samples_of(
        sdescore.annealed_langevin(target.noised(), sigmas, x_init, n_steps_each=100, step_lr=0.1, generator=gen),
        "annealed_langevin",
    )
    # The chain's own weights differ from the target's by its discretisation: 0.2169 +- 0.0021 for the (-5, -5) mode
    # at n = 40 000 (seed 123). A test of exact weights rejects that at full size for some seeds, so annealing is
    # judged by a band that it meets with room (its sampling SE is 0.009 at n = 2000) and plain Langevin, which
    # keeps the uniform start's 0.5, misses by far; plain Langevin's weights are also rejected by the exact test.
    w = mode_weight_test(annealed, target, generator=gen)
    note = "weights " + ", ".join(f"{v:.3f}" for v in w.detail["weights"]) + " (target 0.2, 0.8; the chain's 0.217)"
    ctx.at_most("NCSN", "annealed Langevin: |weight of the (-5, -5) mode - 0.2|", abs(w.detail["weights"][0] - 0.2), 0.05, note)
    w = mode_weight_test(plain, target, generator=gen)
    note = "weights " + ", ".join(f"{v:.3f}" for v in w.detail["weights"]) + " (target 0.2, 0.8)"
    ctx.rejects("NCSN", "plain Langevin (expected to fail)", w, note=note)
    # Within a mode (they are 14 apart: from sigma ~ 2 on, the other mode's pull is below e^-20), the chain is the AR(1)
    # x - mu <- r_i (x - mu) + sqrt(a_i) z with r_i = 1 - a_i / (2 (1 + sigma_i^2)): Gaussian, of variance
    # v <- r_i^2 v + a_i. Each level forgets the previous one's variance to a factor r_i^200 < 0.007, so starting the
    # recursion at the stationary variance of the fourth-last level is exact to ~1e-9; NCSNv2's denoising step then
    # scales x - mu by 1 - sigma_L^2 / (1 + sigma_L^2). So ||x - mu_nearest||^2 / var is chi-square with 2 degrees
    # of freedom (whatever the weights): a one-sample KS test. A chain that skips the denoising step (4 times the
    # variance), or collapses onto the means, fails.
    sig2 = (sigmas**2).tolist()
    v = None
    for s2 in sig2[-4:]:
        a = 0.1 * s2 / sig2[-1]
        r = 1.0 - a / (2.0 * (1.0 + s2))
        v = a / (1.0 - r * r) if v is None else v
        for _ in range(100):
            v = r * r * v + a
    c = 1.0 - sig2[-1] / (1.0 + sig2[-1])
    var = v * c * c
    r2 = (annealed[:, None, :] - target.means[None]).pow(2).sum(2).min(1).values / var
    ks = sps.kstest(r2.numpy(), sps.chi2(2).cdf)
    ctx.accepts("NCSN", "annealed Langevin: ||x - nearest mean||^2 / var ~ chi2(2), the exact within-mode law",
                TestResult("chi-square KS", float(ks.statistic), float(ks.pvalue), n),
                note=f"within-mode variance {var:.4f} per coordinate (the target's 1)")
    path = ctx.plot_path("samples_langevin")
    if path is not None:
        from .plots import plot_samples

        plot_samples(path, target, {"plain Langevin": plain, "annealed Langevin": annealed}, lim=10.0,
                     title="Song & Ermon (2019) toy: 0.2 N((-5,-5), I) + 0.8 N((5,5), I)")


# ---------------------------------------------------------------------- convergence orders
ODE_ORDERS = {"euler": 1, "midpoint": 2, "heun3": 3, "rk4": 4}


@register("ode_order", quick=True)
def _ode_order(ctx: Context) -> None:
    """Fixed-step probability-flow ODE solvers converge at their theoretical order to the Gaussian's closed-form flow."""
    gauss = single_gaussian()
    steps = ctx.pick([32, 64, 128, 256], [64, 128, 256, 512])  # sub-VP's rk4 is pre-asymptotic below 64 steps
    methods = ctx.pick(("midpoint", "rk4"), tuple(ODE_ORDERS))
    series = []
    for name, sde in _sdes(ctx, ("VP",)):
        x_T = sde.prior_sampling((64, 2), generator=ctx.generator(name), dtype=f64)
        exact = gauss.ode_solution(sde, x_T, sde.T, EPS)
        ode = sde.probability_flow(gauss.score_fn(sde))
        for method in methods:
            errs = [_rel(ode.sample(x_T, method=method, steps=n, eps=EPS).x, exact) for n in steps]
            order = fitted_order(steps, errs)
            series.append((f"{name} {method}", steps, errs, order, ODE_ORDERS[method]))
            ctx.near(name, f"PF-ODE {method}: fitted order, {steps[0]}-{steps[-1]} steps", order, ODE_ORDERS[method], 0.15)
    path = ctx.plot_path("order_probability_flow")
    if path is not None:
        from .plots import plot_convergence

        plot_convergence(path, series, title="probability-flow ODE vs closed-form flow (Gaussian)", ylabel="max rel error")


FAST_SAMPLERS: dict[str, tuple[int, bool, bool, Callable[..., Any]]] = {
    # label: (theoretical order, in the quick subset, order is only a lower bound here, call(sde, score, x_T, steps))
    "heun (EDM, Karras grid)": (2, True, False, lambda sde, s, x, n: sdescore.heun_sample(sde, s, x, steps=n)),
    "DPM-Solver-1": (1, False, False, lambda sde, s, x, n: sdescore.dpm_solver_sample(sde, s, x, steps=n, order=1)),
    "DPM-Solver-2": (2, False, False, lambda sde, s, x, n: sdescore.dpm_solver_sample(sde, s, x, steps=n, order=2)),
    "DPM-Solver-3": (3, True, False, lambda sde, s, x, n: sdescore.dpm_solver_sample(sde, s, x, steps=n, order=3)),
    "DPM-Solver-2M": (2, False, False,
                      lambda sde, s, x, n: sdescore.dpm_solver_sample(sde, s, x, steps=n, order=2, multistep=True)),
    # the 3-step multistep method runs ahead of its asymptotic slope over 32-256 steps (measured 3.1-3.8)
    "DPM-Solver-3M": (3, False, True,
                      lambda sde, s, x, n: sdescore.dpm_solver_sample(sde, s, x, steps=n, order=3, multistep=True)),
    "DPM-Solver++2M": (2, True, False, lambda sde, s, x, n: sdescore.dpm_solver_pp_sample(sde, s, x, steps=n)),
}


@register("fast_samplers", quick=True, needs=("heun_sample", "dpm_solver_sample", "dpm_solver_pp_sample"))
def _fast_samplers(ctx: Context) -> None:
    """Heun and DPM-Solver(++) converge at their theoretical order to the Gaussian's closed-form probability flow."""
    gauss = single_gaussian()
    steps = [32, 64, 128, 256]
    series = []
    for name, sde in _sdes(ctx, ("VP",)):
        x_T = sde.prior_sampling((64, 2), generator=ctx.generator(name), dtype=f64)
        exact = gauss.ode_solution(sde, x_T, sde.T, EPS)
        score = gauss.score_fn(sde)
        for label, (theory, quick, lower_bound, call) in FAST_SAMPLERS.items():
            if ctx.quick and not quick:
                continue
            errs = [_rel(_samples_of(call(sde, score, x_T, n), label), exact) for n in steps]
            order = fitted_order(steps, errs)
            series.append((f"{name} {label}", steps, errs, order, theory))
            if lower_bound:
                ctx.at_least(name, f"{label}: fitted order, {steps[0]}-{steps[-1]} steps", order, theory - 0.15,
                             f"theory {theory}")
            else:
                ctx.near(name, f"{label}: fitted order, {steps[0]}-{steps[-1]} steps", order, theory, 0.15)
    path = ctx.plot_path("order_fast_samplers")
    if path is not None:
        from .plots import plot_convergence

        plot_convergence(path, series, title="fast samplers vs closed-form flow (Gaussian)", ylabel="max rel error")


def _reverse_em_variance(sde: SDE, c: Callable[[float], float], n: int, v_T: float) -> float:
    """Exact variance at eps of n reverse Euler–Maruyama steps on a 1-D Gaussian, score -(x - m)/c(t):
    x <- x - [f x + g^2 (x - m) / c] h + g sqrt(h) z, so v <- (1 - (f + g^2/c) h)^2 v + g^2 h (m = 0)."""
    h = (sde.T - EPS) / n
    tk = sde.T - torch.arange(n, dtype=f64) * h
    f = _drift_coefficient(sde, tk).tolist()
    g2 = (sde.g(tk) ** 2).tolist()
    v = v_T
    for k, tv in enumerate(tk.tolist()):
        a = 1.0 - (f[k] + g2[k] / c(tv)) * h
        v = a * a * v + g2[k] * h
    return v


@register("sde_weak_order", quick=True)
def _sde_weak_order(ctx: Context) -> None:
    """Euler–Maruyama on the reverse SDE has weak order >= 1: variance of samples of a Gaussian vs the closed form."""
    D = 256
    B = ctx.pick(1024, 4096)
    steps = ctx.pick([8, 16, 32, 64], [16, 32, 64, 128])  # VE diverges at 8 steps
    var0 = 0.5
    gauss = GaussianMixture([1.0], torch.zeros(1, D, dtype=f64), [var0])
    series = []
    for name, sde in _sdes(ctx, ("VP",)):
        p = gauss.diffuse(sde)

        def c(tv: float) -> float:
            alpha, std = sde.kernel(torch.tensor([tv], dtype=f64))
            return float(alpha**2 * var0 + std**2)

        N = B * D
        errs, zs = [], []
        for n in steps:
            gen = ctx.generator(name, n)
            x_T = math.sqrt(c(sde.T)) * torch.randn(B, D, generator=gen, dtype=f64)  # x_T ~ p_T exactly
            x = sde.reverse(p).sample(x_T, steps=n, method="euler", eps=EPS, generator=gen).x
            v_emp = float(x.pow(2).mean())
            v_em = _reverse_em_variance(sde, c, n, c(sde.T))
            zs.append((v_emp - v_em) / (v_em * math.sqrt(2.0 / N)))
            errs.append(abs(v_emp / c(EPS) - 1))
        ctx.at_most(name, "sample variance vs exact EM recursion, all step counts (max |z|)", max(map(abs, zs)), Z_MAX,
                    f"N={N}")
        order = fitted_order(steps, errs)
        series.append((f"{name} reverse EM", steps, errs, order, 1.0))
        ctx.at_least(name, f"reverse EM: fitted weak order (variance), {steps[0]}-{steps[-1]} steps", order, 0.75,
                     "theory >= 1")
    path = ctx.plot_path("order_reverse_sde")
    if path is not None:
        from .plots import plot_convergence

        plot_convergence(path, series, title="reverse-SDE Euler–Maruyama: variance error at eps",
                         ylabel="|Var/Var_exact - 1|")


# ---------------------------------------------------------------------- a user's own sampler
@dataclass(frozen=True)
class SamplerReport:
    """Figures of `check_sampler`: the three tests, moment errors, evaluations and time."""

    ks: TestResult
    weights: TestResult
    log_density: TestResult
    mean_error: float
    cov_error: float
    nfe: int | None
    seconds: float
    level: float

    @property
    def passed(self) -> bool:
        """No test rejects 'the samples follow the target at t_end' at `level`."""
        return all(r.passed(self.level) for r in (self.ks, self.log_density, self.weights))


def check_sampler(
    sample_fn: Callable[[Callable[[Tensor, Tensor], Tensor], Tensor], Any],
    sde: SDE,
    target: GaussianMixture,
    *,
    n: int = 2000,
    t_end: float = EPS,
    level: float = LEVEL,
    seed: int = 0,
) -> SamplerReport:
    """Measure a sampler against a closed-form target: sample_fn(score_fn, x_T) -> samples (tensor or SampleResult).

    score_fn is the exact score of the target diffused by `sde`, p_t = sum_j w_j N(alpha(t) mu_j, alpha(t)^2
    Sigma_j + std(t)^2 I); x_T (n, d) is drawn from the SDE's prior at T. `t_end` is not passed to sample_fn:
    the sampler must itself integrate from T down to t_end (e.g. eps=t_end), since its samples are compared with
    the exact law p_{t_end} by three tests, each at `level`:

    - the sliced KS test (1-D projections; `stats.sliced_ks_test`);
    - the KS test of log p_{t_end}(x) against 10 n exact draws (the spread within the modes;
      `stats.log_density_ks_test`);
    - the mode-weight test (the mass of each mode; `stats.mode_weight_test`).

    A correct sampler fails one of them by chance with probability about 3 level or less (Bonferroni; the weight
    test's level holds asymptotically).

    Returns:
        SamplerReport with the tests, the relative errors of the sample mean (in units of the law's scale) and
        covariance (Frobenius), the sampler's nfe if it reports one, and the wall time.
    """
    if not callable(sample_fn):
        raise TypeError(f"sample_fn must be callable as sample_fn(score_fn, x_T), got {type(sample_fn).__name__}.")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target must be a validation.GaussianMixture, got {type(target).__name__}.")
    n = check_int("n", n, minimum=10)
    t_end = check_real("t_end", t_end, positive=True)
    if t_end > sde.T:
        raise ValueError(f"t_end must lie in (0, T={sde.T}], got {t_end}.")
    level = check_level(level)
    seed = check_int("seed", seed, minimum=0)
    gen = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sampling((n, target.dim), generator=gen, dtype=target.dtype)
    start = time.perf_counter()
    out = sample_fn(target.score_fn(sde), x_T)
    seconds = time.perf_counter() - start
    x = _samples_of(out, "sample_fn")
    if x.shape[0] != n or x[0].numel() != target.dim:
        raise ValueError(f"sample_fn returned shape {tuple(x.shape)} for x_T of shape {tuple(x_T.shape)}.")
    x = x.detach().to(f64).reshape(n, target.dim)
    bad = int((~torch.isfinite(x).all(1)).sum())
    if bad:
        raise ValueError(
            f"sample_fn returned non-finite values (NaN or inf) in {bad} of its {n} samples: the sampler diverged, "
            "and no test of the law applies; check its step size and the score it was given."
        )
    law = target.marginal(sde, t_end)
    cov = law.covariance()
    mean_err = float((x.mean(0) - law.mean()).norm() / torch.sqrt(torch.trace(cov)))
    cov_err = float((torch.cov(x.T).reshape(cov.shape) - cov).norm() / cov.norm())
    ks, weights, log_density = _law_tests(x, law, gen)
    return SamplerReport(
        ks=ks,
        weights=weights,
        log_density=log_density,
        mean_error=mean_err,
        cov_error=cov_err,
        nfe=out.nfe if isinstance(out, SampleResult) else None,
        seconds=seconds,
        level=level,
    )
