"""The discrete methods the SDEs generalize: NCSN/SMLD (Song & Ermon 2019) and DDPM (Ho et al. 2020).

NCSN is the VE-SDE: its levels sigma_1 > ... > sigma_L are the VE kernel's std at t_i = (L - 1 - i) / (L - 1)
(i = 0..L-1) for VESDE(sigma_min=sigma_L, sigma_max=sigma_1), its loss is the sigma2-weighted DSM loss on that
grid, and annealed Langevin dynamics is the corrector-only predictor–corrector sampler. DDPM is the VP-SDE:
beta_i = beta(t_i) / N, and the chain's marginals converge to the VP kernel as N grows. The derivations are in
docs/theory/discrete_special_cases.md; the tests in tests/test_discrete.py check each statement.

Model interfaces: NCSN models are score_fn(x, sigma) with sigma of shape (B,) in x's dtype; `score_from_ncsn`
and `ncsn_from_score` convert to and from score_fn(x, t). DDPM models are eps_fn(x, i) with i of shape (B,),
int64, the 0-based step index of Ho et al.'s code (i = 0 the least noisy, i = N - 1 the noisiest);
`ddpm_eps_from_continuous` turns a continuous eps_fn(x, t) into one. Plain `langevin` takes a score of x alone.

Precision: the samplers (`langevin`, `annealed_langevin`, `AnnealedLangevinCorrector`, `ddpm_sample`) form each
step in `work_dtype(x)` (float32 for a half-precision state) and round the new state to x's dtype once: a drift
below half an ulp of x, such as (alpha / 2) s at a small step, is lost when rounded alone, and kept on average
when rounded once together with the noise, which dithers it.
"""

from __future__ import annotations

import math
import sys
from numbers import Real
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ._checks import (
    check_bool,
    check_callable,
    check_choice,
    check_data,
    check_generator,
    check_int,
    check_numbers,
    check_output,
    check_real,
    check_sigmas,
    value_range,
)
from ._score import CheckedScore, SampleResult, _randn_like
from .parametrizations import _check_x, _Converter
from .sde import SDE, VESDE, batch_view, wide_view, work_dtype

__all__ = [
    "ncsn_sigmas",
    "ve_sde_from_ncsn_sigmas",
    "score_from_ncsn",
    "ncsn_from_score",
    "langevin",
    "annealed_langevin",
    "AnnealedLangevinCorrector",
    "ddpm_betas",
    "ddpm_times",
    "ddpm_sample",
    "ddpm_eps_from_continuous",
    "DDPM_VARIANCES",
]


# ================================================================================================= NCSN
def ncsn_sigmas(sigma_1: float, sigma_L: float, L: int) -> Tensor:
    """Geometric noise levels sigma_1 > ... > sigma_L of NCSN (Song & Ermon 2019, section 4.2), float64 (L,).

    sigma_i = sigma_L (sigma_1 / sigma_L)^{t_i} with t_i = (L - 1 - i) / (L - 1), i = 0..L-1: the same expression
    as `VESDE.sigma`, so VESDE(sigma_min=sigma_L, sigma_max=sigma_1).sigma(t_i) reproduces them bit for bit. The
    VE-SDE that `ve_sde_from_ncsn_sigmas` rebuilds from the levels has sigma_max = sigmas[0], a rounding of sigma_1
    whose log(sigma_max / sigma_min) can differ in the last bit, so its sigma(t_i) reproduces them to rounding
    (relative error below 1e-15), not always bit for bit. The reference's exp(linspace(log sigma_1, log sigma_L, L))
    agrees to rounding. sigma_1 / sigma_L must be a finite float64, as for `VESDE` (a ValueError otherwise).
    """
    sigma_1 = check_real("sigma_1", sigma_1, positive=True)
    sigma_L = check_real("sigma_L", sigma_L, positive=True)
    L = check_int("L", L, minimum=2)
    if not sigma_1 > sigma_L:
        raise ValueError(f"need sigma_1 > sigma_L > 0 (levels are descending), got sigma_1={sigma_1}, sigma_L={sigma_L}.")
    ratio = sigma_1 / sigma_L
    if math.isinf(ratio):
        # sigma_L (sigma_1 / sigma_L)^t overflows at t = 1 although sigma_1 is finite, and the VE-SDE of the levels
        # (whose sigma(t) is the same expression) refuses such a ratio too
        raise ValueError(
            f"sigma_1 / sigma_L must be a finite float64 (below {sys.float_info.max:.4g}), got sigma_1={sigma_1!r} "
            f"and sigma_L={sigma_L!r}, whose ratio overflows: the levels sigma_L (sigma_1 / sigma_L)^t_i are formed "
            "from it; take levels that span fewer than 308 decades."
        )
    t = torch.arange(L - 1, -1, -1, dtype=torch.float64) / (L - 1)
    return sigma_L * torch.exp(t * math.log(ratio))


