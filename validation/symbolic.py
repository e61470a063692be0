"""The Gaussian kernel of a linear SDE in closed form, derived with sympy, and the identities of score-based modelling
proved symbolically.

For dx = f(t) x dt + g(t) dw the kernel from x(0) = x0 is N(alpha(t) x0, var(t) I), where the mean coefficient and
the variance solve the moment ODEs (Särkkä & Solin 2019, eq. 5.50–5.51; Song et al. 2021, eq. 33 and appendix B)

    d alpha / dt = f alpha,          alpha(0) = 1,
    d var / dt   = 2 f var + g^2,    var(0)   = var0,

so alpha(t) = exp(int_0^t f) and var(t) = alpha(t)^2 (var0 + int_0^t g(u)^2 / alpha(u)^2 du).

The initial variance states the convention: var0 = 0 for the VP and sub-VP SDEs (the kernel starts at the clean
data), but var0 = sigma_min^2 for the VE-SDE, whose kernel from *clean* data has std sigma(t) (sdescore's SMLD
convention, `sdescore.VESDE`): the law at t = 0 is the data smoothed by N(0, sigma_min^2).

`derive_kernel(f, g, var0=...)` gives the closed form for any schedule; `schedule(sde)` holds the symbolic f, g of
the built-in SDEs with the paper's closed forms; the `*_residual` functions return expressions that simplify to 0
exactly when an identity holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

import mpmath
import sympy as sp
import torch
from torch import Tensor

from sdescore.sde import SDE, VESDE, VPSDE, SubVPSDE, batch_view

__all__ = [
    "t",
    "SymbolicKernel",
    "SymbolicSDE",
    "Schedule",
    "derive_kernel",
    "schedule",
    "SCHEDULES",
    "kernel_error",
    "coefficient_error",
    "symbolically_equal",
    "fokker_planck_residual",
    "reverse_sde_residual",
    "probability_flow_residual",
    "dsm_target_residual",
    "general_identities",
    "vanishes",
]

t = sp.Symbol("t", nonnegative=True)
"""The time symbol every schedule and kernel here is written in: build your own SDE's coefficients from it."""
_u = sp.Symbol("u", nonnegative=True)


def _expr(name: str, value: Any) -> sp.Expr:
    try:
        return sp.sympify(value)
    except (sp.SympifyError, TypeError) as err:
        raise TypeError(f"{name} must be a sympy expression in t (or a number), got {type(value).__name__}.") from err


@dataclass(frozen=True)
class SymbolicKernel:
    """alpha(t) and var(t) of the kernel N(alpha x0, var I) of dx = f(t) x dt + g(t) dw with var(0) = var0."""

    f: sp.Expr
    g: sp.Expr
    var0: sp.Expr
    alpha: sp.Expr
    variance: sp.Expr
    t: sp.Symbol = t

    @property
    def std(self) -> sp.Expr:
        return sp.sqrt(self.variance)

    def moment_ode_residuals(self) -> tuple[sp.Expr, sp.Expr, sp.Expr, sp.Expr]:
        """(alpha' - f alpha, var' - 2 f var - g^2, alpha(0) - 1, var(0) - var0), each simplifying to 0."""
        T = self.t
        return (
            sp.simplify(sp.diff(self.alpha, T) - self.f * self.alpha),
            sp.simplify(sp.diff(self.variance, T) - 2 * self.f * self.variance - self.g**2),
            sp.simplify(self.alpha.subs(T, 0) - 1),
            sp.simplify(self.variance.subs(T, 0) - self.var0),
        )

    def lambdify(self, params: dict | None = None) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """A torch function t (B,) -> (alpha, std) evaluating the closed form, with `params` substituted."""
        return _torch_fn([self.alpha, self.std], self.t, params)

    def to_sde(self, params: dict | None = None, *, N: int = 1000) -> "SymbolicSDE":
        """An sdescore.SDE with drift f(t) x, diffusion g(t) and this closed-form kernel (params substituted)."""
        return SymbolicSDE(self, params, N=N)


def _torch_fn(exprs: list[sp.Expr], T: sp.Symbol, params: dict | None) -> Callable[[Tensor], Any]:
    subs = dict(params or {})
    exprs = [sp.N(sp.sympify(e).subs(subs), 20) for e in exprs]
    free = set().union(*(e.free_symbols for e in exprs)) - {T}
    if free:
        raise ValueError(f"the expressions still hold the symbols {sorted(map(str, free))}; give their values in params.")
    fns = [sp.lambdify(T, e, modules="torch") for e in exprs]

    def evaluate(time: Tensor):
        return tuple(torch.as_tensor(fn(time), dtype=time.dtype, device=time.device) + torch.zeros_like(time) for fn in fns)

    return evaluate


