"""The probability-flow ODE of Song et al. (2021), integrated by torchdiffeq.

dx/dt = f(x, t) - g(t)^2 score(x, t) / 2   (eq. 13)

shares the marginals p_t of the forward SDE, so integrating it from T down to eps turns prior samples
into data samples (`sample`) and from eps up to T turns data into latents (`encode`).

torchdiffeq integrates in either direction. Its adaptive solvers normally step past the end time and
interpolate back; sdescore passes the end time as `step_t`, so every step lands on it and the score is
never evaluated outside the interval. The only evaluation torchdiffeq places off the interval is the
probe of its initial step-size heuristic (Hairer et al., II.4), which we evaluate at the end time instead:
it only influences the size of the first step.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torchdiffeq
from torch import Tensor

from . import _tsit5
from ._rk import NONFINITE
from ._checks import check_data, check_eps, check_int, check_not_half, check_real
from ._score import CheckedScore, NonFiniteError, SampleResult, _round_result, _step_of
from .sde import SDE, ScoreFn, wide_view, work_dtype

__all__ = ["ProbabilityFlowODE", "ADAPTIVE_METHODS", "FIXED_METHODS", "DEFAULT_METHOD"]

# torchdiffeq's adaptive methods, and Tsitouras' 5(4) pair added to its table where its internals allow (_tsit5)
ADAPTIVE_METHODS = (("tsit5",) if _tsit5.register() else ()) + ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
# sdescore's default adaptive method: Tsitouras' pair with sdescore's step (sdescore._rk), dopri5 where absent
DEFAULT_METHOD = "tsit5" if "tsit5" in ADAPTIVE_METHODS else "dopri5"
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
# fixed-step methods whose evaluations per step vary: a Runge–Kutta start (4 per step), then 1 (explicit) or 1 plus
# the corrector's iterations (implicit); the others make the same number in every step
_VARYING_COUNT = ("explicit_adams", "implicit_adams", "fixed_adams")


class ProbabilityFlowODE:
    """Probability-flow ODE dx/dt = f(x, t) - g(t)^2 score(x, t) / 2, callable as `ode(t, x)` for torchdiffeq.odeint.

    Song et al. (2021), eq. 13 and appendix D. x keeps its data shape (B, *dims); t is a scalar tensor in [0, T].
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}.")
        self.sde = sde
        self.score_fn = score_fn

    def __repr__(self) -> str:
        return f"ProbabilityFlowODE({self.sde!r})"

    def velocity(self, x: Tensor, t: Tensor, score: ScoreFn | None = None) -> Tensor:
        """dx/dt = f(x, t) - g(t)^2 score(x, t) / 2 at per-sample times t of shape (B,), unchecked.

        The likelihood's entry, and `func`'s where the drift is not linear. A half-precision x takes g(t)^2 in
        float32 (it exceeds float16's range for the VE-SDE's usual sigma_max) and the result rounded to its dtype.
        """
        t64 = t if t.dtype == torch.float64 else t.to(torch.float64)
        g = self.sde.g(t64)
        s = (score or self.score_fn)(x, t64.to(x.dtype))
        return torch.addcmul(self.sde.f(x, t64), wide_view(g * g, x), s, value=-0.5).to(x.dtype)

    def __call__(self, t: Tensor | float, x: Tensor) -> Tensor:
        """torchdiffeq's signature func(t, y): t a scalar in [0, T], x of shape (B, *dims).

        torchdiffeq's adaptive solvers evaluate outside the interval of ts = [t0, t1] unless told not to: their
        steps cross t1 and interpolate back (`step_t` makes them land on it), and their initial step-size heuristic
        probes f at t0 + h0, h0 unbounded (`first_step` skips it). Under odeint_adjoint the backward solve, from t1
        to t0, needs the same in `adjoint_options`, in torchdiffeq's internal time: negated where t1 < t0.
        """
        t_value = float(t.detach()) if isinstance(t, Tensor) else float(t)
        if not 0.0 <= t_value <= self.sde.T:
            raise ValueError(
                f"the probability-flow ODE is defined for t in [0, {self.sde.T}], got t={t_value}: torchdiffeq's "
                "adaptive solvers step past the end time and probe past it for their first step. Integrate with "
                "ode.sample / ode.encode, or pass odeint(ode, x, ts, options={'step_t': ts[-1:], 'first_step': h}) "
                "with ts inside [0, T] and h a first step shorter than |t1 - t0| (e.g. |t1 - t0| / 100); under "
                "odeint_adjoint also adjoint_options={'step_t': ts[:1] if t1 > t0 else -ts[:1], 'first_step': h} (the "
                "backward solve runs to t0, in negated time where t decreases)."
            )
        return self.func(self.score_fn, 0.0, self.sde.T)(t, x)

    def func(self, score: ScoreFn, lo: float, hi: float) -> Callable[[Tensor | float, Tensor], Tensor]:
        """The solvers' func(t, y) = velocity(y, t) for one time t shared by the batch, clamped to [lo, hi].

        Clamping keeps the probes of torchdiffeq's adaptive step-size heuristic inside the interval. Where the
        drift is linear (`SDE.drift_is_linear`: f = a(t) x) the velocity is formed from two host scalars,
        v = a(t) x - (g(t)^2 / 2) s: two whole-state operations and no per-sample coefficient tensors, and one for
        sdescore's Runge–Kutta step, which folds the factor -g(t)^2 / 2 into its weights; otherwise it is
        `velocity` at t repeated over the batch.
        """
        sde = self.sde

        def func(t: Tensor | float, y: Tensor) -> Tensor:
            tv = torch.as_tensor(t, dtype=torch.float64, device=y.device).clamp(lo, hi)
            return self.velocity(y, tv.expand(y.shape[0]), score)

        if not sde.drift_is_linear:
            return func
        return _LinearFlow(sde, score, lo, hi, func)

    def sample(
        self,
        x_T: Tensor,
        *,
        method: str = DEFAULT_METHOD,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        eps: float = 1e-3,
        steps: int | None = None,
    ) -> SampleResult:
        """Integrate from t = T to t = eps. x_T: (B, *dims). Fixed-step methods take `steps`, adaptive ones rtol/atol.

        `method` is any torchdiffeq method; the default is DEFAULT_METHOD ('tsit5', with sdescore's step). A
        half-precision x_T (fixed-step methods only) is integrated in float32 (`work_dtype`: the velocity
        f - g^2 s / 2 exceeds float16's range for |x| > 4750 with the VE-SDE of sigma_max = 1000 although the state
        fits), with the score called at x and t in x_T's dtype; the result is rounded to x_T's dtype once.
        """
        x_T = check_data("x_T", x_T)
        eps = check_eps(eps, self.sde.T)
        return self._solve(x_T, "x_T", self.sde.T, eps, method, rtol, atol, steps, "ProbabilityFlowODE.sample")

    def encode(
        self,
        x0: Tensor,
        *,
        method: str = DEFAULT_METHOD,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        eps: float = 1e-3,
        steps: int | None = None,
    ) -> SampleResult:
        """Integrate from t = eps to t = T: the latent z = x(T) of data x0 (B, *dims); the inverse of `sample`.

        A half-precision x0 is integrated in float32, as in `sample`.
        """
        x0 = check_data("x0", x0)
        eps = check_eps(eps, self.sde.T)
        return self._solve(x0, "x0", eps, self.sde.T, method, rtol, atol, steps, "ProbabilityFlowODE.encode")

    def _solve(
        self, x: Tensor, name: str, t0: float, t1: float, method: str, rtol: float, atol: float, steps: int | None,
        where: str,
    ) -> SampleResult:
        score = CheckedScore(self.score_fn, dtype=x.dtype)
        lo, hi = min(t0, t1), max(t0, t1)
        options = solver_options(method, rtol, atol, steps, t0, t1, x.device)
        if method in ADAPTIVE_METHODS:
            # the error estimate is compared with rtol and atol: in a state rounded to 3 (bfloat16) or 4 (float16)
            # significant digits it is rounding noise (thousands of rejected steps), and the norms overflow float16
            check_not_half(name, x, f"the adaptive method {method!r} needs float32 or float64: in half precision its "
                           "error estimate is rounding noise (relative 1e-3 in float16, 8e-3 in bfloat16) and its norms "
                           "overflow (a fixed-step method, steps=, takes a half-precision state)")

        func = self.func(score, lo, hi)  # fixed grids lie inside [lo, hi]; adaptive probes are clamped there
        dtype = work_dtype(x)
        # the reported time is the solver's, cast to the working dtype (an adaptive method has no steps)
        h, slack = (hi - lo) / (steps or 1), time_rounding(dtype, t0, t1)
        step_of = fixed_step_of(score, method, steps, lambda t: (abs(t - t0) + slack) / h + 1e-6)
        ts = torch.tensor([t0, t1], dtype=torch.float64, device=x.device)
        out = odeint_naming_nonfinite(score, x, where, step_of, func, x.to(dtype), ts, method, options)[-1]
        score.raise_if_nonfinite(out, where, step_of)
        return SampleResult(x=_round_result(out, x.dtype, name, where), nfe=score.nfe)


