"""Forward SDEs of Song et al. (2021): dx = f(x, t) dt + g(t) dw on [0, T].

An SDE is pure mathematics: it holds its constants and answers for its drift, diffusion, Gaussian kernel,
prior and discrete chain. It owns no parameters, no device and no state. Subclasses implement the
mathematics in the paper's symbols (`f`, `g`, `kernel`); the public verbs (`drift`, `diffusion`,
`marginal_prob`, `perturb`) check their inputs once and call them. Solvers call the symbols directly.

Time tensors have shape (B,). The symbols compute their coefficients in the dtype of `t` (the samplers keep time
in float64); the public verbs widen a half-precision `t` to float32 first and round the coefficient back to its
dtype once (float16's exp overflows for sigma_max / sigma_min above 65504 where sigma(t) itself fits, and its
subnormals cost the VP kernel its digits at small t). Coefficients are cast to the dtype of `x` where they meet
the data; where `x` is in half precision the solvers form the products in float32 (`wide_view`) and round the
result once.
"""

from __future__ import annotations

import abc
import math
import sys
from numbers import Integral
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor

from ._checks import (
    HALF_DTYPES, all_finite, check_data, check_float_dtype, check_generator, check_int, check_like, check_numbers,
    check_real, check_time,
)

if TYPE_CHECKING:
    from .flow import ProbabilityFlowODE
    from .reverse import ReverseSDE

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""The one model interface inside sdescore: score_fn(x, t) -> tensor shaped like x, for x (B, *dims) and t (B,)."""

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "ScoreFn", "batch_view"]


def batch_view(c: Tensor, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Reshape per-sample coefficients c of shape (B,) to broadcast against x of shape (B, *dims)."""
    return c.to(dtype=dtype or x.dtype).reshape(c.shape[0], *([1] * (x.ndim - 1)))


def work_dtype(x: Tensor) -> torch.dtype:
    """The precision in which coefficients meet x: float32 for a half-precision x, x's dtype otherwise."""
    return torch.float32 if x.dtype in HALF_DTYPES else x.dtype


def wide_view(c: Tensor, x: Tensor) -> Tensor:
    """`batch_view` in `work_dtype(x)`: a product with x then runs in float32 where x is in half precision.

    g(t)^2 h, std(t)^2 or 1 / std(t)^2 exceed float16's range (65504) or fall among its subnormals for the VE-SDE's
    usual sigma_max, although the result of the product fits; the caller rounds that result to x's dtype once.
    """
    return batch_view(c, x, work_dtype(x))


def _wide(t: Tensor) -> Tensor:
    """t in float32 where it is in half precision, else t itself: the public verbs' working precision."""
    return t.to(work_dtype(t))


def _fits(name: str, c: Tensor, t: Tensor) -> Tensor:
    """A public verb's coefficient c, computed at _wide(t), in t's dtype: raises where it overflows that dtype.

    Widened to float32, a coefficient overflows a half-precision t's dtype only where its value lies beyond that
    range (65504 in float16): the public verbs then raise instead of returning inf. One host read, for a
    half-precision t only.
    """
    if t.dtype not in HALF_DTYPES:
        return c
    c = c.to(t.dtype)
    if not all_finite(c):
        raise ValueError(
            f"{name} exceeds the range of t's dtype {t.dtype} (largest {torch.finfo(t.dtype).max:g}) at some of the "
            f"times given, t in [{float(t.min())}, {float(t.max())}]; pass t in float32 or float64."
        )
    return c