def _evaluate_precisely(exprs: list[sp.Expr], T: sp.Symbol, params: dict | None, times: Tensor, digits: int = 30):
    """The expressions at each time by mpmath at `digits` digits (float constants taken as their exact binary value),
    rounded to float64 tensors."""
    subs = {k: sp.Float(v, digits) if isinstance(v, float) else sp.sympify(v) for k, v in (params or {}).items()}
    exprs = [sp.sympify(e).subs(subs) for e in exprs]
    free = set().union(*(e.free_symbols for e in exprs)) - {T}
    if free:
        raise ValueError(f"the expressions still hold the symbols {sorted(map(str, free))}; give their values in params.")
    fns = [sp.lambdify(T, e, modules="mpmath") for e in exprs]
    with mpmath.workdps(digits):
        return [torch.tensor([float(fn(mpmath.mpf(v))) for v in times.tolist()], dtype=torch.float64) for fn in fns]


class SymbolicSDE(SDE):
    """dx = f(t) x dt + g(t) dw from sympy expressions, with the kernel of `derive_kernel`: a user's own schedule."""

    def __init__(self, kernel: SymbolicKernel, params: dict | None = None, *, N: int = 1000):
        super().__init__(N)
        if not isinstance(kernel, SymbolicKernel):
            raise TypeError(f"kernel must be a SymbolicKernel (from derive_kernel), got {type(kernel).__name__}.")
        self.symbolic = kernel
        self._fg = _torch_fn([kernel.f, kernel.g], kernel.t, params)
        self._kernel = kernel.lambdify(params)

    def __repr__(self) -> str:
        return f"SymbolicSDE(f={self.symbolic.f}, g={self.symbolic.g}, var0={self.symbolic.var0})"

    def f(self, x: Tensor, time: Tensor) -> Tensor:
        return batch_view(self._fg(time)[0], x) * x

    def linear_drift(self, time: Tensor) -> Tensor:
        return self._fg(time)[0]

    def g(self, time: Tensor) -> Tensor:
        return self._fg(time)[1]

    def kernel(self, time: Tensor) -> tuple[Tensor, Tensor]:
        return self._kernel(time)


def derive_kernel(f: Any, g: Any, *, var0: Any = 0, time: sp.Symbol = t, simplify: bool = True) -> SymbolicKernel:
    """Solve the moment ODEs of dx = f(t) x dt + g(t) dw: alpha = exp(int_0^t f), var = alpha^2 (var0 + int_0^t g^2 / alpha^2).

    Args:
        f: linear drift coefficient f(t), a sympy expression in `time`.
        g: diffusion coefficient g(t).
        var0: variance of the kernel at t = 0 (0 for a kernel from clean data; sigma_min^2 for the VE convention).
    Returns:
        SymbolicKernel whose `moment_ode_residuals()` simplify to 0.
    """
    f, g, var0 = _expr("f", f), _expr("g", g), _expr("var0", var0)
    if not isinstance(time, sp.Symbol):
        raise TypeError(f"time must be a sympy Symbol, got {type(time).__name__}.")
    fu, gu = f.subs(time, _u), g.subs(time, _u)
    A = sp.integrate(fu, (_u, 0, time))
    alpha = sp.exp(A)
    inv = sp.exp(-2 * A.subs(time, _u))
    variance = alpha**2 * (var0 + sp.integrate(gu**2 * inv, (_u, 0, time)))
    if simplify:
        alpha, variance = sp.simplify(alpha), sp.simplify(variance)
    if alpha.has(sp.Integral) or variance.has(sp.Integral):
        raise ValueError(
            f"sympy could not integrate the moment ODEs of f = {f}, g = {g} in closed form; got alpha = {alpha}, "
            f"var = {variance}."
        )
    return SymbolicKernel(f=f, g=g, var0=var0, alpha=alpha, variance=variance, t=time)


# ---------------------------------------------------------------------- the built-in SDEs, as in the paper
@dataclass(frozen=True)
class Schedule:
    """Symbolic f(t), g(t), var0 of an SDE, its closed-form kernel as printed in the paper, and the instance's constants."""

    name: str
    f: sp.Expr
    g: sp.Expr
    var0: sp.Expr
    alpha: sp.Expr
    variance: sp.Expr
    params: dict = field(default_factory=dict)

    def derive(self) -> SymbolicKernel:
        return derive_kernel(self.f, self.g, var0=self.var0)


_smin, _smax = sp.symbols("sigma_min sigma_max", positive=True)
_b0, _b1 = sp.symbols("beta_min beta_max", positive=True)


