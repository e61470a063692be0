"""Fast samplers: high-order solvers of the probability-flow ODE and an adaptive reverse-SDE solver.

Every SDE of sdescore with a Gaussian kernel x_t = alpha(t) x0 + std(t) z (any affine drift) has the same
probability-flow ODE once written in the scaled state y = x / alpha and the noise level sigma = std / alpha
(Karras et al. 2022, eq. 4 with s = alpha; Lu et al. 2022a, eq. 3.3):

    dy / dsigma = eps_hat(x, t),        eps_hat = -std score(x, t) = (y - D(x, t)) / sigma,

where D(x, t) = E[x0 | x_t = x] is the denoiser (Tweedie) and eps_hat the noise prediction. With the half
log-SNR lambda = log(alpha / std) = -log sigma as the time variable, the variation-of-constants formula is
exact for the linear part (Lu et al. 2022a, eq. 3.4; 2022b, its data-prediction form):

    x_s = alpha_s / alpha_t x_t - alpha_s int_{lambda_t}^{lambda_s} e^{-lambda} eps_hat d lambda          (noise form)
    x_s = std_s / std_t x_t + std_s int_{lambda_t}^{lambda_s} e^{lambda} D d lambda                      (data form)

and the solvers differ only in how they approximate the integrand. Nothing here assumes VP: for the VE-SDE
alpha = 1 and the same formulas are the exponential integrator of dx/dsigma = (x - D) / sigma in
lambda = -log sigma (docs/theory/fast_samplers.md derives it). The SDE answers for itself through
`kernel`, `log_snr` and `t_from_log_snr`; no sampler looks at the class of the SDE.

One loop (`_integrate`) runs every fixed-grid method; each method is an object with one `step`. Every score
evaluation goes through `CheckedScore`, so `nfe` is counted, never computed, and a NaN names its step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from ._checks import HALF_DTYPES, check_bool, check_data, check_eps, check_generator, check_int, check_real
from ._score import CheckedScore, NonFiniteError, SampleResult, _randn_like, _round_result
from .flow import ADAPTIVE_METHODS, DEFAULT_METHOD
from .grids import TimeGrid, eps_too_small, time_grid
from .sde import SDE, ScoreFn, wide_view, work_dtype

__all__ = [
    "heun_sample",
    "dpm_solver_sample",
    "dpm_solver_pp_sample",
    "adaptive_sde_sample",
    "adaptive_ode_sample",
    "FixedStepSampler",
    "AdaptiveSampler",
    "FAST_SAMPLERS",
]


# ---------------------------------------------------------------------- bookkeeping shared by every method
class _Lin:
    """A linear combination sum_k c_k T_k of tensors, kept symbolic and evaluated once.

    The solvers' updates are short linear combinations of the state and a few model outputs with scalar
    weights. Written as expressions (e.g. `a * X - b * e0 - c * (e1 - e0)`) they read like the papers;
    `eval` merges repeated tensors and computes the sum with one fused multiply-add per distinct tensor,
    so the sampler's own work stays a small fraction of a network's.

    A half-precision combination (float16, bfloat16) is summed in float32 and rounded to its dtype once: its weights
    (sigma_i - sigma_{i+1}) std_i or std^2 / alpha reach 1e5 for the VE-SDE's sigma_max = 348, beyond float16's
    largest number (65504), although the sum, a state or a denoised state, fits.
    """

    __slots__ = ("terms",)

    def __init__(self, terms: list[tuple[float, Tensor]]):
        self.terms = terms

    @staticmethod
    def of(t: Tensor, c: float = 1.0) -> "_Lin":
        return _Lin([(c, t)])

    def __add__(self, other: "_Lin") -> "_Lin":
        return _Lin(self.terms + other.terms)

    def __sub__(self, other: "_Lin") -> "_Lin":
        return _Lin(self.terms + [(-c, t) for c, t in other.terms])

    def __mul__(self, k: float) -> "_Lin":
        return _Lin([(k * c, t) for c, t in self.terms])

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> "_Lin":
        return self * (1.0 / k)

    def eval(self) -> Tensor:
        merged: dict[int, list] = {}
        for c, t in self.terms:
            if id(t) in merged:
                merged[id(t)][0] += c
            else:
                merged[id(t)] = [c, t]
        (c0, t0), *rest = merged.values()
        out = t0.to(work_dtype(t0)) * c0  # float32 for a half-precision t0, which the half terms then add into
        for c, t in rest:
            out.add_(t, alpha=c)
        return out.to(t0.dtype)


@dataclass(frozen=True)
class _Node:
    """A time of the integration with its kernel: alpha, std, lam = log(alpha / std), sigma = std / alpha."""

    t: float
    alpha: float
    std: float
    lam: float
    tb: Tensor  # (B,) time in x's dtype, what the score receives

    @property
    def sigma(self) -> float:
        return self.std / self.alpha


class _Run:
    """The state every fixed-grid method reads: the SDE, the checked score, the grid's nodes, the generator."""

    def __init__(self, sde: SDE, score: CheckedScore, ts: Tensor, x: Tensor, generator: torch.Generator | None):
        self.sde = sde
        self._score = score
        self.generator = generator
        self._B, self._dtype, self._device = x.shape[0], x.dtype, x.device
        self._eps = float(ts[-1])
        self.nodes = self.nodes_at(ts)
        self.steps = len(self.nodes) - 1
        self.i = 0  # the step being taken, recorded with every evaluation for error messages
        self.step_of_eval: list[int] = []

    def nodes_at(self, t: Tensor) -> list[_Node]:
        """Nodes at float64 times t (n,): one vectorized kernel call, then plain floats for the step arithmetic.

        The kernel is a user's method: alpha and std must come one per time, finite and > 0 (lam = log(alpha / std)).
        """
        t = t.to(torch.float64)
        alpha, std = self.sde.kernel(t)
        n = t.shape[0]
        if not (isinstance(alpha, Tensor) and isinstance(std, Tensor)) or alpha.shape != (n,) or std.shape != (n,):
            raise ValueError(
                f"sde.kernel(t) must return (alpha, std), two tensors of shape ({n},) for t of shape ({n},), one per "
                f"time, got {_shape_of(alpha)} and {_shape_of(std)}; expand a constant, e.g. torch.ones_like(t)."
            )
        out = []
        for ti, a, s in zip(t.tolist(), alpha.tolist(), std.tolist()):
            if not (0.0 < a < math.inf and 0.0 < s < math.inf):
                if s == 0.0 and 0.0 < a < math.inf and ti <= self._eps:
                    raise eps_too_small(self.sde, self._eps)
                raise ValueError(
                    f"sde.kernel(t) must return finite alpha > 0 and std > 0 at every time of the grid, got alpha={a}, "
                    f"std={s} at t={ti}."
                )
            tb = torch.full((self._B,), ti, dtype=self._dtype, device=self._device)
            out.append(_Node(ti, a, s, math.log(a) - math.log(s), tb))
        return out

    def nodes_at_lam(self, lam: list[float]) -> list[_Node]:
        """Nodes at half log-SNRs lam, through the SDE's inverse of its log-SNR (clamped into [0, T])."""
        t = self.sde.t_from_log_snr(2.0 * torch.tensor(lam, dtype=torch.float64))
        if not isinstance(t, Tensor) or t.shape != (len(lam),) or not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"sde.t_from_log_snr(log_snr) must return finite times of shape ({len(lam)},) for log_snr of shape "
                f"({len(lam)},), got {_shape_of(t)}" + (f" holding {t.tolist()}." if isinstance(t, Tensor) else ".")
            )
        return self.nodes_at(t.clamp(0.0, self.sde.T))

    def score(self, x: Tensor, node: _Node) -> Tensor:
        self.step_of_eval.append(self.i)
        return self._score(x, node.tb, node.t)

    def eps(self, x: Tensor, node: _Node) -> _Lin:
        """Noise prediction eps_hat = -std score = E[z | x_t = x], as an expression (no tensor work)."""
        return _Lin.of(self.score(x, node), -node.std)

    def data(self, x: Tensor, node: _Node) -> _Lin:
        """Data prediction D = (x + std^2 score) / alpha = E[x0 | x_t = x] (Tweedie), as an expression."""
        s = self.score(x, node)
        return _Lin([(1.0 / node.alpha, x), (node.std**2 / node.alpha, s)])