def _precision(values: Any) -> float:
    """Machine epsilon of the coarsest floating dtype the levels come in: a tensor's or a NumPy array's, else the
    coarsest among a sequence's NumPy scalars (a Python number counts as float64), so that a float32 array and the
    list of its scalars are judged alike; never finer than float64's, the precision the levels are compared in
    (check_sigmas refuses a tensor that is not floating)."""
    eps = torch.finfo(torch.float64).eps
    dtype = getattr(values, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return max(eps, torch.finfo(dtype).eps) if dtype.is_floating_point else eps
    if isinstance(dtype, np.dtype):
        return max(eps, float(np.finfo(dtype).eps)) if np.issubdtype(dtype, np.floating) else eps
    for v in values:
        if isinstance(v, np.floating):
            eps = max(eps, float(np.finfo(v.dtype).eps))
    return eps


def ve_sde_from_ncsn_sigmas(sigmas: Any) -> VESDE:
    """The VE-SDE of NCSN's levels: VESDE(sigma_min=sigma_L, sigma_max=sigma_1, N=L-1).

    Its kernel std at t_i = (L - 1 - i) / (L - 1) is sigma_{i+1} (Song et al. 2021, section 3.4 and eq. 30), so an
    NCSN model becomes a VE score through `score_from_ncsn`. The levels lie 1 / (L - 1) apart in t, so N = L - 1
    chain steps: `discretize(x, t_i)` is SMLD's step sqrt(sigma_{i+1}^2 - sigma_{i+2}^2) between two levels
    (Song et al. 2021, eq. 19).

    The levels must be geometric, as a VE-SDE's are, to the precision of their own dtype: each must equal
    g_i = sigma_L (sigma_1 / sigma_L)^{t_i} within a relative

        rtol = 2 eps + 32 min(eps, eps_32) (1 + max |log sigma|),

    eps that of the coarsest dtype the levels come in (a tensor's, an array's or a sequence's NumPy scalars'; Python
    numbers are float64), eps_32 float32's. The first term is the rounding of the levels to their dtype: a level
    that is the rounding of the exact geometric level lies within eps / 2 of it, and g_i, built from sigma_1 and
    sigma_L as rounded, within eps / 2 more (each end is eps / 2 off, and g_i is their weighted geometric mean); so
    eps, with a factor of two to spare. The second is the rounding of log sigma that exp(linspace(log ...)) carries,
    amplified by exp: charged at most at float32's eps, the precision such levels are computed in (float32 levels
    such as NCSN's `torch.tensor(np.exp(np.linspace(...))).float()` are accepted). For half-precision levels the
    first term dominates: rtol = 0.0156 + 2.1e-5 for bfloat16 levels from 50 down to 0.01.
    """
    if not isinstance(sigmas, (Tensor, np.ndarray)):
        sigmas = check_numbers("sigmas", sigmas, Real, "a 1-D tensor or a sequence of noise levels")
    eps = _precision(sigmas)
    sigmas = check_sigmas("sigmas", sigmas, device="cpu")  # L numbers, compared on the host
    L = sigmas.shape[0]
    if L < 2:
        raise ValueError(f"sigmas must hold at least 2 levels to define a VE-SDE, got {L}.")
    sigma_1, sigma_L = float(sigmas[0]), float(sigmas[-1])
    geometric = ncsn_sigmas(sigma_1, sigma_L, L)
    # each level's rounding to its dtype (2 eps), plus the rounding of log sigma that exp(linspace(log ...))
    # carries, computed in float32 at worst
    eps_log = min(eps, torch.finfo(torch.float32).eps)
    rtol = 2 * eps + 32 * eps_log * (1 + max(abs(math.log(sigma_1)), abs(math.log(sigma_L))))
    deviation = (sigmas - geometric).abs() / geometric
    k = int(deviation.argmax())
    if float(deviation[k]) > rtol:
        raise ValueError(
            "sigmas must be geometric (constant ratio sigma_{i+1} / sigma_i), as the VE-SDE's levels "
            f"sigma_min (sigma_max / sigma_min)^t are: level {k} is {float(sigmas[k])!r}, but the geometric sequence "
            f"from sigma_1={sigma_1!r} to sigma_L={sigma_L!r} has {float(geometric[k])!r} there, a relative "
            f"deviation of {float(deviation[k]):.3g} where the levels' precision allows {rtol:.3g}; build them with "
            "ncsn_sigmas(sigma_1, sigma_L, L)."
        )
    return VESDE(sigma_min=sigma_L, sigma_max=sigma_1, N=L - 1)


class _ScoreFromNCSN(_Converter):
    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self._check(x, t)
        # the kernel in float64 and the scaling in work_dtype(x), as the other converters: alpha(T) of the VP-SDE,
        # 4.4e-5, is subnormal in float16; the model sees x / alpha and sigma rounded to x's dtype once
        alpha, std = self.sde.kernel(t.to(torch.float64))
        a = wide_view(alpha, x)
        return (self._out((x / a).to(x.dtype), (std / alpha).to(x.dtype)) / a).to(x.dtype)


class _NCSNFromScore(_Converter):
    def __init__(self, sde: SDE, fn: Callable[[Tensor, Tensor], Tensor], name: str):
        super().__init__(sde, fn, name)
        alpha, std = sde.kernel(torch.tensor([0.0, sde.T], dtype=torch.float64))
        self.sigma_range = (std / alpha).tolist()  # [std(0) / alpha(0), std(T) / alpha(T)]

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self._check(x, sigma, "sigma")
        lo, hi = (float(v) for v in value_range(sigma))
        low, high = self.sigma_range
        # a level rounded to sigma's dtype still lies in the range, and so does one at an end that the float64
        # kernel rounded (exp of a log amplifies eps64 by about |log sigma|)
        rtol = 4 * torch.finfo(sigma.dtype).eps + 8 * torch.finfo(torch.float64).eps * (1 + abs(math.log(high)))
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or lo < low * (1 - rtol) or hi > high * (1 + rtol):
            raise ValueError(
                f"sigma must lie in the SDE's range of noise levels [std(0) / alpha(0), std(T) / alpha(T)] = "
                f"[{low!r}, {high!r}] (and be > 0) for its time to lie in [0, {self.sde.T}], got values in "
                f"[{lo!r}, {hi!r}]; build the SDE to cover the levels, e.g. VESDE.from_ncsn(sigmas)."
            )
        t = self.sde.t_from_log_snr(-2.0 * torch.log(sigma.to(torch.float64))).clamp(0.0, self.sde.T)
        alpha, _ = self.sde.kernel(t)
        a = wide_view(alpha, x)
        return (a * self._out((a * x).to(x.dtype), t.to(x.dtype))).to(x.dtype)


def score_from_ncsn(sde: SDE, ncsn_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """score(x, t) = ncsn(x / alpha(t), std(t) / alpha(t)) / alpha(t): an NCSN model as a score of the SDE.

    x_t / alpha = x0 + (std / alpha) z is the data smoothed at level sigma = std / alpha, whose score NCSN models.
    For the VE-SDE (alpha = 1) this is ncsn(x, sigma(t)), exactly; it holds for any SDE with a Gaussian kernel.
    """
    return _ScoreFromNCSN(sde, ncsn_fn, "ncsn_fn")


def ncsn_from_score(sde: SDE, score_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """ncsn(x, sigma) = alpha(t) score(alpha(t) x, t) at the t where std(t) / alpha(t) = sigma: the inverse of `score_from_ncsn`.

    t = sde.t_from_log_snr(-2 log sigma); for the VE-SDE, t = log(sigma / sigma_min) / log(sigma_max / sigma_min).
    sigma (B,) must be > 0 and lie in the SDE's range [std(0) / alpha(0), std(T) / alpha(T)] (to the rounding of
    its dtype) for t to lie in [0, T]: a level outside it raises a ValueError naming the range, instead of
    evaluating the score at a time the SDE does not have. The check reads sigma's range (one host read per call).
    """
    return _NCSNFromScore(sde, score_fn, "score_fn")


# ================================================================================================= Langevin
def _langevin_steps(
    score: Callable[[Tensor], Tensor], x: Tensor, alpha: float | Tensor, n_steps: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """n_steps of x <- x + (alpha / 2) s(x) + sqrt(alpha) z (Song & Ermon 2019, eq. 4); returns (x, x_mean of the last step).

    alpha: a number, or per-sample steps as a (B, 1, ..., 1) `wide_view` (float32 for a half-precision x, where
    step_lr std^2 / sigma_min^2 can exceed float16's range). Each step, x_mean = x + (alpha / 2) s(x) and
    x_mean + sqrt(alpha) z, is formed in `work_dtype(x)` and rounded to x's dtype once, so the state keeps x's dtype.
    """
    half = alpha / 2
    root = torch.sqrt(alpha) if isinstance(alpha, Tensor) else math.sqrt(alpha)
    dtype, w = x.dtype, work_dtype(x)
    x_mean = x
    for _ in range(n_steps):
        z = _randn_like(x, generator)
        # x + (alpha / 2) s and the noise meet in w: rounded to a half-precision x first, the drift alpha s / 2
        # (below x's half ulp at a small alpha) was lost, and the chain sampled a law of the wrong variance
        x_mean = x.to(w) + half * score(x).to(w)
        x = (x_mean + root * z.to(w)).to(dtype)
    return x, x_mean.to(dtype)


def langevin(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    step_size: float,
    n_steps: int,
    *,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Langevin dynamics x <- x + (a / 2) s(x) + sqrt(a) z, z ~ N(0, I), from x (Song & Ermon 2019, eq. 4).

    Targets the law whose score is s as a -> 0 and n_steps -> infinity; between well-separated modes it cannot
    move, so it keeps the initial split of mass instead of the mixture weights (Song & Ermon 2019, section 3.2).

    Args:
        score_fn: score(x) of x alone, x (B, *dims).
        x: initial samples (B, *dims).
        step_size: a > 0.
        n_steps: number of steps (>= 1).
        generator: draws z.
    Returns:
        SampleResult(x after the last step, nfe = n_steps).
    """
    check_callable("score_fn", score_fn, "score_fn(x)")
    x = check_data("x", x)
    step_size = check_real("step_size", step_size, positive=True)
    n_steps = check_int("n_steps", n_steps, minimum=1)
    generator = check_generator(generator, x.device)
    score = CheckedScore(lambda y, _: score_fn(y), name="score_fn")
    step = [0]

    def s(y: Tensor) -> Tensor:
        step[0] += 1
        return score(y, None, when=float(step[0] - 1))

    x, _ = _langevin_steps(s, x, step_size, n_steps, generator)
    score.raise_if_nonfinite(x, "langevin (t is the step index)", lambda k, _: k)
    return SampleResult(x=x, nfe=score.nfe)


def annealed_langevin(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sigmas: Any,
    x: Tensor,
    n_steps_each: int = 100,
    step_lr: float = 2e-5,
    denoise: bool = True,
    *,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Annealed Langevin dynamics, Algorithm 1 of Song & Ermon (2019), with NCSNv2's final denoising step.

    For i = 1..L: alpha_i = step_lr sigma_i^2 / sigma_L^2, then n_steps_each steps of
    x <- x + (alpha_i / 2) s(x, sigma_i) + sqrt(alpha_i) z. With denoise=True, finally
    x <- x + sigma_L^2 s(x, sigma_L) (Song & Ermon 2020, NCSNv2, appendix; Tweedie's E[x0 | x]).
    The reference code steps by x + a s + sqrt(2a) z with a = step_lr sigma_i^2 / sigma_L^2: its step_lr is half
    the paper's (and this function's).

    Args:
        score_fn: NCSN model score(x, sigma), x (B, *dims), sigma (B,) in x's dtype.
        sigmas: sigma_1 > ... > sigma_L > 0 (tensor (L,) or sequence), e.g. `ncsn_sigmas`.
        x: initial samples (B, *dims), e.g. uniform noise.
        n_steps_each: T, steps per level (>= 1).
        step_lr: epsilon > 0 of Algorithm 1.
        denoise: add the final denoising step.
        generator: draws z.
    Returns:
        SampleResult(x, nfe = L n_steps_each + denoise).
    """
    check_callable("score_fn", score_fn, "score_fn(x, sigma)")
    x = check_data("x", x)
    sigmas = check_sigmas("sigmas", sigmas)
    n_steps_each = check_int("n_steps_each", n_steps_each, minimum=1)
    step_lr = check_real("step_lr", step_lr, positive=True)
    denoise = check_bool("denoise", denoise)
    generator = check_generator(generator, x.device)
    score = CheckedScore(score_fn, name="score_fn")
    B = x.shape[0]
    levels = sigmas.tolist()
    sigma_L = levels[-1]
    for sigma_i in levels:
        c = torch.full((B,), sigma_i, dtype=x.dtype, device=x.device)
        alpha_i = step_lr * (sigma_i / sigma_L) ** 2
        x, _ = _langevin_steps(lambda y: score(y, c, when=sigma_i), x, alpha_i, n_steps_each, generator)
    if denoise:
        w = work_dtype(x)
        x = (x.to(w) + sigma_L**2 * score(x, c, when=sigma_L).to(w)).to(x.dtype)
    score.raise_if_nonfinite(x, "annealed_langevin (t is the noise level sigma)", lambda k, _: k)
    return SampleResult(x=x, nfe=score.nfe)


class AnnealedLangevinCorrector:
    """NCSN's Langevin step as a predictor–corrector corrector: alpha(t) = step_lr std(t)^2 / sigma_min^2.

    At time t it runs n_steps of x <- x + (alpha / 2) s(x, t) + sqrt(alpha) z with the step rule of Song & Ermon
    (2019, Algorithm 1) instead of the signal-to-noise rule of `LangevinCorrector`; the predictor's step h and
    `snr` are unused. `pc_sample(sde, score, ..., predictor='none', corrector=AnnealedLangevinCorrector(sigma_L,
    step_lr))` on a VE-SDE whose grid hits NCSN's levels is `annealed_langevin(..., denoise=False)`.

    Args:
        sigma_min: sigma_L, the smallest level of the annealing (the reference of the step rule).
        step_lr: epsilon > 0 of Algorithm 1.
    """

    def __init__(self, sigma_min: float, step_lr: float = 2e-5):
        self.sigma_min = check_real("sigma_min", sigma_min, positive=True)
        self.step_lr = check_real("step_lr", step_lr, positive=True)

    def __repr__(self) -> str:
        return f"AnnealedLangevinCorrector(sigma_min={self.sigma_min}, step_lr={self.step_lr})"

    def evals(self, n_steps: int) -> int:
        return n_steps

    def step(self, sde, score, x, t, h, n_steps, snr, generator):
        _, std = sde.kernel(t)
        alpha = wide_view(self.step_lr * (std / self.sigma_min) ** 2, x)
        t_x = t.to(x.dtype)
        return _langevin_steps(lambda y: score(y, t_x), x, alpha, n_steps, generator)


# ================================================================================================= DDPM
def ddpm_betas(beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> Tensor:
    """DDPM's linear schedule beta_i = beta(t_i) / N, t_i = i / (N - 1), i = 0..N-1, float64 (N,).

    beta(t) = beta_min + t (beta_max - beta_min) is the VP-SDE's (Song et al. 2021, eq. 32 and appendix B:
    beta_i = beta_bar_i / N). The defaults give Ho et al.'s (2020) schedule, linear from 1e-4 to 0.02. Step i of
    the chain, x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z, is `VPSDE(beta_min, beta_max, N).discretize(x, t_i)`.
    """
    beta_min = check_real("beta_min", beta_min)
    if beta_min <= 0:
        # unlike VPSDE(beta_min=0), whose kernel has std(t) > 0 at every t > 0: the chain's first step is discrete
        raise ValueError(
            f"beta_min must be > 0, got {beta_min}: beta_0 = beta_min / N is the variance of the chain's first step, "
            "and beta_0 = 0 makes alpha_bar_0 = 1, a step without noise whose eps(x, 0) is undefined and where DDPM's "
            "sampler divides by sqrt(1 - alpha_bar_0) = 0 (ddpm_sample and ddpm_times need every beta_i in (0, 1)); "
            "take a small positive beta_min, e.g. 0.1 (Ho et al.'s beta_1 = 1e-4 for N = 1000)."
        )
    beta_max = check_real("beta_max", beta_max, positive=True)
    N = check_int("N", N, minimum=2)
    if beta_max < beta_min:
        raise ValueError(f"need beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}.")
    if beta_max >= N:
        raise ValueError(f"need beta_max / N < 1 so that every beta_i < 1, got beta_max={beta_max}, N={N}.")
    t = torch.arange(N, dtype=torch.float64) / (N - 1)
    return (beta_min + t * (beta_max - beta_min)) / N


def _check_betas(betas: Any) -> Tensor:
    if isinstance(betas, Tensor):
        if not betas.is_floating_point():
            raise TypeError(f"betas must be a floating tensor of shape (N,), got dtype {betas.dtype}.")
        b = betas.detach().to(torch.float64)
    else:
        b = torch.tensor(check_numbers("betas", betas, Real, "a 1-D tensor or a sequence"), dtype=torch.float64)
    if b.ndim != 1 or b.numel() == 0:
        raise ValueError(f"betas must have shape (N,) with N >= 1, got shape {tuple(b.shape)}.")
    if not bool(((b > 0) & (b < 1)).all()):
        raise ValueError(f"every beta_i must lie in (0, 1), got values in [{float(b.min())}, {float(b.max())}].")
    return b


def _log_alpha_bar(betas: Tensor) -> Tensor:
    return torch.cumsum(torch.log1p(-betas), 0)


def ddpm_times(sde: SDE, betas: Any) -> Tensor:
    """Times t_i (N,) at which the SDE's log-SNR equals that of the chain's marginal q(x_i | x0), clamped to [0, T].

    q(x_i | x0) = N(sqrt(alpha_bar_i) x0, (1 - alpha_bar_i) I) with alpha_bar_i = prod_{k<=i} (1 - beta_k) (Ho et al.
    2020, eq. 4) has log-SNR log(alpha_bar_i / (1 - alpha_bar_i)); t_i = sde.t_from_log_snr of it. For the VP-SDE
    (alpha^2 + std^2 = 1) the kernel at t_i is the chain's marginal exactly; with `ddpm_betas`, t_i = (i + 1) / N + O(1 / N)
    (step i of the chain ends i + 1 steps of length 1 / N after t = 0).
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
    log_abar = _log_alpha_bar(_check_betas(betas))
    log_snr = log_abar - torch.log(-torch.expm1(log_abar))
    return sde.t_from_log_snr(log_snr).clamp(0.0, sde.T)


class _DiscreteEps:
    """eps_i(x, i) = eps(c_i x, t_i): the chain's x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) z is x_t / c_i at t_i.

    c_i = std(t_i) / sqrt(1 - abar_i) matches the noise scale; where t_i is not clamped it equals
    alpha(t_i) / sqrt(abar_i) (same log-SNR). Where the chain's SNR lies below the SDE's (t_i clamped to T, as for
    a coarse chain whose alpha_bar falls far below alpha(T)^2), matching the noise is the sensible choice.
    """

    def __init__(self, sde: SDE, eps_fn: Callable[[Tensor, Tensor], Tensor], betas: Any):
        if not callable(eps_fn):
            raise TypeError(f"eps_fn must be callable as eps_fn(x, t), got {type(eps_fn).__name__}.")
        self.sde, self.eps_fn = sde, eps_fn
        self.times = ddpm_times(sde, betas)
        _, std = sde.kernel(self.times)
        self.scale = std / torch.sqrt(-torch.expm1(_log_alpha_bar(_check_betas(betas))))

    def __repr__(self) -> str:
        return f"ddpm_eps_from_continuous({self.sde!r}, {self.eps_fn!r}, N={self.times.shape[0]})"

    def __call__(self, x: Tensor, i: Tensor) -> Tensor:
        N = self.times.shape[0]
        _check_x(x)
        B = x.shape[0]
        if not isinstance(i, Tensor) or i.is_floating_point() or i.is_complex() or i.dtype == torch.bool:
            got = f"dtype {i.dtype}" if isinstance(i, Tensor) else type(i).__name__
            raise TypeError(
                f"i must be an integer tensor of shape ({B},) of 0-based step indices (torch.long), got {got}; "
                "a float index would be truncated to a step."
            )
        if i.shape != (B,):
            raise ValueError(f"i must have shape ({B},), one step index per sample of x {tuple(x.shape)}, got {tuple(i.shape)}.")
        lo, hi = value_range(i)
        if lo < 0 or hi >= N:
            raise ValueError(
                f"i indexes the {N} steps of the chain, so it must lie in [0, {N - 1}] (0 the least noisy step); got "
                f"values in [{lo}, {hi}]."
            )
        i = i.to(device=self.times.device, dtype=torch.long)
        t, c = self.times[i].to(x.device), self.scale[i].to(x.device)
        # shape only, as the losses: the output may come from a network under autocast
        return check_output("eps_fn", self.eps_fn(batch_view(c, x) * x, t.to(x.dtype)), x, dtype=False)


def ddpm_eps_from_continuous(
    sde: SDE, eps_fn: Callable[[Tensor, Tensor], Tensor], betas: Any
) -> Callable[[Tensor, Tensor], Tensor]:
    """A continuous eps_fn(x, t) as DDPM's eps_fn(x, i), evaluated at the time t_i = `ddpm_times`(sde, betas)[i].

    Exact: the chain's marginal at step i is the kernel at t_i up to the scale c_i = std(t_i) / sqrt(1 - alpha_bar_i)
    (= alpha(t_i) / sqrt(alpha_bar_i); c_i = 1 for the VP-SDE), so E[z | x_i = x] = eps(c_i x, t_i) for the exact
    eps, wherever t_i lies inside [0, T] (see `ddpm_times`).

    The returned eps_fn(x, i) takes i of shape (B,), an integer tensor with values in [0, N - 1] (checked: a float,
    negative or too large index raises naming i; one host read per call).
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
    return _DiscreteEps(sde, eps_fn, betas)


class _BetaVariance:
    """sigma_i^2 = beta_i: the reverse variance that is exact when x0 ~ N(0, I) (Ho et al. 2020, section 3.2)."""

    def __call__(self, betas: Tensor, log_alpha_bar: Tensor) -> Tensor:
        return betas


class _BetaTildeVariance:
    """sigma_i^2 = (1 - abar_{i-1}) / (1 - abar_i) beta_i, the posterior variance of q(x_{i-1} | x_i, x0) (Ho et al., eq. 7)."""

    def __call__(self, betas: Tensor, log_alpha_bar: Tensor) -> Tensor:
        one_minus = -torch.expm1(log_alpha_bar)
        prev = torch.cat([one_minus.new_zeros(1), one_minus[:-1]])
        return prev / one_minus * betas


DDPM_VARIANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "beta": _BetaVariance(),
    "beta_tilde": _BetaTildeVariance(),
}


def ddpm_sample(
    eps_fn: Callable[[Tensor, Tensor], Tensor],
    betas: Any,
    x_T: Tensor,
    *,
    variance: str | Callable[[Tensor, Tensor], Tensor] = "beta",
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Ancestral sampling of DDPM's chain, Algorithm 2 of Ho et al. (2020).

    For i = N-1, ..., 0: x <- (x - beta_i / sqrt(1 - abar_i) eps(x, i)) / sqrt(1 - beta_i) + sigma_i z, with no
    noise at i = 0, formed in `work_dtype(x)` and rounded to x's dtype once per step. The mean is the exact Tweedie
    mean E[x_{i-1} | x_i] = (x + beta_i score) / sqrt(1 - beta_i) of the one-step transition when eps is exact.

    Args:
        eps_fn: eps(x, i), x (B, *dims), i (B,) int64 0-based step index (see `ddpm_eps_from_continuous`).
        betas: beta_0..beta_{N-1} in (0, 1), tensor (N,) or sequence, e.g. `ddpm_betas()`.
        x_T: initial samples (B, *dims), N(0, I) for DDPM.
        variance: 'beta' | 'beta_tilde' (DDPM_VARIANCES), or (betas, log_alpha_bar) -> sigma^2 of shape (N,).
        generator: draws z.
    Returns:
        SampleResult(x_0, nfe = N).
    """
    check_callable("eps_fn", eps_fn, "eps_fn(x, i)")
    variance = check_choice("variance", variance, DDPM_VARIANCES)
    if not callable(variance):
        raise TypeError(f"variance must be one of {sorted(DDPM_VARIANCES)} or a callable, got {type(variance).__name__}.")
    betas = _check_betas(betas)
    x = check_data("x_T", x_T)
    generator = check_generator(generator, x.device)
    log_abar = _log_alpha_bar(betas)
    var = variance(betas, log_abar)
    if not isinstance(var, Tensor) or var.shape != betas.shape or not bool((var >= 0).all()):
        raise ValueError(f"variance must return non-negative variances of shape {tuple(betas.shape)}.")
    c_eps = (betas / torch.sqrt(-torch.expm1(log_abar))).tolist()
    c_x = torch.rsqrt(1.0 - betas).tolist()
    sigma = torch.sqrt(var).tolist()
    eps = CheckedScore(eps_fn, name="eps_fn")
    B, N = x.shape[0], betas.shape[0]
    dtype, w = x.dtype, work_dtype(x)
    for i in range(N - 1, -1, -1):
        idx = torch.full((B,), i, dtype=torch.long, device=x.device)
        # the step in w, rounded to x's dtype once: rounded after each operation in bfloat16, it lost x - beta_i x
        # where beta_i x is below half an ulp (the output variance for N(0, I) data was 0.93 instead of 1 - beta_0)
        x_mean = c_x[i] * (x.to(w) - c_eps[i] * eps(x, idx, when=float(i)).to(w))
        if i > 0:
            x_mean = x_mean + sigma[i] * _randn_like(x, generator).to(w)
        x = x_mean.to(dtype)
    eps.raise_if_nonfinite(x, "ddpm_sample (t is the step index i)", lambda k, _: N - 1 - k)
    return SampleResult(x=x, nfe=eps.nfe)