class _LinearFlow:
    """func(t, y) = a(t) y - (g(t)^2 / 2) s(y, t) for a drift f = a(t) x, with a(t) and g(t) as host floats.

    Two entries for sdescore's Runge–Kutta step (`sdescore._rk`), which uses them where the solver's time is
    float64:
    - `prepare(times)`: the step announces its stage times, and their coefficients come from one call of the
      SDE's tensor methods; a(t) and g(t) at one time cost about ten small tensor operations, which at small
      states outweigh the whole-state ones. Any other time is computed when it comes.
    - `scaled(t, y) -> (k, m)` with func(t, y) = m k, in one whole-state operation: with c = -g^2 / 2,
      k = s + (a / c) y and m = c, or k = y + (c / a) s and m = a where |a| > |c| (the ratio stays at most 1; the
      VP-SDE has a = c, the sub-VP |a| > |c| near t = 0, where its g vanishes); the step folds m into its stage
      weights, where func itself takes two operations.
    A time t that requires grad goes through `generic` (the graph through t is kept).
    """

    def __init__(self, sde: SDE, score: ScoreFn, lo: float, hi: float, generic: Callable[[Any, Tensor], Tensor]):
        self.sde, self.score, self.lo, self.hi, self.generic = sde, score, lo, hi, generic
        self._coeffs: dict[float, tuple[float, float]] = {}

    def _clamp(self, t: float) -> float:
        return min(max(t, self.lo), self.hi)

    def _coefficients(self, tv: list[float]) -> dict[float, tuple[float, float]]:
        """{t: (a(t), g(t))} for clamped times t, from one call of each of the SDE's methods, on the host in float64."""
        th = torch.tensor(tv, dtype=torch.float64)
        return dict(zip(tv, zip(self.sde.linear_drift(th).tolist(), self.sde.g(th).tolist())))

    def prepare(self, times: list[float]) -> None:
        """Compute (a(t), g(t)) for the coming evaluation times t (floats, before clamping), replacing the last set."""
        self._coeffs = self._coefficients([self._clamp(t) for t in times])

    def scaled(self, t: float, y: Tensor) -> tuple[Tensor, float]:
        """(k, m) with func(t, y) = m k, c = -g(t)^2 / 2: k = s + (a / c) y, m = c, or k = y + (c / a) s, m = a where
        |a| > |c|; k = s itself, m = c where a = 0 (VE: no whole-state operation at all), and k = a y, m = 1 where
        c = 0 (k must not be the state y itself, which the step goes on reading). k may be the score's own tensor:
        the caller multiplies out of place."""
        tv = self._clamp(t)
        a, g = self._coeffs[tv] if tv in self._coeffs else self._coefficients([tv])[tv]
        c = -0.5 * g * g
        s = self.score(y, torch.full((y.shape[0],), tv, dtype=y.dtype, device=y.device))
        if c == 0.0:
            return torch.mul(y, a), 1.0
        if a == 0.0:
            return s, c
        # the larger coefficient factored out, so that the one inside is at most 1 in size (no overflow)
        if abs(c) >= abs(a):
            return torch.add(s, y, alpha=a / c), c
        return torch.add(y, s, alpha=c / a), a

    def __call__(self, t: Tensor | float, y: Tensor) -> Tensor:
        if isinstance(t, Tensor) and t.requires_grad:  # keep the graph through t (host floats would cut it)
            return self.generic(t, y)
        k, m = self.scaled(float(t), y)
        return k if m == 1.0 else torch.mul(k, m)  # out of place: k may be the score's own tensor