def _shape_of(value: object) -> str:
    """A user's return value in an error message: a tensor's shape, else its type."""
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


class _Method:
    """One fixed-grid method: `prepare` precomputes what the grid fixes, `step` goes from node i to node i + 1."""

    def prepare(self, run: _Run) -> None:
        pass

    def step(self, run: _Run, x: Tensor, i: int) -> Tensor:
        raise NotImplementedError


DENOISING = "in the final denoising evaluation"  # the step_of phrase for Tweedie's last evaluation


def _check_common(sde: Any, x_T: Any, steps: Any, eps: Any, generator: Any, denoise: Any) -> tuple:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
    x = check_data("x_T", x_T)
    steps = check_int("steps", steps, minimum=1)
    eps = check_eps(eps, sde.T)
    generator = check_generator(generator, x.device)
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be a bool, got {type(denoise).__name__} {denoise!r}.")
    if denoise:  # Tweedie's step needs the kernel: without one, its NotImplementedError comes now, not after the solve
        sde.kernel(torch.full((1,), eps, dtype=torch.float64))
    return x, steps, eps, generator


def _integrate(
    method: _Method,
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    steps: int,
    grid: str | TimeGrid,
    eps: float,
    generator: torch.Generator | None,
    denoise: bool,
    where: str,
) -> SampleResult:
    """The one loop of every fixed-grid sampler: x_{i+1} = method.step(x_i) on the grid from T to eps.

    A half-precision x_T is integrated in float32 (`work_dtype`), with the score called at x and t in x_T's dtype,
    and the result rounded to that dtype once: a step's change is a few ulps of a bfloat16 state at hundreds of
    steps, and rounding the state every step (to half an ulp, an error the size of the change) biased the law
    (variance 1.25-2.2 times the exact flow's at 500 steps of DPM-Solver++(2M) in bfloat16).
    """
    x, steps, eps, generator = _check_common(sde, x_T, steps, eps, generator, denoise)
    ts = time_grid(sde, steps, grid, eps)
    dtype = x.dtype
    x = x.to(work_dtype(x))
    run = _Run(sde, CheckedScore(score_fn, dtype=dtype), ts, x, generator)
    method.prepare(run)
    for i in range(steps):
        run.i = i
        x = method.step(run, x, i)
    if denoise:
        run.i = steps
        x = run.data(x, run.nodes[-1]).eval()
    run._score.raise_if_nonfinite(x, where, lambda k, t: run.step_of_eval[k] if run.step_of_eval[k] < steps else DENOISING)
    return SampleResult(x=_round_result(x, dtype, "x_T", where), nfe=run._score.nfe)