def _ve(sde: VESDE) -> Schedule:
    sigma = _smin * (_smax / _smin) ** t
    return Schedule(
        "VE (Song et al. 2021, eq. 30)",
        f=sp.Integer(0),
        g=sigma * sp.sqrt(2 * sp.log(_smax / _smin)),
        var0=_smin**2,  # SMLD convention: std from clean data is sigma(t)
        alpha=sp.Integer(1),
        variance=sigma**2,
        params={_smin: sde.sigma_min, _smax: sde.sigma_max},
    )


def _linear_beta() -> tuple[sp.Expr, sp.Expr]:
    beta = _b0 + t * (_b1 - _b0)
    return beta, _b0 * t + (_b1 - _b0) * t**2 / 2


def _vp(sde: VPSDE) -> Schedule:
    beta, B = _linear_beta()
    return Schedule(
        "VP (Song et al. 2021, eq. 32-33)",
        f=-beta / 2,
        g=sp.sqrt(beta),
        var0=sp.Integer(0),
        alpha=sp.exp(-B / 2),
        variance=1 - sp.exp(-B),
        params={_b0: sde.beta_min, _b1: sde.beta_max},
    )


def _subvp(sde: SubVPSDE) -> Schedule:
    beta, B = _linear_beta()
    return Schedule(
        "sub-VP (Song et al. 2021, eq. 34)",
        f=-beta / 2,
        g=sp.sqrt(beta * (1 - sp.exp(-2 * B))),
        var0=sp.Integer(0),
        alpha=sp.exp(-B / 2),
        variance=(1 - sp.exp(-B)) ** 2,
        params={_b0: sde.beta_min, _b1: sde.beta_max},
    )


SCHEDULES: dict[type, Callable[[Any], Schedule]] = {VESDE: _ve, VPSDE: _vp, SubVPSDE: _subvp}