def fixed_step_of(
    score: CheckedScore, method: str, steps: int | None, position: Callable[[float], float]
) -> Callable[[int, float], int | None]:
    """`raise_if_nonfinite`'s step_of for a torchdiffeq solve of `steps` fixed steps: `_step_of` of the final count
    score.nfe, read when a non-finite evaluation is named; None for an adaptive method (steps=None), whose rejected
    steps and initial-step probe evaluate too.

    position(t): a reported time's distance from the grid's start in steps, raised by a bound on its rounding; the
    time rule of the Adams methods, whose count varies from step to step, takes its floor.
    """
    if method in ADAPTIVE_METHODS or not steps:
        return lambda k, t: None
    uniform = method not in _VARYING_COUNT
    return lambda k, t: _step_of(score.nfe, steps, position, uniform=uniform)(k, t)


def time_rounding(dtype: torch.dtype, *times: float) -> float:
    """A bound on the rounding of a time of the given magnitudes in dtype: eps times the largest |time|, twice the
    error of torchdiffeq's cast of the solver's float64 time to the state's dtype (up to eps / 2 of |t|: 3e-8 just
    below t = 1 in float32, where the bound, 1.2e-7, is a hundredth of a step at 1e5 steps on [0, 1]); the float64
    sums of the rule get 1e-6 step on top."""
    return torch.finfo(dtype).eps * max(abs(v) for v in times)