# ---------------------------------------------------------------------- Heun (EDM)
class _Heun(_Method):
    """Karras et al. (2022), algorithm 2 (algorithm 1 when S_churn = 0), in y = x / alpha and sigma = std / alpha.

    Churn: sigma_hat = sigma_i (1 + gamma_i), y_hat = y_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z, with
    gamma_i = min(S_churn / n, sqrt(2) - 1) for S_tmin <= sigma_i <= S_tmax, else 0; sigma_hat is capped at
    sigma(T), where the SDE ends. Then Heun's step of dy/dsigma = eps_hat from sigma_hat to sigma_{i+1}:

        d = eps_hat(x_hat, t_hat),  y_e = y_hat + (sigma_{i+1} - sigma_hat) d,
        y_{i+1} = y_hat + (sigma_{i+1} - sigma_hat) (d + eps_hat(alpha_{i+1} y_e, t_{i+1})) / 2.
    """

    def __init__(self, S_churn: float, S_tmin: float, S_tmax: float, S_noise: float):
        self.S_churn, self.S_tmin, self.S_tmax, self.S_noise = S_churn, S_tmin, S_tmax, S_noise
        self.hat: list[_Node | None] = []
        self.z: Tensor | None = None

    def prepare(self, run: _Run) -> None:
        # gamma_i depends on the grid only, so the churned nodes are placed once.
        self.z = None
        gamma = min(self.S_churn / run.steps, math.sqrt(2.0) - 1.0)
        sigma_T = run.nodes[0].sigma
        self.hat = [None] * run.steps
        where, lam = [], []
        for i, node in enumerate(run.nodes[:-1]):
            if gamma > 0 and self.S_tmin <= node.sigma <= self.S_tmax:
                sigma_hat = min(node.sigma * (1.0 + gamma), sigma_T)
                if sigma_hat > node.sigma:
                    where.append(i)
                    lam.append(-math.log(sigma_hat))
        if where:
            for i, node in zip(where, run.nodes_at_lam(lam)):
                self.hat[i] = node

    def step(self, run: _Run, x: Tensor, i: int) -> Tensor:
        a, b = run.nodes[i], run.nodes[i + 1]
        hat = self.hat[i]
        if hat is not None:
            # x_hat = alpha_hat (y_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z)
            noise = math.sqrt(max(hat.sigma**2 - a.sigma**2, 0.0)) * self.S_noise
            if self.z is None:  # one buffer for the draws of the run: a fresh one each step costs more at large states
                self.z = torch.empty(x.shape, dtype=x.dtype, device=x.device)
            z = _randn_like(x, run.generator, out=self.z)
            x = (hat.alpha / a.alpha * _Lin.of(x) + hat.alpha * noise * _Lin.of(z)).eval()
            a = hat
        y = _Lin.of(x) / a.alpha
        dsigma = b.sigma - a.sigma
        d = run.eps(x, a)
        x_e = (b.alpha * (y + dsigma * d)).eval()
        d2 = run.eps(x_e, b)
        return (b.alpha * (y + 0.5 * dsigma * (d + d2))).eval()


# ---------------------------------------------------------------------- DPM-Solver (noise prediction)
class _DPMSolverSinglestep(_Method):
    """DPM-Solver-k, k = 1, 2, 3 (Lu et al. 2022a, eq. 3.7 and algorithms 1–2, r1 = 1/2; r1 = 1/3, r2 = 2/3).

    With h = lambda_{i+1} - lambda_i and s_j the times at lambda_i + r_j h:
      k = 1 (DDIM):  x_{i+1} = a_{i+1}/a_i x_i - std_{i+1} (e^h - 1) eps_i
      k = 2:  u = a_s/a_i x_i - std_s (e^{r1 h} - 1) eps_i,
              x_{i+1} = a_{i+1}/a_i x_i - std_{i+1} (e^h - 1) eps_i - std_{i+1} / (2 r1) (e^h - 1) (eps(u, s) - eps_i)
      k = 3:  see `step`; each step costs k score evaluations.
    """

    R = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}

    def __init__(self, order: int):
        self.order = order
        self.mid: list[list[_Node]] = []

    def prepare(self, run: _Run) -> None:
        r = self.R[self.order]
        if not r:
            return
        lam = [n.lam + rj * (m.lam - n.lam) for n, m in zip(run.nodes[:-1], run.nodes[1:]) for rj in r]
        nodes = run.nodes_at_lam(lam)
        k = len(r)
        self.mid = [nodes[j * k : (j + 1) * k] for j in range(run.steps)]

    def step(self, run: _Run, x: Tensor, i: int) -> Tensor:
        a, b = run.nodes[i], run.nodes[i + 1]
        h = b.lam - a.lam
        X = _Lin.of(x)
        e0 = run.eps(x, a)
        x_next = b.alpha / a.alpha * X - b.std * math.expm1(h) * e0
        if self.order == 1:
            return x_next.eval()
        if self.order == 2:
            (s,) = self.mid[i]
            r1 = self.R[2][0]
            u = s.alpha / a.alpha * X - s.std * math.expm1(r1 * h) * e0
            D1 = run.eps(u.eval(), s) - e0
            return (x_next - b.std / (2 * r1) * math.expm1(h) * D1).eval()
        s1, s2 = self.mid[i]
        r1, r2 = self.R[3]
        u1 = s1.alpha / a.alpha * X - s1.std * math.expm1(r1 * h) * e0
        D1 = run.eps(u1.eval(), s1) - e0
        phi2_r2 = math.expm1(r2 * h) / (r2 * h) - 1.0
        u2 = s2.alpha / a.alpha * X - s2.std * math.expm1(r2 * h) * e0 - s2.std * r2 / r1 * phi2_r2 * D1
        D2 = run.eps(u2.eval(), s2) - e0
        return (x_next - b.std / r2 * (math.expm1(h) / h - 1.0) * D2).eval()


class _Multistep(_Method):
    """Multistep exponential integrators: the integrand is extrapolated from the last k evaluations.

    Noise form, DPM-Solver-kM (Lu et al. 2022a, appendix; 2022b, algorithm 2's noise-prediction twin):
        x_{i+1} = a_{i+1}/a_i x_i - std_{i+1} [phi_1 m_0 + phi_2 D_1 + phi_3 D_2],
        phi_1 = e^h - 1, phi_2 = phi_1 / h - 1, phi_3 = phi_2 / h - 1/2  (order 2 uses phi_1 D_1 / 2);
    data form, DPM-Solver++(kM) (Lu et al. 2022b, algorithm 2 and appendix B):
        x_{i+1} = std_{i+1}/std_i x_i - a_{i+1} [phi_1 m_0 - phi_2 D_1 + phi_3 D_2],
        phi_1 = e^{-h} - 1, phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2  (order 2 uses phi_1 D_1 / 2);
    with m_j the model outputs (eps or D) at the last nodes, r_j = h_j / h the ratios of the previous steps,
    D_1 and D_2 their divided differences. One evaluation per step; the first steps use lower orders, and
    with lower_order_final the last steps too when there are fewer than 10 (as in Lu et al.'s code).
    """

    def __init__(self, order: int, data_prediction: bool, lower_order_final: bool):
        self.order = order
        self.data_prediction = data_prediction
        self.lower_order_final = lower_order_final
        self.history: list[tuple[_Node, Tensor]] = []

    def step(self, run: _Run, x: Tensor, i: int) -> Tensor:
        a, b = run.nodes[i], run.nodes[i + 1]
        m0 = run.data(x, a) if self.data_prediction else run.eps(x, a)
        self.history = (self.history + [(a, m0)])[-self.order :]
        order = min(self.order, len(self.history))
        if self.lower_order_final and run.steps < 10:
            order = min(order, run.steps - i)
        h = b.lam - a.lam
        if self.data_prediction:
            phi1, sign = math.expm1(-h), -1.0
            out = b.std / a.std * _Lin.of(x) - b.alpha * phi1 * m0
            scale = b.alpha
        else:
            phi1, sign = math.expm1(h), 1.0
            out = b.alpha / a.alpha * _Lin.of(x) - b.std * phi1 * m0
            scale = b.std
        if order == 1:
            return out.eval()
        n1, m1 = self.history[-2]
        r0 = (a.lam - n1.lam) / h
        D1_0 = (m0 - m1) / r0
        if order == 2:
            return (out - 0.5 * scale * phi1 * D1_0).eval()
        n2, m2 = self.history[-3]
        r1 = (n1.lam - n2.lam) / h
        D1_1 = (m1 - m2) / r1
        # D1 ~ h m' and D2 ~ h^2 m'' (divided differences). Lu et al.'s code uses half this D2 with the same
        # phi_3, which leaves an O(h^3) local error: a quadratic integrand is then not integrated exactly.
        D2 = 2.0 / (r0 + r1) * (D1_0 - D1_1)
        D1 = D1_0 + 0.5 * r0 * D2
        phi2 = phi1 / h - sign
        phi3 = phi2 / h - 0.5
        return (out - sign * scale * phi2 * D1 - scale * phi3 * D2).eval()