def schedule(sde: SDE) -> Schedule:
    """The symbolic schedule of a built-in SDE (looked up in SCHEDULES along the class's MRO)."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
    for cls in type(sde).__mro__:
        if cls in SCHEDULES:
            return SCHEDULES[cls](sde)
    raise ValueError(
        f"no symbolic schedule for {type(sde).__name__}; register one in validation.symbolic.SCHEDULES or call "
        "derive_kernel(f, g, var0=...) with your f(t) and g(t)."
    )


def symbolically_equal(a: Any, b: Any) -> bool:
    """a == b: by simplification, else (for expressions sympy cannot reduce) numerically with `vanishes`."""
    diff = sp.sympify(a) - sp.sympify(b)
    if sp.simplify(diff) == 0:
        return True
    return vanishes(diff)


def kernel_error(
    sde: SDE, kernel: SymbolicKernel | None = None, params: dict | None = None, *, n_times: int = 201
) -> float:
    """Largest relative error between the closed-form kernel and `sde.kernel` / `sde.marginal_prob` on a grid of t in [0, T].

    With kernel=None the kernel is derived from the SDE's symbolic schedule (and its constants are the SDE's).
    `params` substitutes the constants of a given kernel. Returns the largest of

        |a_torch - a_sym| / (|a_sym| + tiny)   for a = alpha, the marginal_prob mean of x0 = 1, std and the
                                               marginal_prob std,

    over the grid, tiny = 1e-300: the torch side in float64, the closed form evaluated by mpmath at 30 digits (in
    float64 the closed forms cancel near t = 0, e.g. sub-VP's, losing up to 1e-11). Where the closed form vanishes
    (std(0) = 0 for VP, sub-VP and most user schedules) the error is 0 only if the torch value is 0 too, and huge
    otherwise: a ratio std_torch / std_sym would be 0/0 = NaN there. A NaN anywhere (in either side) is returned
    as NaN, which a check reports as a failure.
    """
    if kernel is None:
        sch = schedule(sde)
        kernel, params = sch.derive(), sch.params
    times = torch.linspace(0.0, sde.T, n_times, dtype=torch.float64)
    alpha_s, std_s = _evaluate_precisely([kernel.alpha, kernel.std], kernel.t, params, times)
    alpha_t, std_t = sde.kernel(times)
    x0 = torch.ones(n_times, 1, dtype=torch.float64)
    mean, std_m = sde.marginal_prob(x0, times)
    return _max_relative_error(((alpha_t, alpha_s), (mean[:, 0], alpha_s), (std_t, std_s), (std_m, std_s)))


def coefficient_error(sde: SDE, sch: "Schedule | None" = None, *, n_times: int = 201) -> float:
    """Largest relative error between the SDE's torch drift and diffusion and its schedule's f(t), g(t) on [0, T].

    The drift is read as sde.f(1, t) (the coefficient of the linear drift f(t) x) and as `sde.linear_drift(t)` where
    the SDE declares one; the schedule is evaluated by mpmath at 30 digits. The same error measure as `kernel_error`
    (0 against a vanishing closed form only if the torch value is 0 too; NaN propagates).
    """
    sch = schedule(sde) if sch is None else sch
    times = torch.linspace(0.0, sde.T, n_times, dtype=torch.float64)
    f_s, g_s = _evaluate_precisely([sch.f, sch.g], t, sch.params, times)
    ones = torch.ones(n_times, 1, dtype=torch.float64)
    pairs = [(sde.f(ones, times)[:, 0], f_s), (sde.g(times), g_s)]
    if sde.drift_is_linear:
        pairs.append((sde.linear_drift(times), f_s))
    return _max_relative_error(pairs)


def _max_relative_error(pairs) -> float:
    """max |a - b| / (|b| + 1e-300) over the pairs (torch side a, closed form b); a NaN or inf on either side gives a NaN
    ratio, which torch's max carries through (Python's max would drop it)."""
    return float(torch.stack([((a - b).abs() / (b.abs() + 1e-300)).max() for a, b in pairs]).max())


# ---------------------------------------------------------------------- identities, as residuals that simplify to 0
# Every density below is Gaussian in x, so each residual divided by p is a polynomial in x, written through
# l = log p: dp/dt / p = dl/dt, d/dx[b p] / p = b' + b l', p'' / p = l'^2 + l''. Its coefficients are simplified
# one by one, which keeps sympy fast on the exponentials of the VP schedules.
def _log_gaussian(x: sp.Expr, mean: sp.Expr, var: sp.Expr) -> sp.Expr:
    return -((x - mean) ** 2) / (2 * var) - sp.log(2 * sp.pi * var) / 2


def _generic():
    """Undefined f(t), g(t), alpha(t), var(t) and the moment ODEs as substitution rules for their derivatives."""
    f, g, a, v = (sp.Function(n)(t) for n in ("f", "g", "alpha", "v"))
    rules = {sp.Derivative(a, t): f * a, sp.Derivative(v, t): 2 * f * v + g**2}
    return f, g, a, v, rules


def _coefficients(kernel: SymbolicKernel | None):
    if kernel is None:
        return _generic()
    return kernel.f, kernel.g, kernel.alpha, kernel.variance, None


def _close(expr: sp.Expr, x: sp.Symbol, rules: dict | None) -> sp.Expr:
    """A residual as a polynomial in x. Generic (rules given): each coefficient simplified, a proof. Concrete: expanded
    as it is (simplifying the exponentials of the VP schedules takes sympy minutes); test it with `vanishes`."""
    if not rules:
        return expr
    poly = sp.Poly(sp.expand(expr.doit().subs(rules)), x)
    return sp.expand(sum(sp.simplify(c) * x**k for (k,), c in poly.terms()))


def vanishes(expr: Any, params: dict | None = None, *, n_points: int = 8, digits: int = 40, seed: int = 0) -> bool:
    """True when expr is 0: trivially, or at `n_points` random rational points (t in (0, 1]).

    At each point expr is evaluated with D = `digits`, 2 D and 3 D digits. An expression that is identically 0 leaves
    only the rounding of its terms, which shrinks by 10^-D with every D digits more, whatever the terms' size; a
    non-zero value stays put. So the point counts as a zero when the 3 D-digit value is 0 or below 10^(-D/2) of
    the larger of the two before it, or when those two are exactly 0 (no rounding left to shrink): a test relative
    to the expression's own rounding, not an absolute threshold
    (which calls (e^{60 t} + 1)^2 - e^{120 t} - 2 e^{60 t} - 1 non-zero, and any difference of sigma^2 ~ 1e-22 zero).

    `params` substitutes constants first (e.g. Schedule.params); the other free symbols are drawn at random.
    """
    expr = sp.sympify(expr)
    if params:
        expr = expr.subs({k: sp.nsimplify(v) for k, v in params.items()})
    if expr == 0:
        return True
    free = sorted(expr.free_symbols, key=str)
    fn = sp.lambdify(free, expr, modules="mpmath")
    rng = random.Random(seed)
    with mpmath.workdps(digits):
        for _ in range(n_points):
            point = []
            for s in free:
                if s == t:
                    v = mpmath.mpf(rng.randint(1, 100)) / 100
                elif s.is_positive or s.is_nonnegative:
                    v = mpmath.mpf(rng.randint(1, 40)) / rng.randint(7, 23) + mpmath.mpf(1) / 7
                else:
                    v = mpmath.mpf(rng.randint(-40, 40)) / rng.randint(7, 23)
                point.append(v)
            vals = []
            for k in (1, 2, 3):  # the coordinates, drawn at D digits, are the same numbers at every precision
                with mpmath.workdps(k * digits):
                    vals.append(fn(*point))
            if not all(mpmath.isfinite(v) for v in vals):
                return False
            before = max(abs(vals[0]), abs(vals[1]))  # both exactly 0: a rounding-free zero, whatever the third
            if vals[2] != 0 and before != 0 and abs(vals[2]) > mpmath.mpf(10) ** (-(digits // 2)) * before:
                return False
    return True


def _continuity(l: sp.Expr, x: sp.Symbol, drift: sp.Expr, g2: sp.Expr) -> sp.Expr:
    """(dp/dt + d/dx[drift p] - g2/2 p'') / p for p = exp(l)."""
    lx = sp.diff(l, x)
    return sp.diff(l, t) + sp.diff(drift, x) + drift * lx - g2 / 2 * (lx**2 + sp.diff(lx, x))


def fokker_planck_residual(kernel: SymbolicKernel | None = None) -> sp.Expr:
    """(dp/dt + d/dx[f x p] - g^2/2 d^2p/dx^2) / p for p = N(x; alpha x0, var): 0 iff the kernel solves Fokker–Planck.

    One coordinate suffices: the isotropic kernel in d dimensions is a product of these. With kernel=None, f, g,
    alpha and var are undefined functions of t tied only by the moment ODEs: the identity for every linear SDE.
    """
    x, x0 = sp.symbols("x x0", real=True)
    f, g, a, v, rules = _coefficients(kernel)
    return _close(_continuity(_log_gaussian(x, a * x0, v), x, f * x, g**2), x, rules)


def _gaussian_data_marginal(kernel: SymbolicKernel | None):
    """log p_t of Gaussian data N(m0, s0^2) in one coordinate: N(alpha m0, alpha^2 s0^2 + var)."""
    x = sp.Symbol("x", real=True)
    m0 = sp.Symbol("m0", real=True)
    s0 = sp.Symbol("s0", positive=True)
    f, g, a, v, rules = _coefficients(kernel)
    l = _log_gaussian(x, a * m0, a**2 * s0**2 + v)
    return x, f, g, l, sp.diff(l, x), rules


def probability_flow_residual(kernel: SymbolicKernel | None = None) -> sp.Expr:
    """(dp/dt + d/dx[(f x - g^2 score / 2) p]) / p for Gaussian data: 0 iff the probability-flow ODE (Song et al. 2021,
    eq. 13) keeps the marginals p_t (continuity equation)."""
    x, f, g, l, score, rules = _gaussian_data_marginal(kernel)
    return _close(_continuity(l, x, f * x - g**2 * score / 2, 0), x, rules)


def reverse_sde_residual(kernel: SymbolicKernel | None = None) -> sp.Expr:
    """Fokker–Planck residual of the reverse-time SDE dx = [f x - g^2 score] dt + g dw_bar (Anderson 1982) for Gaussian data.

    In reverse time tau = T - t the law q(tau) = p(T - tau) must solve dq/dtau = d/dx[(f x - g^2 score) q] + g^2/2 q'',
    i.e. dp/dt + d/dx[(f x - g^2 score) p] + g^2/2 p'' = 0. Returns that, divided by p.
    """
    x, f, g, l, score, rules = _gaussian_data_marginal(kernel)
    return _close(_continuity(l, x, f * x - g**2 * score, -(g**2)), x, rules)


def dsm_target_residual() -> sp.Expr:
    """grad_{x_t} log N(x_t; alpha x0, std^2) at x_t = alpha x0 + std z, minus the DSM target -z / std: simplifies to 0."""
    x, x0, z = sp.symbols("x x0 z", real=True)
    a, s = sp.symbols("alpha std", positive=True)
    grad = sp.diff(_log_gaussian(x, a * x0, s**2), x)
    return sp.simplify(grad.subs(x, a * x0 + s * z) - (-z / s))


def general_identities() -> dict[str, sp.Expr]:
    """Every identity for a generic linear SDE (f, g, alpha, var undefined functions tied by the moment ODEs)."""
    return {
        "Fokker-Planck (kernel)": fokker_planck_residual(),
        "reverse SDE keeps p_t": reverse_sde_residual(),
        "probability flow keeps p_t": probability_flow_residual(),
        "DSM target = kernel score": dsm_target_residual(),
    }