class SDE(abc.ABC):
    """An Itô SDE dx = f(x, t) dt + g(t) dw on [0, T] with a scalar diffusion coefficient g(t).

    Song et al. (2021), eq. 5. Subclass and implement `f`, `g` and, when the kernel is Gaussian with
    a closed form (any SDE with affine drift), `kernel`. `N` is the number of steps of the discrete
    chain the SDE generalizes (`discretize`).
    """

    T: float = 1.0

    def __init__(self, N: int = 1000):
        self.N = check_int("N", N, minimum=1)

    # ------------------------------------------------------------------ the mathematics
    @abc.abstractmethod
    def f(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift f(x, t), shaped like x. x: (B, *dims), t: (B,)."""

    @abc.abstractmethod
    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient g(t) of shape (B,). t: (B,)."""

    def linear_drift(self, t: Tensor) -> Tensor | None:
        """The coefficient a(t), shape (B,), of a drift linear in x, f(x, t) = a(t) x; None where f is not of that form.

        Solvers that meet one time for the whole batch (the probability-flow ODE) read it to form the drift from
        a host scalar: one whole-state operation instead of f's several. Overriding it states f(x, t) = a(t) x;
        it is read only where the class that overrides it is the one defining f or a subclass of it
        (`drift_is_linear`), so a subclass that redefines f alone falls back to f.
        """
        return None

    @property
    def drift_is_linear(self) -> bool:
        """Whether `linear_drift` describes `f`: overridden by the class that defines f, or by a subclass of it."""
        mro = type(self).__mro__
        lin = next(c for c in mro if "linear_drift" in vars(c))
        return lin is not SDE and issubclass(lin, next(c for c in mro if "f" in vars(c)))

    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Coefficients (alpha(t), std(t)), each (B,), of p_t(x | x0) = N(alpha(t) x0, std(t)^2 I)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form Gaussian kernel; implement kernel(t) -> (alpha, std) "
            "to use the perturbation kernel, the converters and the kernel-based samplers."
        )

    @property
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior p_T = N(0, prior_std^2 I)."""
        return float(self.kernel(torch.full((1,), self.T, dtype=torch.float64))[1])

    def log_snr(self, t: Tensor) -> Tensor:
        """Log signal-to-noise ratio lambda(t) = log(alpha(t)^2 / std(t)^2), shape (B,)."""
        alpha, std = self.kernel(t)
        return 2.0 * (torch.log(alpha) - torch.log(std))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of `log_snr`: the time t at which lambda(t) equals the given value, shape (B,)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement t_from_log_snr.")

    # ------------------------------------------------------------------ public, checked
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift f(x, t). x: (B, *dims), t: (B,) in [0, T]. Returns a tensor shaped like x."""
        x = check_data("x", x)
        return self.f(x, _wide(check_time("t", t, x.shape[0], self.T)))

    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient g(t), shape (B,), in t's dtype. t: (B,) in [0, T]."""
        t = check_time("t", t, None, self.T)
        return _fits("g(t)", self.g(_wide(t)), t)

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Perturbation kernel p_t(x | x0) = N(mean, std^2 I): returns (mean shaped like x0, std of shape (B,)).

        Song et al. (2021), eq. 33 (VP), appendix C (sub-VP); for the VE-SDE the SMLD convention std = sigma(t),
        which differs from their eq. 29, sqrt(sigma(t)^2 - sigma_min^2), by sigma_min^2 in variance (see VESDE). x0
        is clean data; the law at time t is the data law convolved with this kernel.
        """
        x0 = check_data("x0", x0)
        t = check_time("t", t, x0.shape[0], self.T)
        alpha, std = self.kernel(_wide(t))
        return batch_view(_fits("alpha(t)", alpha, t), x0) * x0, _fits("std(t)", std, t)

    def perturb(
        self, x0: Tensor, t: Tensor, noise: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw x_t = alpha(t) x0 + std(t) z from the kernel; returns (x_t, z). z: standard normal, shaped like x0."""
        mean, std = self.marginal_prob(x0, t)
        generator = check_generator(generator, x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        else:
            noise = check_like("noise", noise, x0, "x0")
        return mean + batch_view(std, x0) * noise, noise

    def prior_sampling(
        self,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw x_T ~ N(0, prior_std^2 I) of the given shape (B, *dims)."""
        shape = tuple(int(n) for n in check_numbers("shape", shape, Integral, "a sequence (batch, *dims) of positive integers"))
        if len(shape) < 2 or any(n < 1 for n in shape):
            raise ValueError(f"shape must be (batch, *dims) of positive integers, with at least two entries, got {shape}.")
        dtype = check_float_dtype("dtype", dtype)
        generator = check_generator(generator, torch.device(device) if device is not None else torch.get_default_device())
        return self.prior_std * torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I), summed over the non-batch dimensions; shape (B,).

        In float32 for a half-precision z: a sum over D dimensions overflows float16 (and rounds to 3 digits in
        bfloat16) from D of a few thousand; float32 and float64 keep z's dtype.
        """
        z = check_data("z", z)
        if z.dtype in HALF_DTYPES:
            z = z.float()
        D = z[0].numel()
        var = self.prior_std**2
        return -0.5 * D * math.log(2 * math.pi * var) - z.pow(2).flatten(1).sum(1) / (2 * var)

    def discretize(self, x: Tensor, t: Tensor, dt: float | None = None) -> tuple[Tensor, Tensor]:
        """One step x_{i+1} = x_i + f_i + G_i z of the discrete chain; returns (f_i shaped like x, G_i of shape (B,)).

        Euler–Maruyama by default (Song et al. 2021, eq. 45): f_i = f(x, t) dt, G_i = g(t) sqrt(dt), with dt = T / N.
        Like `f` and `g` it is the solvers' symbol: x and t are not checked (the predictors call it every step);
        dt is, through `_step_length`, which an overriding subclass calls too.
        """
        dt = self._step_length(dt)
        return self.f(x, t) * dt, self.g(t) * math.sqrt(dt)

    def _step_length(self, dt: float | None) -> float:
        """discretize's dt: T / N by default, else a positive real number."""
        return self.T / self.N if dt is None else check_real("dt", dt, positive=True)

    # ------------------------------------------------------------------ reverse time
    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """Reverse-time SDE dx = [f - g^2 score] dt + g dw_bar (Anderson 1982), as a torchsde SDE.

        With probability_flow=True, the deterministic dx = [f - g^2 score / 2] dt of eq. 13 with zero diffusion,
        for torchsde's fixed-step solvers (`probability_flow` gives the same ODE for torchdiffeq's adaptive ones).
        """
        from .reverse import ReverseSDE

        return ReverseSDE(self, score_fn, probability_flow=probability_flow)

    def probability_flow(self, score_fn: ScoreFn) -> "ProbabilityFlowODE":
        """Probability-flow ODE dx/dt = f - g^2 score / 2 (Song et al. 2021, eq. 13), as a torchdiffeq function."""
        from .flow import ProbabilityFlowODE

        return ProbabilityFlowODE(self, score_fn)


class VESDE(SDE):
    """Variance-exploding SDE dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    Song et al. (2021), eq. 30; the continuous limit of SMLD/NCSN (Song & Ermon 2019).

    Convention (held by every part of sdescore): the SDE moves variance sigma(t)^2 - sigma(s)^2 between
    s and t, and the kernel from clean data has std(t) = sigma(t). So the law at t = 0 is the data smoothed
    by N(0, sigma_min^2) (the SMLD convention: NCSN's noise levels are sigma(t_i)), and the law at t is the
    data smoothed by N(0, sigma(t)^2). Read against a kernel from *smoothed* data x(0), the std is
    sqrt(sigma(t)^2 - sigma_min^2); the reference implementation mixes the two conventions.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        self.sigma_min = check_real("sigma_min", sigma_min, positive=True)
        self.sigma_max = check_real("sigma_max", sigma_max, positive=True)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
        ratio = self.sigma_max / self.sigma_min
        if math.isinf(ratio):
            # sigma(t) = sigma_min ratio^t would overflow on the way to sigma_max, and log(ratio) is inf
            raise ValueError(
                f"sigma_max / sigma_min must be a finite float64 (below {sys.float_info.max:.4g}), got "
                f"sigma_min={sigma_min!r} and sigma_max={sigma_max!r}, whose ratio overflows: sigma(t) = sigma_min "
                "(sigma_max / sigma_min)^t is formed from it; take noise levels that span fewer than 308 decades."
            )
        self._log_ratio = math.log(ratio)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N})"

    @classmethod
    def from_ncsn(cls, sigmas: Sequence[float] | Tensor) -> "VESDE":
        """The VE-SDE of NCSN's geometric levels sigma_1 > ... > sigma_L: VESDE(sigma_min=sigma_L, sigma_max=sigma_1, N=L - 1).

        Its kernel std at t_i = (L - 1 - i) / (L - 1) is sigma_{i+1} (Song et al. 2021, section 3.4; see sdescore.discrete);
        N = L - 1 steps, one per gap between levels, so that `discretize(x, t_i)` is SMLD's step. Levels geometric to
        their own dtype's precision (float32 too) are accepted.
        """
        from .discrete import ve_sde_from_ncsn_sigmas

        return ve_sde_from_ncsn_sigmas(sigmas)

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t, shape (B,)."""
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def f(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def linear_drift(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self.sigma(t)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * (math.log(self.sigma_min) + t * self._log_ratio)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        return (-0.5 * log_snr - math.log(self.sigma_min)) / self._log_ratio

    def discretize(self, x: Tensor, t: Tensor, dt: float | None = None) -> tuple[Tensor, Tensor]:
        """SMLD chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z (Song et al. 2021, eq. 19).

        f_i = 0, G_i = sqrt(sigma(t)^2 - sigma(t - dt)^2), with sigma(0) = sigma_min by the convention above.
        """
        dt = self._step_length(dt)
        sigma = self.sigma(t)
        sigma_prev = self.sigma((t - dt).clamp(min=0.0))
        return torch.zeros_like(x), torch.sqrt(sigma**2 - sigma_prev**2)


class _LinearBetaSDE(SDE):
    """Shared schedule of the VP and sub-VP SDEs: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        self.beta_min = check_real("beta_min", beta_min, nonnegative=True)
        self.beta_max = check_real("beta_max", beta_max, nonnegative=True)
        if self.beta_max < self.beta_min or self.beta_max == 0:
            raise ValueError(
                f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={beta_min}, beta_max={beta_max}."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, N={self.N})"

    def beta(self, t: Tensor) -> Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min), shape (B,)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t: Tensor) -> Tensor:
        """int_0^t beta(s) ds = beta_min t + (beta_max - beta_min) t^2 / 2, shape (B,)."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _t_from_integral_beta(self, c: Tensor) -> Tensor:
        # Root of (beta_max - beta_min) t^2 / 2 + beta_min t = c, written without cancellation.
        d = self.beta_max - self.beta_min
        root = self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * c)
        # root = 0 only at c = 0 with beta_min = 0, where t = 0 (the formula's 0 / 0)
        return 2.0 * c / torch.where(root > 0, root, torch.ones_like(root))

    def f(self, x: Tensor, t: Tensor) -> Tensor:
        return batch_view(self.linear_drift(t), x) * x

    def linear_drift(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0


class VPSDE(_LinearBetaSDE):
    """Variance-preserving SDE dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw, beta linear in t.

    Song et al. (2021), eq. 32; the continuous limit of DDPM (Ho et al. 2020) with beta_i = beta(t_i) / N.
    Kernel: alpha(t) = exp(-int_0^t beta / 2), std(t) = sqrt(1 - alpha(t)^2) (eq. 33).
    """

    def g(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))

    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        B = self.integral_beta(t)
        return torch.exp(-0.5 * B), torch.sqrt(-torch.expm1(-B))

    def log_snr(self, t: Tensor) -> Tensor:
        B = self.integral_beta(t)
        return -B - torch.log(-torch.expm1(-B))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # alpha^2 = sigmoid(lambda), so int beta = -log sigmoid(lambda) = softplus(-lambda).
        return self._t_from_integral_beta(torch.nn.functional.softplus(-log_snr))

    def discretize(self, x: Tensor, t: Tensor, dt: float | None = None) -> tuple[Tensor, Tensor]:
        """DDPM chain x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z with beta_i = beta(t) dt (Song et al. 2021, eq. 20)."""
        dt = self._step_length(dt)
        if self.beta_max * dt >= 1.0:
            raise ValueError(
                f"the DDPM chain needs beta(t) dt < 1, but beta_max * dt = {self.beta_max * dt:.3g} for dt={dt:.3g}: "
                f"dt must be below 1 / beta_max = {1.0 / self.beta_max:.3g}, i.e. a grid over [eps, T] needs more than "
                f"beta_max (T - eps) steps; take more steps, or another predictor."
            )
        beta_i = self.beta(t) * dt
        # sqrt(1 - beta_i) - 1 without cancellation: rounded to x's dtype before subtracting 1, the coefficient
        # (about -beta_i / 2, 5e-5 at DDPM's first step) kept 1e-3 of its digits in float32 and none in float16
        return batch_view(-beta_i / (1.0 + torch.sqrt(1.0 - beta_i)), x) * x, torch.sqrt(beta_i)


class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw.

    Song et al. (2021), eq. 34. Kernel: alpha(t) = exp(-int_0^t beta / 2), std(t) = 1 - alpha(t)^2; its variance
    is bounded by the VP-SDE's at every t.
    """

    def g(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(-2.0 * self.integral_beta(t)))

    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        B = self.integral_beta(t)
        return torch.exp(-0.5 * B), -torch.expm1(-B)

    def log_snr(self, t: Tensor) -> Tensor:
        B = self.integral_beta(t)
        return -B - 2.0 * torch.log(-torch.expm1(-B))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        # u = alpha^2 = e^{-B} solves (1 - u)^2 / u = e^{-lambda} = m. With v = (1 - u) / u = e^B - 1 this is
        # v^2 / (1 + v) = m, so v = m / 2 + sqrt(m + m^2 / 4) and B = log(1 + v) = softplus(log v): no cancellation
        # as u -> 1 (t -> 0; -log u lost every digit below t ~ 1e-7 in float32). log v is formed without
        # overflow or underflow: -lambda / 2 + log(sqrt(m) / 2 + sqrt(1 + m / 4)) for lambda >= 0, and
        # -lambda + log((1 + sqrt(1 + 4 / m)) / 2) below.
        root_m = torch.exp(-0.5 * log_snr.clamp(min=0.0))
        inv_m = torch.exp(log_snr.clamp(max=0.0))
        log_v = torch.where(
            log_snr >= 0,
            -0.5 * log_snr + torch.log(0.5 * root_m + torch.sqrt(1.0 + 0.25 * root_m * root_m)),
            -log_snr + torch.log(0.5 + 0.5 * torch.sqrt(1.0 + 4.0 * inv_m)),
        )
        return self._t_from_integral_beta(torch.nn.functional.softplus(log_v))