# ---------------------------------------------------------------------- public samplers on a fixed grid
def _check_S(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 (inf allowed), got {value}.")
    return value


def _check_order(order: Any, allowed: tuple[int, ...]) -> int:
    order = check_int("order", order)
    if order not in allowed:
        raise ValueError(f"order must be one of {allowed}, got {order}.")
    return order


def heun_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    steps: int,
    grid: str | TimeGrid = "karras",
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    denoise: bool = False,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
) -> SampleResult:
    """EDM's Heun sampler on the probability-flow ODE of any SDE with a Gaussian kernel (2 evaluations per step).

    Karras et al. (2022), algorithms 1 (S_churn = 0, deterministic, order 2) and 2 (S_churn > 0: at each
    sigma_i in [S_tmin, S_tmax] raise the noise to sigma_i (1 + gamma) with fresh noise, then take the Heun
    step). sigma = std / alpha is the noise level of y = x / alpha; dy/dsigma = -std score (eq. 4 with s = alpha).

    Args:
        sde: any SDE with `kernel`, `log_snr` and `t_from_log_snr`.
        score_fn: score(x, t), x (B, *dims), t (B,).
        x_T: (B, *dims) the starting state at t = T.
        steps: n, the number of intervals of the grid (nfe = 2 n, + 1 with denoise).
        grid: a name in GRIDS or a TimeGrid; Karras (rho = 7) by default.
        eps: the final time.
        generator: the source of the churn noise.
        denoise: return Tweedie's E[x0 | x_eps] (one more evaluation: EDM's last Euler step to sigma = 0).
        S_churn: EDM's total churn: each step in [S_tmin, S_tmax] raises sigma by the factor 1 + gamma,
            gamma = min(S_churn / n, sqrt(2) - 1).
        S_tmin: the lowest noise level sigma that is churned.
        S_tmax: the highest noise level sigma that is churned (S_tmin <= S_tmax).
        S_noise: the scale of the added noise (slightly above 1 offsets the denoiser's loss of detail).
    Returns:
        SampleResult(x at t = eps, or E[x0 | x_eps] with denoise; nfe).
    """
    S_tmin, S_tmax = _check_S("S_tmin", S_tmin), _check_S("S_tmax", S_tmax)
    if S_tmin > S_tmax:
        raise ValueError(
            f"S_tmin must be <= S_tmax (the churned noise levels are S_tmin <= sigma <= S_tmax), got S_tmin={S_tmin}, "
            f"S_tmax={S_tmax}: no sigma would be churned; swap them, or pass S_churn=0 to turn the churn off."
        )
    method = _Heun(_check_S("S_churn", S_churn), S_tmin, S_tmax, check_real("S_noise", S_noise, nonnegative=True))
    return _integrate(method, sde, score_fn, x_T, steps, grid, eps, generator, denoise, "heun_sample")


def dpm_solver_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    steps: int,
    order: int = 2,
    multistep: bool = False,
    grid: str | TimeGrid = "log_snr",
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    denoise: bool = False,
    lower_order_final: bool = True,
) -> SampleResult:
    """DPM-Solver-1/2/3 (single-step) and DPM-Solver-2M/3M (multistep) in log-SNR time, noise prediction.

    Lu et al. (2022a), eq. 3.7 and algorithms 1–2: the exponential integrator of the probability-flow ODE
    x_s = alpha_s / alpha_t x_t - alpha_s int e^{-lambda} eps_hat d lambda, lambda = log(alpha / std), with
    eps_hat = -std score expanded to order k - 1 in lambda. Global error O(h^k) for the single-step solvers
    and 2M; 3M, like Lu et al.'s algorithm, starts with a first-order and a second-order step (it has no past
    evaluations yet), and that first step's O(h^2) local error bounds its global error by O(h^2) as h -> 0
    (its error falls faster over the step counts of practice: docs/theory/fast_samplers.md). Written through
    `sde.kernel`, so it applies to VP, sub-VP and VE (alpha = 1) alike.

    Args:
        steps: intervals of the grid; single-step order k costs k evaluations per step, multistep 1.
        order: 1 (DDIM), 2 or 3.
        multistep: reuse past evaluations (DPM-Solver-2M/3M) instead of intermediate ones.
        grid: a name in GRIDS or a TimeGrid; uniform in log-SNR by default (Lu et al.'s choice for low resolution).
        generator: unused (the solver is deterministic); accepted so that every sampler shares the signature.
        denoise: return E[x0 | x_eps] (one more evaluation).
        lower_order_final: multistep only: lower the order of the last steps when steps < 10.
    Other arguments as in `heun_sample`.
    """
    order = _check_order(order, (1, 2, 3))
    for name, flag in (("multistep", multistep), ("lower_order_final", lower_order_final)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}.")
    method: _Method = (
        _Multistep(order, data_prediction=False, lower_order_final=lower_order_final)
        if multistep
        else _DPMSolverSinglestep(order)
    )
    return _integrate(method, sde, score_fn, x_T, steps, grid, eps, generator, denoise, "dpm_solver_sample")