def odeint_naming_nonfinite(
    score: CheckedScore, x: Tensor, where: str, step_of: Callable[[int, float], int | None], func: Callable, y0: Any,
    ts: Tensor, method: str, options: dict[str, Any], *, nonfinite_state: str | None = None,
) -> Any:
    """torchdiffeq.odeint(func, y0, ts, method, **options), with its failures on NaN or inf raised as NonFiniteError.

    On a non-finite state or derivative torchdiffeq's adaptive step (and sdescore's, as torchdiffeq's) raises an
    AssertionError, at once or after rejecting every step until the step size underflows. After a non-finite
    score it is raised here as the NonFiniteError of `score.raise_if_nonfinite(x, where, step_of)` (x: the finite
    starting data); with every score finite, a non-finite state is a NonFiniteError with the message
    `nonfinite_state` (default: the state became non-finite); any other AssertionError is re-raised as it is.
    """
    try:
        return torchdiffeq.odeint(func, y0, ts, method=method, **options)
    except AssertionError as err:
        score.raise_if_nonfinite(x, where, step_of)
        if NONFINITE in str(err):
            raise NonFiniteError(
                nonfinite_state or f"{where}: the state became non-finite although every score was finite."
            ) from err
        raise


def solver_options(
    method: str, rtol: float, atol: float, steps: int | None, t0: float, t1: float, device: torch.device
) -> dict[str, Any]:
    """odeint keyword arguments for integrating from t0 to t1 without evaluating outside [t0, t1]."""
    rtol = check_real("rtol", rtol, positive=True)
    atol = check_real("atol", atol, positive=True)
    if method in ADAPTIVE_METHODS:
        if steps is not None:
            raise ValueError(f"steps applies to fixed-step methods {FIXED_METHODS}; {method!r} is adaptive: use rtol/atol.")
        return {"rtol": rtol, "atol": atol, "options": {"step_t": torch.tensor([t1], dtype=torch.float64, device=device)}}
    if method in FIXED_METHODS:
        if steps is None:
            raise ValueError(f"the fixed-step method {method!r} needs steps=, the number of steps from {t0} to {t1}.")
        steps = check_int("steps", steps, minimum=1)
        grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64, device=device)
        return {"options": {"grid_constructor": lambda func, y0, t: grid}}
    raise ValueError(f"method must be a torchdiffeq method in {ADAPTIVE_METHODS + FIXED_METHODS}, got {method!r}.")
