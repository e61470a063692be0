"""Exact log-likelihood and bits/dim through the probability-flow ODE.

The probability-flow ODE dx/dt = v(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 (Song et al. 2021, eq. 13) is a
continuous normalizing flow, so the instantaneous change of variables (Chen et al. 2018, theorem 1)

    d log p_t(x(t)) / dt = -div v(x(t), t)

integrated from t = eps, where x(eps) = x, up to t = T, where x(T) = z, gives (Song et al. 2021, eq. 39)

    log p_eps(x) = log p_T(z) + delta_logp,      delta_logp = int_eps^T div v(x(t), t) dt.

`log_likelihood` integrates the augmented state (x, delta_logp) with torchdiffeq; the drift and its divergence
come from one evaluation of the score, the divergence by autograd (exact: D vector-Jacobian products; or the
Hutchinson estimate with probes drawn once per trajectory). The ODE is solved in a time variable and a
rescaled state chosen for smoothness (`TIME_VARIABLES`, docs/theory/likelihood.md); this changes the number
of score evaluations, not the quantity computed.

`bits_per_dim` turns integer data into bits per dimension with uniform dequantization, the change of
variables of the affine map to the model's data space and optional importance weighting over several
dequantization draws; `dataset_bits_per_dim` walks a DataLoader.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Protocol

import torch
from torch import Tensor

from ._checks import (
    HALF_DTYPES, all_finite, check_choice, check_data, check_eps, check_float_dtype, check_generator, check_int,
    check_not_half,
)
from ._score import CheckedScore, NonFiniteError
from .flow import (
    DEFAULT_METHOD, ProbabilityFlowODE, fixed_step_of, odeint_naming_nonfinite, solver_options, time_rounding,
)
from .sde import SDE, ScoreFn, VPSDE

__all__ = [
    "log_likelihood",
    "bits_per_dim",
    "dataset_bits_per_dim",
    "LikelihoodResult",
    "BitsPerDimResult",
    "DatasetBitsPerDim",
    "TraceEstimator",
    "ExactTrace",
    "HutchinsonTrace",
    "RademacherProbe",
    "GaussianProbe",
    "TimeVariable",
    "SDETime",
    "LogSNRTime",
    "TRACES",
    "PROBES",
    "TIME_VARIABLES",
]

_LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class LikelihoodResult:
    """What `log_likelihood` returns; every tensor is detached and has x's dtype and device.

    logp: (B,) log p_eps(x) in nats, the log-density of the model's law at t = eps (= prior_logp + delta_logp).
    prior_logp: (B,) log p_T(z) under the prior (the SDE's, or the `prior_logp` callable given).
    delta_logp: (B,) int_eps^T div v(x(t), t) dt along the probability-flow trajectory.
    z: the latent x(T), shaped like x.
    nfe: score evaluations made (one per ODE right-hand side).
    """

    logp: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int


@dataclass(frozen=True)
class BitsPerDimResult:
    """What `bits_per_dim` returns.

    bpd: (B,) mean over the n_dequant draws of the per-draw bits/dim; each draw is an unbiased estimate of
        the variational (dequantization) bound E_u[-log2 p(x + u)] / D, an upper bound on the discrete bits/dim.
    bpd_iw: (B,) importance-weighted bound -log2(mean_k p(x + u_k)) / D; bpd_iw <= bpd, and in expectation it
        decreases with n_dequant towards the discrete model's bits/dim (Burda et al. 2016) when logp is exact
        (trace='exact'); Hutchinson noise biases it downwards.
    draws: (B, n_dequant) bits/dim of each dequantization draw.
    nfe: score evaluations made (all draws are integrated as one batch).
    """

    bpd: Tensor
    bpd_iw: Tensor
    draws: Tensor
    nfe: int


@dataclass(frozen=True)
class DatasetBitsPerDim:
    """What `dataset_bits_per_dim` returns: means over the n images and their standard errors (std / sqrt(n))."""

    bpd: float
    stderr: float
    bpd_iw: float
    stderr_iw: float
    n: int
    nfe: int


# ---------------------------------------------------------------------------------------------- probes
class RademacherProbe:
    """Probes with independent entries +-1 with probability 1/2: E[eps eps^T] = I, and eps^T eps = D exactly."""

    def draw(self, shape: tuple[int, ...], generator, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype).mul_(2).sub_(1)

    def __repr__(self) -> str:
        return "RademacherProbe()"


class GaussianProbe:
    """Probes with independent standard normal entries: E[eps eps^T] = I."""

    def draw(self, shape: tuple[int, ...], generator, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return "GaussianProbe()"


PROBES: dict[str, Any] = {"rademacher": RademacherProbe(), "gaussian": GaussianProbe()}


# ---------------------------------------------------------------------------------------------- trace estimators
class TraceEstimator(Protocol):
    """Divergence div_x v = tr(dv/dx) of a velocity v computed from x with autograd.

    `draw` is called once per call of `log_likelihood`, before the ODE is solved (probes are held fixed along
    the trajectory); `divergence(v, x, probes)` is called once per right-hand side and must free the graph.
    """

    def draw(self, x: Tensor, probe: Any, n_probes: int, generator: torch.Generator | None) -> Tensor | None: ...

    def divergence(self, v: Tensor, x: Tensor, probes: Tensor | None) -> Tensor: ...


class ExactTrace:
    """div v = sum_i d v_i / d x_i by D vector-Jacobian products on one graph. Exact; costs D backward passes.

    Samples of the batch must not interact in score_fn (no batch statistics): row i of each VJP is then
    sample i's own Jacobian row.
    """

    def draw(self, x: Tensor, probe: Any, n_probes: int, generator: torch.Generator | None) -> None:
        if n_probes != 1:
            raise ValueError(f"n_probes applies to trace='hutchinson'; the exact trace uses none, got n_probes={n_probes}.")
        return None

    def divergence(self, v: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
        B = x.shape[0]
        vf = v.reshape(B, -1)
        D = vf.shape[1]
        div = torch.zeros(B, dtype=v.dtype, device=v.device)
        for i in range(D):
            (row,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=i < D - 1)
            div = div + row.reshape(B, -1)[:, i]
        return div

    def __repr__(self) -> str:
        return "ExactTrace()"


class HutchinsonTrace:
    """div v ~ (1/K) sum_k eps_k^T (dv/dx) eps_k with E[eps eps^T] = I: unbiased, one VJP per probe.

    Hutchinson (1989), Skilling (1989); Grathwohl et al. (2019), FFJORD. The K probes are drawn once per
    trajectory and held fixed, so the solver integrates a smooth function of time.
    """

    def draw(self, x: Tensor, probe: Any, n_probes: int, generator: torch.Generator | None) -> Tensor:
        return probe.draw((n_probes, *x.shape), generator, x.dtype, x.device)

    def divergence(self, v: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
        K = probes.shape[0]
        est = torch.zeros(x.shape[0], dtype=v.dtype, device=v.device)
        for k in range(K):
            (vjp,) = torch.autograd.grad(v, x, grad_outputs=probes[k], retain_graph=k < K - 1)
            est = est + (vjp * probes[k]).reshape(x.shape[0], -1).sum(1)
        return est / K

    def __repr__(self) -> str:
        return "HutchinsonTrace()"


TRACES: dict[str, TraceEstimator] = {"exact": ExactTrace(), "hutchinson": HutchinsonTrace()}


# ---------------------------------------------------------------------------------------------- time variables
class Clock(NamedTuple):
    """At one value of the integration variable tau (0-d float64 tensors): the SDE time t, dt/dtau, and the
    frame w = c x of the integrated state as log c and d log c / dtau."""

    t: Tensor
    dt_dtau: Tensor
    log_c: Tensor
    dlogc_dtau: Tensor


class TimeVariable(Protocol):
    """The variable tau in which the ODE is integrated, and the frame w = c(t) x of the integrated state.

    Reparametrizing time and rescaling the state leaves x(eps) -> x(T) and delta_logp unchanged (up to the
    bookkeeping term D log c done in closed form); only the smoothness the solver sees changes.
    """

    def validate(self, sde: SDE, eps: float) -> None: ...

    def tau(self, sde: SDE, t: float) -> float: ...

    def clock(self, sde: SDE, tau: Tensor) -> Clock: ...


class SDETime:
    """tau = t, the SDE's own time, and the state x itself (c = 1). Needs only f and g: works for every SDE."""

    def validate(self, sde: SDE, eps: float) -> None:
        return None

    def tau(self, sde: SDE, t: float) -> float:
        return t

    def clock(self, sde: SDE, tau: Tensor) -> Clock:
        zero = torch.zeros_like(tau)
        return Clock(tau, torch.ones_like(tau), zero, zero)

    def __repr__(self) -> str:
        return "SDETime()"


class ClockNotDifferentiable(ValueError):
    """A `LogSNRTime` clock whose derivatives autograd cannot see, or sees wrong: the SDE's `t_from_log_snr` or
    `kernel` gives values without a graph (bisection under torch.no_grad(), a table, .detach()). The automatic
    time variable (None) then integrates in t; an explicit one raises this."""


class LogSNRTime:
    """A time variable defined through the log-SNR lambda, with the state in the variance-preserving frame.

    tau and lambda are related by a fixed monotone map (`log_snr_of_tau`, `tau_of_log_snr`), the same for every
    SDE; the SDE enters through lambda(t) = `sde.log_snr` and its inverse `sde.t_from_log_snr`. The state is
    w = c x with c = sqrt(sigmoid(lambda)) / alpha(t): w = x / (alpha sqrt(1 + sigma_bar^2)), sigma_bar = std / alpha,
    which is x itself for the VP-SDE and the VP-scaled state for VE and sub-VP. With y = x / alpha every linear
    SDE's probability-flow ODE is the same ODE dy/dsigma_bar = -alpha sigma_bar score (Karras et al. 2022, eq. 4),
    so this choice is schedule-free. dt/dtau and d log c / dtau come from autograd through these maps.
    """

    def __init__(self, name: str, log_snr_of_tau: Callable[[Tensor], Tensor], tau_of_log_snr: Callable[[Tensor], Tensor]):
        self.name = name
        self.log_snr_of_tau = log_snr_of_tau
        self.tau_of_log_snr = tau_of_log_snr

    def __repr__(self) -> str:
        return f"LogSNRTime({self.name!r})"

    def validate(self, sde: SDE, eps: float) -> None:
        t = torch.tensor([eps, sde.T], dtype=torch.float64)
        lam = sde.log_snr(t)  # NotImplementedError without a kernel
        back = sde.t_from_log_snr(lam)  # NotImplementedError without the inverse
        if not bool(torch.isfinite(lam).all()) or not float(lam[0]) > float(lam[1]):
            raise ValueError(
                f"time_variable={self.name!r} needs a log-SNR that decreases on [eps, T]; {type(sde).__name__}.log_snr "
                f"gave {lam.tolist()} at t = {t.tolist()}. Use time_variable='t'."
            )
        if not torch.allclose(back, t, rtol=1e-6, atol=1e-12):
            raise ValueError(
                f"{type(sde).__name__}.t_from_log_snr does not invert log_snr: t = {t.tolist()} -> {back.tolist()}; "
                "fix the SDE or use time_variable='t'."
            )
        # The clock's autograd derivatives against central differences of its values at an interior tau: a
        # derivative that is present but wrong (a partial .detach(), a constant alpha that is not constant) would
        # otherwise bias log p silently. With h = 1e-4 of the tau range the differences are good to ~1e-8
        # relative (truncation) and ~1e-11 absolute (rounding of O(1) values); a missing term errs by O(0.1-10).
        tau0, tau1 = self.tau(sde, eps), self.tau(sde, sde.T)
        mid, h = 0.5 * (tau0 + tau1), 1e-4 * abs(tau1 - tau0)
        at = lambda tau: self.clock(sde, torch.tensor(tau, dtype=torch.float64))  # noqa: E731
        clk, plus, minus = at(mid), at(mid + h), at(mid - h)
        for name, got, diff, culprit in (
            ("dt/dtau", clk.dt_dtau, (plus.t - minus.t) / (2 * h), "t_from_log_snr"),
            ("d log c/dtau", clk.dlogc_dtau, (plus.log_c - minus.log_c) / (2 * h), "kernel (d log alpha / dt)"),
        ):
            if not bool(torch.isclose(got, diff, rtol=1e-4, atol=1e-6)):
                raise ClockNotDifferentiable(
                    f"time_variable={self.name!r}: {name} by autograd is {float(got):.6g} at tau = {mid:.6g}, but central "
                    f"differences of the values give {float(diff):.6g}: {type(sde).__name__}.{culprit} is not "
                    "differentiable by autograd (computed without a graph, under torch.no_grad() or detached?). "
                    "Make it differentiable or use time_variable='t', which needs only f and g."
                )

    def tau(self, sde: SDE, t: float) -> float:
        return float(self.tau_of_log_snr(sde.log_snr(torch.tensor([t], dtype=torch.float64)))[0])

    def clock(self, sde: SDE, tau: Tensor) -> Clock:
        # chain rule through three independent scalar graphs, differentiated by one backward pass:
        # lambda = L(tau), t = t_from_log_snr(lambda), log alpha(t)
        with torch.enable_grad():
            tau = tau.detach().reshape(1).requires_grad_(True)
            lam = self.log_snr_of_tau(tau)
            lam_leaf = lam.detach().requires_grad_(True)
            t = sde.t_from_log_snr(lam_leaf)
            t_leaf = t.detach().requires_grad_(True)
            log_alpha = torch.log(sde.kernel(t_leaf)[0])
            # a piece without a graph contributes no gradient: None below, never a silent 0
            total = sum(p for p in (lam, t, log_alpha) if p.requires_grad)
            dlam_dtau, dt_dlam, dlogalpha_dt = (
                torch.autograd.grad(total.sum(), (tau, lam_leaf, t_leaf), allow_unused=True)
                if isinstance(total, Tensor) else (None, None, None)
            )
        if dlam_dtau is None:
            raise ClockNotDifferentiable(
                f"time_variable={self.name!r}: its log_snr_of_tau is not differentiable by autograd; "
                "give one that is, or use time_variable='t'."
            )
        if dt_dlam is None:
            raise ClockNotDifferentiable(
                f"time_variable={self.name!r} needs dt/dlambda by autograd, but {type(sde).__name__}.t_from_log_snr "
                "returned t without a graph in lambda (computed under torch.no_grad(), detached, or looked up?). "
                "Make it differentiable or use time_variable='t', which needs only f and g."
            )
        if dlogalpha_dt is None:  # alpha without a graph in t: zero for a constant alpha (VE); validate checks it
            dlogalpha_dt = torch.zeros_like(t_leaf)
        dt_dtau = dt_dlam * dlam_dtau
        # log c = log sqrt(sigmoid(lambda)) - log alpha(t)
        log_c = 0.5 * torch.nn.functional.logsigmoid(lam_leaf.detach()) - log_alpha.detach()
        dlogc_dtau = 0.5 * torch.sigmoid(-lam_leaf.detach()) * dlam_dtau - dlogalpha_dt * dt_dtau
        return Clock(t_leaf.detach()[0], dt_dtau[0], log_c[0], dlogc_dtau[0])


# The reference schedule: the VP-SDE of Song et al. (2021) with beta from 0.1 to 20 (DDPM's), as a clock.
_REFERENCE_VP = VPSDE(beta_min=0.1, beta_max=20.0)

TIME_VARIABLES: dict[str, TimeVariable] = {
    # tau = the time of the reference VP-SDE at the same log-SNR: tau ~ sigma_bar^2 at low noise, ~ sqrt(log sigma_bar) at high noise
    "vp": LogSNRTime("vp", _REFERENCE_VP.log_snr, _REFERENCE_VP.t_from_log_snr),
    # tau = rho = log sigma_bar = -lambda / 2
    "log_sigma": LogSNRTime("log_sigma", lambda rho: -2.0 * rho, lambda lam: -0.5 * lam),
    "t": SDETime(),
}


def _not_a_class(name: str, value: Any) -> Any:
    """Refuse a class passed where an instance is expected: its methods would be unbound, and the call would
    fail later with a missing-argument error that names neither the argument nor the fix."""
    if isinstance(value, type):
        raise TypeError(
            f"{name} must be a name or an instance, got the class {value.__name__} itself; pass an instance, "
            f"{name}={value.__name__}()."
        )
    return value


def _resolve_time_variable(time_variable: Any, sde: SDE, eps: float) -> TimeVariable:
    if time_variable is None:
        try:
            TIME_VARIABLES["vp"].validate(sde, eps)
            return TIME_VARIABLES["vp"]
        except (NotImplementedError, ClockNotDifferentiable):
            return TIME_VARIABLES["t"]
    tv = _not_a_class("time_variable", check_choice("time_variable", time_variable, TIME_VARIABLES))
    if not all(callable(getattr(tv, m, None)) for m in ("validate", "tau", "clock")):
        raise TypeError(
            f"time_variable must be one of {sorted(TIME_VARIABLES)} or an object with validate, tau and clock methods, "
            f"got {type(time_variable).__name__}."
        )
    try:
        tv.validate(sde, eps)
    except NotImplementedError as err:
        raise ValueError(
            f"time_variable={time_variable!r} needs {type(sde).__name__} to implement kernel, log_snr and "
            f"t_from_log_snr ({err}); use time_variable='t', which needs only f and g."
        ) from err
    return tv


# ---------------------------------------------------------------------------------------------- log-likelihood
def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    trace: str | TraceEstimator = "exact",
    probe: str | Any = "rademacher",
    n_probes: int = 1,
    method: str = DEFAULT_METHOD,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    steps: int | None = None,
    time_variable: str | TimeVariable | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> LikelihoodResult:
    """log p_eps(x) = log p_T(z) + int_eps^T div v(x(t), t) dt along the probability-flow ODE from x(eps) = x.

    Song et al. (2021), section 4.3 and appendix D.2, eq. 39; the instantaneous change of variables of
    Chen et al. (2018). Here v = f - g^2 score / 2 (eq. 13), z = x(T), and the sign convention is
    delta_logp = log p_eps(x) - log p_T(z) = +int_eps^T div v dt (the flow runs forward in t, compressing the
    data's density into the prior's). The augmented state (x, delta_logp) is integrated by torchdiffeq on x's
    device and dtype; each right-hand side evaluates the score once and takes the divergence of that same
    velocity by autograd; the graph is freed at once, so memory does not grow with the number of steps and
    nothing returned carries a graph. The score is evaluated only at times in [eps, T]. log_likelihood may be
    called under torch.no_grad() but not under torch.inference_mode() (RuntimeError), and score_fn must not
    itself turn autograd off (TypeError): its output must depend on x through autograd for the divergence.

    The solver runs in `time_variable` tau with the state w = c(t) x (`TIME_VARIABLES`). The default, 'vp'
    for every SDE that implements `kernel`, `log_snr` and `t_from_log_snr` ('t' for one that raises
    NotImplementedError there, or whose `t_from_log_snr` or `kernel` autograd cannot differentiate — checked
    against central differences, `ClockNotDifferentiable` for an explicit log-SNR time variable; one whose log-SNR
    does not decrease, or whose inverse does not invert it, gets a ValueError), integrates in the time of the reference VP-SDE (beta 0.1 -> 20) at the same log-SNR, in the
    variance-preserving frame; see docs/theory/likelihood.md
    for why and for the measured numbers of evaluations. tol: rtol and atol apply to (w, delta_logp), each
    with torchdiffeq's RMS norm over the batch. The norm bounds the batch's error, not each sample's: the mean
    error in logp is typically below atol + rtol |delta_logp|, while single samples reach some tens of times that
    (measured: up to 46 times, 2e-3 nats, at rtol = atol = 1e-5 on the 8-D mixture of `validation`'s likelihood
    check, batch 128, seeds 0-2); lower the tolerances where single samples matter.

    Args:
        sde: any `SDE`.
        score_fn: score_fn(x, t) -> shaped like x, with t of shape (B,) in x's dtype. Must be differentiable in x
            by autograd (not wrapped in torch.no_grad, not detaching x); samples must not interact (no batch
            statistics).
        x: (B, *dims) floating data in the model's space, finite.
        trace: 'exact' (D vector-Jacobian products per step; for small D) or 'hutchinson' (unbiased, one VJP per
            probe), or a `TraceEstimator`.
        probe: 'rademacher' or 'gaussian' (or an object with `draw`): Hutchinson's probe law.
        n_probes: Hutchinson probes per sample, drawn once and held fixed along the trajectory; the estimate averages them.
        method: a torchdiffeq method; fixed-step methods take `steps` (uniform in tau). The default 'tsit5' is
            Tsitouras' 5(4) pair, which sdescore adds to torchdiffeq's table (`sdescore._tsit5`, run with the
            cheaper step of `sdescore._rk`): a step costs six evaluations, as with 'dopri5', and here it reaches
            the same accuracy with 4–20 % fewer.
        rtol: relative tolerance of the adaptive methods.
        atol: absolute tolerance of the adaptive methods.
        steps: the number of steps of a fixed-step method.
        eps: the starting time; logp is the density of the law at t = eps.
        time_variable: 'vp', 'log_sigma', 't', a `TimeVariable`, or None (automatic, see above).
        prior_logp: callable z -> (B,) log-density at T; default `sde.prior_logp` (the exact law at T in tests).
        generator: for the probes.
    Returns:
        LikelihoodResult(logp, prior_logp, delta_logp, z, nfe).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "log_likelihood cannot run under torch.inference_mode(): it differentiates the score by autograd for the "
            "divergence of the probability flow. Call it under torch.no_grad() instead (nothing returned carries a graph)."
        )
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}.")
    x = check_not_half("x", check_data("x", x).detach(), "an exact log-likelihood integrates log-densities of "
                       "order D to tolerances of 1e-5 and more, which half precision cannot hold")
    eps = check_eps(eps, sde.T)
    estimator = _not_a_class("trace", check_choice("trace", trace, TRACES))
    if not (callable(getattr(estimator, "draw", None)) and callable(getattr(estimator, "divergence", None))):
        raise TypeError(f"trace must be one of {sorted(TRACES)} or a TraceEstimator, got {type(trace).__name__}.")
    probe_law = _not_a_class("probe", check_choice("probe", probe, PROBES))
    if not callable(getattr(probe_law, "draw", None)):
        raise TypeError(f"probe must be one of {sorted(PROBES)} or an object with a draw method, got {type(probe).__name__}.")
    n_probes = check_int("n_probes", n_probes, minimum=1)
    generator = check_generator(generator, x.device)
    if prior_logp is None:
        prior_logp = sde.prior_logp
    elif not callable(prior_logp):
        raise TypeError(f"prior_logp must be callable as prior_logp(z) -> (B,), got {type(prior_logp).__name__}.")
    tv = _resolve_time_variable(time_variable, sde, eps)
    tau0, tau1 = tv.tau(sde, eps), tv.tau(sde, sde.T)
    options = solver_options(method, rtol, atol, steps, tau0, tau1, x.device)

    probes = estimator.draw(x, probe_law, n_probes, generator)
    score = CheckedScore(score_fn)
    ode = ProbabilityFlowODE(sde, score_fn)
    B, D = x.shape[0], x[0].numel()
    lo, hi = min(tau0, tau1), max(tau0, tau1)

    def attached_score(xi: Tensor, t: Tensor) -> Tensor:
        # xi requires grad here: a score output cut off from x (no_grad, detach, a constant) would make autograd
        # differentiate the drift alone, silently (VP) or with its own error (VE). Without grad it is plainly cut
        # off; a network's output requires grad through its parameters even when it detached x, so the first
        # evaluation also asks autograd whether xi is in the output's graph at all (one vector-Jacobian product).
        first = score.nfe == 0
        s = score(xi, t)
        if not s.requires_grad or (
            first and torch.autograd.grad(s, xi, torch.ones_like(s), retain_graph=True, allow_unused=True)[0] is None
        ):
            raise TypeError(
                "log_likelihood: score_fn's output does not depend on x through autograd (it does not require grad "
                "although x does): is score_fn wrapped in torch.no_grad() or torch.inference_mode(), does it detach "
                "x, or is it constant in x? log_likelihood differentiates the score for the divergence of the "
                "probability flow; remove the wrapper (log_likelihood itself may be called under torch.no_grad())."
            )
        return s

    def func(tau: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        w = state[0]
        # the solver's initial-step probe lies past tau1; evaluating there at tau1 only sizes the first step
        clk = tv.clock(sde, tau.to(torch.float64).clamp(lo, hi))
        t = clk.t.clamp(eps, sde.T).expand(B)
        c = torch.exp(clk.log_c).to(x.dtype)
        dt, dlogc = clk.dt_dtau.to(x.dtype), clk.dlogc_dtau.to(x.dtype)
        with torch.enable_grad():
            xi = (w / c).detach().requires_grad_(True)
            v = ode.velocity(xi, t, attached_score)
            div = estimator.divergence(v, xi, probes)
        # w = c x:  dw/dtau = c (v dt/dtau + x dlogc/dtau),  div_w = div_x v dt/dtau + D dlogc/dtau
        return c * (v.detach() * dt + xi.detach() * dlogc), div.detach() * dt + D * dlogc

    c0 = tv.clock(sde, torch.tensor(tau0, dtype=torch.float64, device=x.device)).log_c
    c1 = tv.clock(sde, torch.tensor(tau1, dtype=torch.float64, device=x.device)).log_c
    w0 = x * torch.exp(c0).to(x.dtype)
    taus = torch.tensor([tau0, tau1], dtype=torch.float64, device=x.device)
    state0 = (w0, torch.zeros(B, dtype=x.dtype, device=x.device))

    def position(t: float) -> float:
        # the Adams methods' time rule, in tau: the reported t is the solver's tau cast to x's dtype, mapped to t
        # and cast again, each cast moving tau by up to eps / 2 of |tau| (the second through dtau/dt)
        t = min(max(t, eps), sde.T)
        tau = tv.tau(sde, t)
        e = torch.finfo(x.dtype).eps
        slack = time_rounding(x.dtype, tau0, tau1) + abs(tv.tau(sde, min(max(t * (1 + e), eps), sde.T)) - tau)
        return (abs(tau - tau0) + slack) / (abs(tau1 - tau0) / steps) + 1e-6

    step_of = fixed_step_of(score, method, steps, position)

    nonfinite = ("log_likelihood: delta_logp (the integrated divergence) became non-finite although every score was "
                 "finite; check score_fn's gradient (torch.where with a NaN or inf branch is a common cause).")
    w1, acc = (s[-1] for s in odeint_naming_nonfinite(score, x, "log_likelihood", step_of, func, state0, taus,
                                                        method, options, nonfinite_state=nonfinite))

    z = w1 / torch.exp(c1).to(x.dtype)
    # log p_x = log p_w + D log c at both ends
    delta_logp = acc + D * (c0 - c1).to(x.dtype)

    score.raise_if_nonfinite(z, "log_likelihood", step_of)
    if not all_finite(delta_logp):
        raise NonFiniteError(nonfinite)
    prior = prior_logp(z)
    if not isinstance(prior, Tensor) or prior.shape != (B,):
        got = tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__
        raise ValueError(f"prior_logp must return one log-density per sample, shape ({B},), got {got}.")
    prior = prior.detach().to(x.dtype)
    if not all_finite(prior):
        raise NonFiniteError(
            f"log_likelihood: prior_logp returned non-finite log-densities at z (finite, max |z| = "
            f"{float(z.abs().max()):.4g}): expected a finite log-density everywhere, as for a Gaussian prior."
        )
    return LikelihoodResult(logp=prior + delta_logp, prior_logp=prior, delta_logp=delta_logp, z=z, nfe=score.nfe)


# ---------------------------------------------------------------------------------------------- bits/dim
_LIKELIHOOD_KEYWORDS = frozenset(
    name for name, p in inspect.signature(log_likelihood).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
) - {"generator"}


def _check_integers(name: str, x: Any, n_bins: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer bin indices, shape (batch, *dims), got {type(x).__name__}.")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer bin indices in [0, {n_bins}) (e.g. uint8 pixels), got dtype {x.dtype}. "
            f"Data already in the model's continuous range goes to log_likelihood; floats holding whole numbers "
            f"convert with {name}.round().long()."
        )
    if x.ndim < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name} must have shape (batch, *dims) with batch >= 1, got shape {tuple(x.shape)}.")
    if x.dtype in (torch.uint16, torch.uint32, torch.uint64):  # few kernels (min, repeat) exist for these
        x = x.to(torch.int64)  # a uint64 above 2^63 wraps negative and fails the range check below
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= n_bins:
        raise ValueError(
            f"{name} must lie in [0, n_bins) = [0, {n_bins}), got values in [{lo}, {hi}]; "
            f"set n_bins to the number of levels of the data (256 for 8-bit)."
        )
    return x


def _check_range(data_range: Any, dims: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    if isinstance(data_range, (str, bytes)) or not hasattr(data_range, "__len__") or len(data_range) != 2:
        raise TypeError(
            f"data_range must be a pair (low, high): the model-space images of the bin edges 0 and n_bins, "
            f"got {data_range!r}."
        )
    out = []
    for name, value in zip(("low", "high"), data_range):
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
            raise TypeError(f"data_range {name} must be a real number or a tensor, got {type(value).__name__}.")
        v = torch.as_tensor(value, dtype=dtype, device=device)
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"data_range {name} must be finite, got {value!r}.")
        try:
            v = torch.broadcast_to(v, dims)
        except RuntimeError as err:
            raise ValueError(
                f"data_range {name} of shape {tuple(v.shape)} does not broadcast to the data's dims {dims}."
            ) from err
        out.append(v)
    low, high = out
    if bool((high == low).any()):
        raise ValueError(f"data_range needs low != high, got {data_range!r}.")
    return low, high


def bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    x_int: Tensor,
    *,
    n_bins: int = 256,
    data_range: tuple[Any, Any] = (-1.0, 1.0),
    n_dequant: int = 1,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    **likelihood_kwargs: Any,
) -> BitsPerDimResult:
    """Bits per dimension of integer data under the model, by uniform dequantization (Theis et al. 2016).

    For integer data k in {0, ..., n_bins - 1}^D the model's discrete probability is P(k) = int_[0,1)^D p_x(k + u) du,
    where p_x is the model density in integer units. With u ~ U[0,1)^D and K draws,

        log P(k) >= log (1/K) sum_j p_x(k + u_j)   in expectation      (importance weighting, Burda et al. 2016)
                 >= (1/K) sum_j log p_x(k + u_j)    for every draw       (Jensen; K = 1 is the dequantization bound)

    The model lives on y = low + (high - low) (k + u) / n_bins (data_range = (low, high) are the images of the
    bin edges 0 and n_bins; (-1, 1) maps the bin edges [0, 256) of 8-bit data to [-1, 1), as score_sde's centered
    data and its dequantization (k + u) / 256 do; not k / 255), so by the
    change of variables of this affine map, per draw,

        log p_x(k + u) = logp_model(y) + sum_i log|high_i - low_i| - D log n_bins,
        bpd = -log p_x(k + u) / (D log 2) = -logp_model(y) / (D log 2) + log2(n_bins) - mean_i log2|high_i - low_i|.

    logp_model(y) = log p_eps(y) from `log_likelihood`. The constant log2(n_bins / |high - low|) is the log of the
    scaling factor from [0, n_bins) to the model range, per dimension: log2(256 / 2) = 7 for [-1, 1). It is the
    'offset' of score_sde_pytorch's likelihood.py, written there as `7 - inverse_scaler(-1)`, which is 7 for
    centered data ([-1, 1], inverse_scaler(-1) = 0) and 8 = log2(256 / 1) for [0, 1] data (inverse_scaler(-1) = -1),
    right for those two ranges only. Without dequantization (u = 0, or the data taken at bin corners) the
    continuous density can grow without bound on the 256^D grid points, which is how negative bits/dim arise.
    With Hutchinson traces `bpd` is unbiased over the probes (it is linear in logp), but `bpd_iw` is not: the
    log-mean-exp over the K draws is convex, so probe noise lowers it in expectation and it can fall below the
    discrete model's bits/dim; use trace='exact' (or many probes) when the importance-weighted bound matters.

    Args:
        sde: the forward SDE, as for `log_likelihood`.
        score_fn: the score model score_fn(x, t), as for `log_likelihood`.
        x_int: (B, *dims) integer tensor (uint8, int64, ...) with values in [0, n_bins).
        n_bins: number of levels per dimension (256 for 8-bit data).
        data_range: (low, high), reals or tensors broadcastable to dims (per-channel maps).
        n_dequant: K, dequantization draws per image; all B K draws are integrated as one batch.
        dtype: floating dtype of the model's data (default: torch's default dtype).
        generator: for the dequantization noise and the Hutchinson probes.
        likelihood_kwargs: keyword arguments of `log_likelihood` (trace, probe, n_probes, method, rtol, atol,
            eps, steps, time_variable, prior_logp).
    Returns:
        BitsPerDimResult(bpd, bpd_iw, draws, nfe).
    """
    unknown = sorted(set(likelihood_kwargs) - _LIKELIHOOD_KEYWORDS)
    if unknown:
        raise TypeError(
            f"bits_per_dim got unexpected keyword argument(s) {unknown}; it passes on only {sorted(_LIKELIHOOD_KEYWORDS)} "
            "to log_likelihood."
        )
    n_bins = check_int("n_bins", n_bins, minimum=2)
    x_int = _check_integers("x_int", x_int, n_bins)
    K = check_int("n_dequant", n_dequant, minimum=1)
    dtype = check_float_dtype("dtype", dtype) or torch.get_default_dtype()
    if dtype in HALF_DTYPES:
        raise TypeError(f"dtype must be float32 or float64 for an exact likelihood, got {dtype}.")
    generator = check_generator(generator, x_int.device)
    dims = tuple(x_int.shape[1:])
    low, high = _check_range(data_range, dims, dtype, x_int.device)
    B, D = x_int.shape[0], x_int[0].numel()

    k = x_int.repeat_interleave(K, dim=0).to(dtype)
    u = torch.rand(k.shape, generator=generator, dtype=dtype, device=k.device)
    y = low + (high - low) * ((k + u) / n_bins)
    res = log_likelihood(sde, score_fn, y, generator=generator, **likelihood_kwargs)
    log_jacobian = torch.log(torch.abs(high - low)).sum() - D * math.log(n_bins)
    log_px = (res.logp + log_jacobian).reshape(B, K)
    draws = -log_px / (D * _LN2)
    bpd_iw = -(torch.logsumexp(log_px, dim=1) - math.log(K)) / (D * _LN2)
    return BitsPerDimResult(bpd=draws.mean(dim=1), bpd_iw=bpd_iw, draws=draws, nfe=res.nfe)


def _batch_data(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        f"each batch of loader must be a tensor or a (tensor, ...) tuple/list such as (images, labels), got {type(batch).__name__}."
    )


def dataset_bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    loader: Iterable[Any],
    *,
    progress: bool = True,
    device: torch.device | str | None = None,
    **bpd_kwargs: Any,
) -> DatasetBitsPerDim:
    """Mean bits/dim of a dataset and its standard error, walking `loader` with `bits_per_dim` on each batch.

    stderr = std(bpd_i) / sqrt(n) over the n images (the sample standard deviation, ddof = 1; nan for n = 1),
    for the per-image mean over dequantization draws (bpd) and for the importance-weighted bound (bpd_iw).

    Args:
        loader: a DataLoader or any iterable of batches: integer tensors (B, *dims) or (tensor, ...) tuples.
        progress: show a tqdm bar with the running mean.
        device: move each batch there first (None: leave it where it is).
        bpd_kwargs: keyword arguments of `bits_per_dim` (n_bins, data_range, n_dequant, dtype, generator) and of
            `log_likelihood`.
    """
    if isinstance(loader, Tensor) or not isinstance(loader, Iterable):
        raise TypeError(
            f"loader must be an iterable of batches (a DataLoader), got {type(loader).__name__}; "
            "for one tensor of images call bits_per_dim."
        )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(loader, desc="bits/dim", unit="batch")
    bpd, bpd_iw, nfe = [], [], 0
    for batch in bar if bar is not None else loader:
        x = _batch_data(batch)
        if device is not None:
            x = x.to(device)
        res = bits_per_dim(sde, score_fn, x, **bpd_kwargs)
        bpd.append(res.bpd.detach().to("cpu", torch.float64))
        bpd_iw.append(res.bpd_iw.detach().to("cpu", torch.float64))
        nfe += res.nfe
        if bar is not None:
            bar.set_postfix(bpd=f"{float(torch.cat(bpd).mean()):.4f}")
    if bar is not None:
        bar.close()
    if not bpd:
        raise ValueError("loader yielded no batches; expected at least one batch of integer images.")
    a, b = torch.cat(bpd), torch.cat(bpd_iw)
    n = a.shape[0]

    def stderr(v: Tensor) -> float:
        return float(v.std(correction=1) / math.sqrt(n)) if n > 1 else float("nan")

    return DatasetBitsPerDim(bpd=float(a.mean()), stderr=stderr(a), bpd_iw=float(b.mean()), stderr_iw=stderr(b), n=n, nfe=nfe)