def dpm_solver_pp_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    steps: int,
    order: int = 2,
    grid: str | TimeGrid = "log_snr",
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    denoise: bool = False,
    lower_order_final: bool = True,
) -> SampleResult:
    """DPM-Solver++(kM), k = 1, 2, 3: the multistep exponential integrator with data prediction D = E[x0 | x_t].

    Lu et al. (2022b), algorithm 2, on the data-prediction form of the exact solution,
    x_s = std_s / std_t x_t + std_s int e^{lambda} D d lambda, with D extrapolated linearly (2M) or quadratically
    (3M) from the last evaluations; one evaluation per step.
    Arguments as in `dpm_solver_sample` (always multistep).
    """
    order = _check_order(order, (1, 2, 3))
    if not isinstance(lower_order_final, bool):
        raise TypeError(f"lower_order_final must be a bool, got {type(lower_order_final).__name__}.")
    method = _Multistep(order, data_prediction=True, lower_order_final=lower_order_final)
    return _integrate(method, sde, score_fn, x_T, steps, grid, eps, generator, denoise, "dpm_solver_pp_sample")


# ---------------------------------------------------------------------- adaptive step sizes
class _BrownianStack:
    """Per-sample Brownian increments that stay on one path when steps are rejected (Rackauckas & Nie 2017, RSwM1).

    Increments are kept normalized, W = sqrt(h) Z with Z standard normal. An interval (h, Z) cut at h' = rho h
    (rho < 1) is split by the Brownian bridge, W' ~ N(rho W, h'(1 - rho) I); normalized, the two parts are a
    rotation of (Z, xi) with xi a fresh standard normal:

        Z' = sqrt(rho) Z + sqrt(1 - rho) xi   on the first h',     Z'' = sqrt(1 - rho) Z - sqrt(rho) xi   on the rest,

    independent standard normals with sqrt(h') Z' + sqrt(h - h') Z'' = sqrt(h) Z. The rest (h - h', Z'') is pushed
    on the sample's stack, to be used before any fresh noise. A rejected step is cut this way, and so is a stacked
    interval longer than the next step. The path is then a true Brownian path whatever the accept/reject
    decisions, so the law of the solution does not depend on the tolerance through the rejections.

    The interval lengths live on the host with the step-size controller (float64 numpy), the increments on the
    state's device in one ((depth + 1) B, *dims) tensor: rows [0, B) are the current increments (`current`, the
    next proposal's Z), row (l + 1) B + i is level l of sample i's stack. So one iteration's bridge, over the
    rejected and the popping rows together, is two gathers, one rotation and one scatter (`advance`).
    """

    def __init__(self, like: Tensor, generator: torch.Generator | None):
        self.B = like.shape[0]
        self.h = np.zeros((self.B, 2))  # the stacks' interval lengths: two levels to start, doubled when full
        self.depth = np.zeros(self.B, dtype=np.int64)
        self.Z = like.new_zeros(((1 + self.h.shape[1]) * self.B, *like.shape[1:]))  # current rows, then the levels
        self.generator = generator
        self.draw()

    @property
    def current(self) -> Tensor:
        """The increments Z of the next proposal, (B, *dims)."""
        return self.Z[: self.B]

    def draw(self) -> None:
        """Fresh increments for every sample (`current` drawn anew)."""
        _randn_like(self.current, self.generator, out=self.current)

    def advance(self, rejected: np.ndarray, popped: np.ndarray, h: np.ndarray, h_new: np.ndarray,
                coefficients: Callable[[np.ndarray], Tensor]) -> None:
        """Make `current` the increments over the next steps [t - h_new, t]: fresh draws, except

        - the rejected samples, whose interval (h, current) is cut at h_new;
        - the samples `popped` (accepted, with a non-empty stack), which take their top interval, cut at h_new when
          longer (h_new is lowered to its length when not).

        coefficients(a) turns a host (2, n) array into per-row coefficient tensors on the device, (2, n, 1, ..., 1).
        """
        B = self.B
        level = self.depth[popped] - 1
        self.depth[popped] = level
        h_pop = self.h[popped, level]
        h_new[popped] = np.minimum(h_new[popped], h_pop)  # a whole stacked interval when not longer
        idx = np.concatenate([rejected, popped])
        if not idx.size:
            self.draw()
            return
        base = np.concatenate([h[rejected], h_pop])
        rho = h_new[idx] / base  # < 1 where cut (every rejected sample), exactly 1 for a whole stacked interval
        top = self.depth[idx]  # the level the rest of a cut interval goes to
        if int(top.max()) + 1 > self.h.shape[1]:  # double the depth
            self.h = np.concatenate([self.h, np.zeros_like(self.h)], 1)
            self.Z = torch.cat([self.Z, torch.zeros_like(self.Z[B:])])
        # rows of Z: [the base increments, twice;  the samples' current rows, twice;  where Z' and the rest go]
        # (a whole stacked interval has no rest: its row, not used, goes to the level it was popped from, now free)
        source = np.concatenate([rejected, (level + 1) * B + popped])
        at = _on(np.concatenate([source, source, idx, idx, idx, (top + 1) * B + idx]), self.Z)
        k = idx.size
        base_Z = self.Z.index_select(0, at[: 2 * k])
        self.draw()
        xi = self.Z.index_select(0, at[2 * k: 4 * k])
        s, c = np.sqrt(rho), np.sqrt(1.0 - rho)
        a, b = coefficients(np.stack([np.concatenate([s, c]), np.concatenate([c, -s])])).unbind(0)
        # [Z'; Z''] = [sqrt(rho) Z_b + sqrt(1 - rho) xi;  sqrt(1 - rho) Z_b - sqrt(rho) xi]
        rotated = torch.mul(base_Z, a).to(self.Z.dtype).addcmul_(xi, b)  # a half-precision Z: float32 rows
        self.Z.index_copy_(0, at[4 * k:], rotated)
        cut = rho < 1.0
        self.h[idx[cut], top[cut]] = base[cut] - h_new[idx[cut]]
        self.depth[idx[cut]] += 1


def _other(pair: list[Tensor], current: Tensor) -> Tensor:
    """The buffer of `pair` that is not `current` (either one when `current` is neither)."""
    return pair[1] if current is pair[0] else pair[0]


def _on(a: np.ndarray, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A host array as a tensor on like's device (zero-copy on the CPU), cast to dtype if given."""
    t = torch.from_numpy(a)
    if t.device == like.device and (dtype is None or dtype == t.dtype):
        return t
    return t.to(device=like.device, dtype=dtype)


def _tweedie(sde: SDE, score: CheckedScore, x: Tensor, eps: float) -> Tensor:
    """E[x0 | x_eps = x] = (x + std^2 score(x, eps)) / alpha (Tweedie), the kernel in float64: one evaluation.

    A half-precision x takes the sum in float32, rounded to its dtype once: std(eps)^2 exceeds float16's range
    (65504) for std(eps) above 256 (the VE-SDE's sigma_max = 348 with eps near T), where the result fits.
    """
    t = torch.full((x.shape[0],), eps, dtype=torch.float64, device=x.device)
    alpha, std = sde.kernel(t)
    return ((x + wide_view(std * std, x) * score(x, t.to(x.dtype))) / wide_view(alpha, x)).to(x.dtype)


def adaptive_sde_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    rtol: float = 0.05,
    atol: float = 0.0078,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    denoise: bool = False,
    h_init: float = 0.01,
    safety: float = 0.9,
    exponent: float = 0.9,
    redraw_rejected: bool = False,
    max_growth: float = 10.0,
    max_evals: int = 100_000,
) -> SampleResult:
    """Adaptive-step reverse-SDE solver of Jolicoeur-Martineau et al. (2021), 'Gotta go fast', algorithm 1.

    Reverse drift b(x, t) = f(x, t) - g(t)^2 score(x, t). Per sample, with its own t, step h and Brownian
    increment W over [t - h, t]:
        x'  = x - h b(x, t) + g(t) W                                       (Euler–Maruyama)
        x~  = x - h b(x', t - h) + g(t - h) W,   x'' = (x' + x~) / 2        (improved Euler)
        delta = max(atol, rtol max(|x'|, |x'_prev|)),    E = ||(x' - x'') / delta||_2 / sqrt(D)
    accept if E <= 1 (keeping the higher-order x'': extrapolation); the next step is
    h <- min(t - eps, h min(safety E^{-exponent}, max_growth)). Two score evaluations per iteration on the whole batch
    (samples already at eps are evaluated with h = 0 and W = 0, which leaves them unchanged).

    The published algorithm draws a fresh W after a rejection (redraw_rejected=True). That selects the
    increments by their size, and since delta grows with |x'| the accepted moves lean outwards: the law is
    biased, more so as the tolerance tightens (docs/theory/fast_samplers.md shows the measurement). By default
    the retry takes W from the Brownian bridge of the rejected increment (`_BrownianStack`), which keeps one
    Brownian path and removes the bias.

    The sampler's own work per iteration is twelve whole-batch tensor operations and one Gaussian draw,
    one host synchronisation, and indexed updates of the rows that are rejected or that take or leave a stacked
    interval (bench/samplers.py measures it). A linear drift f = a(t) x (`SDE.drift_is_linear`) is folded into
    the per-sample coefficients, (1 - h a) x, instead of being called.

    Args:
        rtol: the relative part of the mixed tolerance atol + rtol |x|.
        atol: the absolute part, in the units of the data (0.0078 is 2/256 for images in [-1, 1]).
        h_init: the first step size; safety, exponent: the step-size controller.
        max_growth: the largest factor by which one iteration may lengthen a sample's step (Hairer et al.'s
            fac_max), a departure from the paper, whose controller has none: an error estimate that comes out near 0
            by chance (E ~ 1e-8) lengthened the step a millionfold, to nearly all of [eps, t]; in float64 that trial
            is rejected, in float16 its state overflowed the score (NonFiniteError in half of the runs of a
            VE-SDE). 10 leaves the solver's steps where E is moderate as they were.
        redraw_rejected: reproduce the published noise redraw (biased) instead of the Brownian bridge.
        max_evals: raise instead of running past this many score evaluations.
    Other arguments as in `heun_sample`.

    Gradients flow through the accepted steps with the step sizes held fixed: the controller decides on the host
    and its decisions are not differentiated. A half-precision state takes its coefficients in float32 (h g^2
    exceeds float16's range for large sigma_max).
    """
    x, _, eps, generator = _check_common(sde, x_T, 1, eps, generator, denoise)
    rtol = check_real("rtol", rtol, positive=True)
    atol = check_real("atol", atol, positive=True)
    h_init = check_real("h_init", h_init, positive=True)
    safety = check_real("safety", safety, positive=True)
    exponent = check_real("exponent", exponent, positive=True)
    max_growth = check_real("max_growth", max_growth, positive=True)
    if not max_growth > 1.0:
        raise ValueError(f"max_growth must be > 1 (the largest factor by which a step may grow), got {max_growth}.")
    if not isinstance(redraw_rejected, bool):
        raise TypeError(f"redraw_rejected must be a bool, got {type(redraw_rejected).__name__}.")
    max_evals = check_int("max_evals", max_evals, minimum=2)
    score = CheckedScore(score_fn)
    B, D = x.shape[0], x[0].numel()
    ones = (1,) * (x.ndim - 1)

    # The coefficient rows are in float64 for a float64 state, else in float32: h g(t)^2 exceeds float16's range
    # (65504) for the VE-SDE's sigma_max in the hundreds. A half-precision state takes them through operations
    # computed in float32 and stored in its dtype (in place, or cast back by `own`).
    host_dtype = np.float64 if x.dtype == torch.float64 else np.float32

    def rows(buf: np.ndarray) -> Tensor:  # host (k, n) -> a copy (k, n, 1, ..., 1) on x's device, in host_dtype
        return _on(buf.astype(host_dtype).reshape(*buf.shape, *ones), x)  # a copy: autograd may keep the rows

    def own(y: Tensor) -> Tensor:  # in x's dtype: a half-precision product with float32 rows, or a user's f in float64
        return y if y.dtype == x.dtype else y.to(x.dtype)

    # The per-sample step-size control runs on the host in float64 numpy, the state, the noise and the score on
    # x's device. Per iteration: one host -> device copy of the coefficients (and one of the bridge's, for the
    # rows that cut or take an interval), one device -> host copy of the error (the only synchronisation), and
    # indexed updates of the rows that are rejected or that take or leave a stacked interval. Every other tensor
    # operation is a whole-batch one: three for each proposal, six for the error and the average
    # (docs/theory/fast_samplers.md, "What it costs besides the score").
    # The increment over [t - h, t] is W = sqrt(h) Z with Z standard normal; sqrt(h) goes into the coefficients,
    # so a fresh increment is the Gaussian draw itself.
    # A linear drift f = a(t) x (SDE.drift_is_linear) folds into the coefficients: x - h f(x, t) = (1 - h a) x.
    linear = sde.drift_is_linear
    stack = _BrownianStack(x, generator)
    t = np.full(B, float(sde.T))
    h = np.full(B, min(h_init, sde.T - eps))
    # E = ||(x' - x~) / max(|x'|, |x'_prev|, atol / rtol)||_2 / (2 rtol sqrt(D)), since x' - x'' = (x' - x~) / 2;
    # the state keeps max(|x'_prev|, atol / rtol)
    floor, scale = atol / rtol, 1.0 / (2.0 * rtol * math.sqrt(D))
    norm_dtype = torch.float32 if x.dtype in HALF_DTYPES else None  # a half-precision sum of squares overflows
    abs_prev = x.detach().abs().clamp_min_(floor)
    coef = np.empty((8, B))
    # Whole-batch work buffers, reused: a fresh CPU tensor of a few hundred KiB is often newly mapped memory, whose
    # first writes cost more than the operation that fills it (torch.maximum: 210 us in the solver against 31 us
    # into a buffer at d = 64, docs/benchmarks.md). Two of each for what lives across an iteration (x' becomes the
    # state, |x'| the next |x'_prev|; `_other` picks the free one), one for v and the error's denominator; the
    # increments live in the stack's tensor. Where autograd records the proposals (a score or x_T that requires
    # grad) they are formed out of place instead.
    states, abses = ([torch.empty_like(x) for _ in range(2)] for _ in range(2))
    v_buf, den = torch.empty_like(x), torch.empty_like(x)
    while True:
        if score.nfe + 2 > max_evals:
            raise RuntimeError(
                f"adaptive_sde_sample: {score.nfe} score evaluations without reaching eps={eps} (largest t = "
                f"{t.max():.4g}); loosen rtol/atol or raise max_evals."
            )
        # per-sample coefficients, one copy, in pairs for (t, t - h):
        # 0, 1: the drift's (see below);  2, 3: h g^2;  4, 5: g sqrt(h);  6, 7: t, t - h
        times = coef[6:8]
        times[0] = t
        np.subtract(t, h, out=times[1])
        g = sde.g(torch.from_numpy(times.reshape(2 * B))).numpy().reshape(2, B)
        np.multiply(h * g, g, out=coef[2:4])
        np.multiply(np.sqrt(h), g, out=coef[4:6])
        if linear:
            # x - h f(x, t) = (1 - h a(t)) x;  x - h f(x', t - h) - x' = x + (-h a(t - h) - 1) x'
            np.multiply(sde.linear_drift(torch.from_numpy(times.reshape(2 * B))).numpy().reshape(2, B), -h, out=coef[0:2])
            coef[0] += 1.0
            coef[1] -= 1.0
        else:
            coef[0:2] = h
            t64 = torch.from_numpy(times.reshape(2 * B).copy()).to(x.device)
        Z = stack.current
        c0, c3, c1, c4, c2, c5, c6, c7 = rows(coef).unbind(0)
        # what an error message reports of each call's times, (lo, hi): kept until the solve ends, as the (B,) times
        # (views of the iteration's whole coefficient rows) would be
        lo, hi = times.min(1), times.max(1)
        s1 = score(x, own(c6.reshape(B)), (lo[0], hi[0]))
        track = x.requires_grad or s1.requires_grad
        out, v_out = (None, None) if track else (_other(states, x), v_buf)
        x1 = own(torch.mul(x, c0, out=out) if linear else torch.addcmul(x, c0, sde.f(x, t64[:B]), value=-1.0, out=out))
        x1 = x1.addcmul_(c1, s1).addcmul_(c2, Z)  # x' = x - h b(x, t) + g(t) W
        s2 = score(x1, own(c7.reshape(B)), (lo[1], hi[1]))
        # v = x~ - x' with x~ = x - h f(x', t - h) + h g(t - h)^2 s2 + g(t - h) W
        if linear:
            v = own(torch.addcmul(x, c3, x1, out=v_out))
        else:
            v = own(torch.addcmul(x, c3, sde.f(x1, t64[B:]), value=-1.0, out=v_out)).sub_(x1)
        v = v.addcmul_(c4, s2).addcmul_(c5, Z)
        a1 = torch.abs(x1.detach(), out=_other(abses, abs_prev))
        torch.maximum(a1, abs_prev, out=den)
        a1.clamp_min_(floor)
        # accepted: x'' = x' + v / 2 (and x' becomes x'_prev); rejected samples keep their state below.
        # Out of place where autograd records (the same test as for the buffers): it may need x1, the score's input.
        x_new = torch.add(x1, v, alpha=0.5) if track else x1.add_(v, alpha=0.5)
        E = torch.linalg.vector_norm(v.detach().div_(den).flatten(1), dim=1, dtype=norm_dtype)
        # the error to the host, the one synchronisation of the iteration; the controller's factor E^-exponent there
        E = E.cpu().numpy().astype(np.float64) * scale
        if not np.isfinite(E).all():
            score.raise_if_nonfinite(x, "adaptive_sde_sample", lambda k, _t: k // 2)
            raise NonFiniteError(
                f"adaptive_sde_sample: the error estimate is non-finite at iteration {score.nfe // 2} (score "
                "evaluations were finite, the proposed step was not): expected finite proposals; lower h_init or rtol."
            )
        accept = E <= 1.0
        rejected = np.flatnonzero(~accept)
        if rejected.size:  # copy their rows back (cheaper than a whole-batch where while rejections are few)
            rows_back = _on(rejected, x)
            x_new.index_copy_(0, rows_back, x.index_select(0, rows_back))
            a1.index_copy_(0, rows_back, abs_prev.index_select(0, rows_back))
        x, abs_prev = x_new, a1
        t = np.where(accept, times[1], t)
        t[t - eps < 1e-12] = eps  # land exactly on eps
        active = t > eps
        # rejected: retry on [t - h', t] with h' < h; accepted: the next step (0 once at eps, which freezes the sample)
        h_new = np.minimum(h * np.minimum(safety * np.maximum(E, 1e-10) ** -exponent, max_growth),
                           np.where(accept, t - eps, 0.99 * h))
        # The next increments: fresh draws, except the rows that cut an interval (the rejected ones, whose interval
        # is the one just tried) or take a stacked one (cut too when it is longer than h_new): those take the
        # bridge's rotation (`_BrownianStack`). The published algorithm draws them all afresh.
        if redraw_rejected:
            stack.draw()
        else:
            stack.advance(rejected, np.flatnonzero(accept & (stack.depth > 0) & active), h, h_new, rows)
        h = h_new
        if not active.any():
            break
    solved = score.nfe
    if denoise:
        x = _tweedie(sde, score, x, eps)
    score.raise_if_nonfinite(x, "adaptive_sde_sample", lambda k, _t: DENOISING if k == solved else k // 2)
    return SampleResult(x=x, nfe=score.nfe)


def adaptive_ode_sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = DEFAULT_METHOD,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    denoise: bool = False,
) -> SampleResult:
    """The probability-flow ODE integrated by torchdiffeq.odeint with the adaptive `method`.

    `sde.probability_flow(score_fn).sample` with this module's signature; denoise adds Tweedie's E[x0 | x_eps].
    The default 'tsit5' is Tsitouras' 5(4) pair run by torchdiffeq with sdescore's cheaper step (`sdescore._rk`:
    same step control, 5 to 9 times less own work per evaluation than dopri5's, docs/benchmarks.md); any torchdiffeq
    adaptive method ('dopri5', ...) may be named instead. `generator` is unused (deterministic) and accepted for
    the shared signature.
    """
    x, _, eps, generator = _check_common(sde, x_T, 1, eps, generator, denoise)
    if method not in ADAPTIVE_METHODS:
        raise ValueError(
            f"adaptive_ode_sample takes an adaptive torchdiffeq method {ADAPTIVE_METHODS}, got {method!r}; for fixed "
            "steps use sde.probability_flow(score_fn).sample(x_T, method=..., steps=n)."
        )
    out = sde.probability_flow(score_fn).sample(x, method=method, rtol=rtol, atol=atol, eps=eps)
    if not denoise:
        return out
    score = CheckedScore(score_fn)
    xe = _tweedie(sde, score, out.x, eps)
    score.raise_if_nonfinite(xe, "adaptive_ode_sample", lambda k, _t: DENOISING)
    return SampleResult(x=xe, nfe=out.nfe + 1)


# ---------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class FixedStepSampler:
    """A fixed-grid sampler with its options: `sampler(sde, score_fn, x_T, steps=..., **more)`.

    evals_per_step: score evaluations per step (nfe = steps * evals_per_step, + 1 with denoise);
    stochastic: whether it draws noise (compare it in law, not path by path).
    """

    fn: Callable[..., SampleResult]
    options: Mapping[str, Any] = field(default_factory=dict)
    evals_per_step: int = 1
    stochastic: bool = False

    def __call__(self, sde: SDE, score_fn: ScoreFn, x_T: Tensor, **kwargs: Any) -> SampleResult:
        return self.fn(sde, score_fn, x_T, **{**self.options, **kwargs})

    def steps_for(self, nfe: int, *, denoise: bool = False) -> int:
        """The most steps whose evaluations fit in a budget of nfe."""
        nfe = check_int("nfe", nfe, minimum=1)
        steps = (nfe - int(check_bool("denoise", denoise))) // self.evals_per_step
        if steps < 1:
            raise ValueError(f"a budget of nfe={nfe} is below one step ({self.evals_per_step} evaluations).")
        return steps


@dataclass(frozen=True)
class AdaptiveSampler:
    """An adaptive sampler with its options: `sampler(sde, score_fn, x_T, rtol=..., atol=..., **more)`; nfe follows the tolerance."""

    fn: Callable[..., SampleResult]
    options: Mapping[str, Any] = field(default_factory=dict)
    stochastic: bool = False

    def __call__(self, sde: SDE, score_fn: ScoreFn, x_T: Tensor, **kwargs: Any) -> SampleResult:
        return self.fn(sde, score_fn, x_T, **{**self.options, **kwargs})


FAST_SAMPLERS: dict[str, FixedStepSampler | AdaptiveSampler] = {
    "heun": FixedStepSampler(heun_sample, {}, 2),
    "heun_churn": FixedStepSampler(heun_sample, {"S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0}, 2, True),
    "dpm_solver_1": FixedStepSampler(dpm_solver_sample, {"order": 1}, 1),
    "dpm_solver_2": FixedStepSampler(dpm_solver_sample, {"order": 2}, 2),
    "dpm_solver_3": FixedStepSampler(dpm_solver_sample, {"order": 3}, 3),
    "dpm_solver_2m": FixedStepSampler(dpm_solver_sample, {"order": 2, "multistep": True}, 1),
    "dpm_solver_3m": FixedStepSampler(dpm_solver_sample, {"order": 3, "multistep": True}, 1),
    "dpm_solver_pp_2m": FixedStepSampler(dpm_solver_pp_sample, {"order": 2}, 1),
    "dpm_solver_pp_3m": FixedStepSampler(dpm_solver_pp_sample, {"order": 3}, 1),
    "adaptive_sde": AdaptiveSampler(adaptive_sde_sample, {}, True),
    "adaptive_ode": AdaptiveSampler(adaptive_ode_sample, {}),
}

