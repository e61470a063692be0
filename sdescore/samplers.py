"""Predictor–corrector sampling (Song et al. 2021, section 4.2 and algorithms 2–5).

One loop, one step function per method. On the grid T = t_0 > t_1 > ... > t_n = eps, each iteration runs
the corrector at t_i, then the predictor from t_i to t_{i+1}. Predictors and correctors are objects with
a `step` method and an `evals` count; strings name the built-in ones through the registries below.

Precision: the time t is float64 and so are the SDE's coefficients; a step forms its coefficients (g^2 h, G_i^2,
the posterior's b^2, the Langevin step size) in float64, meets the state in `work_dtype(x)` (float32 for a
half-precision state, whose range g(t)^2 exceeds for the VE-SDE's usual sigma_max), where it also forms the drift
f(x, t) h or f_i (the VP's beta h x / 2 lies below a bfloat16 state's half ulp at small t: rounded alone, it was
lost), and rounds the new state to x's dtype once. The score is called with t in x's dtype.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Protocol, Sequence

import torch
from torch import Tensor

from ._checks import (
    check_bool, check_choice, check_data, check_eps, check_generator, check_int, check_numbers, check_real,
)
from ._score import CheckedScore, SampleResult, _randn_like
from .sde import SDE, ScoreFn, wide_view, work_dtype

__all__ = [
    "pc_sample",
    "Predictor",
    "Corrector",
    "EulerMaruyamaPredictor",
    "ReverseDiffusionPredictor",
    "AncestralSamplingPredictor",
    "NonePredictor",
    "LangevinCorrector",
    "NoneCorrector",
    "PREDICTORS",
    "CORRECTORS",
]


class Predictor(Protocol):
    """One reverse-time step from t ((B,), float64) to t - h. Returns (x, x_mean): x_mean without the noise."""

    evals: int

    def step(
        self, sde: SDE, score: ScoreFn, x: Tensor, t: Tensor, h: float, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]: ...


class Corrector(Protocol):
    """MCMC steps at fixed t targeting p_t; h is the predictor's step that follows. Returns (x, x_mean)."""

    def evals(self, n_steps: int) -> int: ...

    def step(
        self, sde: SDE, score: ScoreFn, x: Tensor, t: Tensor, h: float, n_steps: int, snr: float,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]: ...


class EulerMaruyamaPredictor:
    """x_mean = x - [f(x, t) - g(t)^2 s(x, t)] h, x = x_mean + g(t) sqrt(h) z: Euler–Maruyama on eq. 6 of Song et al. (2021)."""

    evals = 1

    def step(self, sde, score, x, t, h, generator):
        g = sde.g(t)
        x_w = x.to(work_dtype(x))  # the VP's f h = beta h x / 2 is below a bfloat16 x's half ulp (t < 0.2, h = 1e-3)
        x_mean = x_w - sde.f(x_w, t) * h + wide_view(g * g * h, x) * score(x, t.to(x.dtype))
        x_next = x_mean + wide_view(g * math.sqrt(h), x) * _randn_like(x, generator)
        return x_next.to(x.dtype), x_mean.to(x.dtype)


class ReverseDiffusionPredictor:
    """x_mean = x - f_i + G_i^2 s(x, t), x = x_mean + G_i z, with (f_i, G_i) = sde.discretize (Song et al. 2021, eq. 46)."""

    evals = 1

    def step(self, sde, score, x, t, h, generator):
        x_w = x.to(work_dtype(x))  # f_i, as Euler–Maruyama's f h, is below a half-precision x's half ulp
        f_i, G_i = sde.discretize(x_w, t, dt=h)
        x_mean = x_w - f_i + wide_view(G_i * G_i, x) * score(x, t.to(x.dtype))
        x_next = x_mean + wide_view(G_i, x) * _randn_like(x, generator)
        return x_next.to(x.dtype), x_mean.to(x.dtype)


class AncestralSamplingPredictor:
    """Exact Gaussian posterior of the discrete chain on the grid, with x0 from Tweedie's formula.

    For the step from t to s = t - h, with a = alpha(t) / alpha(s) and b^2 = std(t)^2 - a^2 std(s)^2 (the
    transition x_t = a x_s + b z of the kernel's Markov chain), the posterior q(x_s | x_t, x0 = E[x0 | x_t]) has
    mean (x + b^2 s(x, t)) / a and variance b^2 std(s)^2 / std(t)^2. For the VE-SDE this is SMLD's ancestral step
    (Song et al. 2021, eq. 47); for the VP-SDE it is DDPM's (Ho et al. 2020, eq. 7, with the posterior variance beta-tilde).
    """

    evals = 1

    def step(self, sde, score, x, t, h, generator):
        alpha_t, std_t = sde.kernel(t)
        alpha_s, std_s = sde.kernel(t - h)
        a = alpha_t / alpha_s
        b2 = std_t**2 - (a * std_s) ** 2
        x_mean = (x + wide_view(b2, x) * score(x, t.to(x.dtype))) / wide_view(a, x)
        noise_std = torch.sqrt(b2.clamp(min=0.0)) * std_s / std_t
        x_next = x_mean + wide_view(noise_std, x) * _randn_like(x, generator)
        return x_next.to(x.dtype), x_mean.to(x.dtype)


class NonePredictor:
    """No predictor step: corrector-only sampling (annealed Langevin dynamics when the corrector is Langevin).

    `pc_sample` then runs its corrector at every point of the grid, eps included (`corrector_only` says so).
    """

    evals = 0
    corrector_only = True

    def step(self, sde, score, x, t, h, generator):
        return x, x


class LangevinCorrector:
    """Langevin MCMC at fixed t with the step size of the signal-to-noise rule (Song et al. 2021, algorithms 4–5).

    epsilon = 2 alpha_i (snr ||z|| / ||s(x, t)||)^2, x_mean = x + epsilon s, x = x_mean + sqrt(2 epsilon) z,
    with alpha_i = (alpha(t) / alpha(t - h))^2 (1 - beta_i for the VP-SDE, 1 for the VE-SDE). The norms are
    averaged over the batch, as in the reference implementation: the rule targets the expected norms, and a
    per-sample ||s|| near a mode is so small in low dimension that the step it gives diverges.

    So the step size depends on the batch: the snr rule follows Song et al.'s reference, which averages over the
    batch, and is meant for batches of many samples. With a batch of one, ||z|| and ||s|| are those of one draw, the
    step size fluctuates from step to step and the law sampled is wrong (VE-SDE, N(0, I) data in 2-D, 100 steps,
    snr = 0.16: a standard deviation of 2.5 to 3.9 instead of 1 at B = 1, 1.1 at B = 4, 1.02 at B = 16). With small
    batches, draw the samples in one larger batch, or use corrector='none' or `AnnealedLangevinCorrector`, whose
    step size does not depend on the batch.
    """

    def evals(self, n_steps: int) -> int:
        return n_steps

    def step(self, sde, score, x, t, h, n_steps, snr, generator):
        alpha_t, _ = sde.kernel(t)
        alpha_s, _ = sde.kernel(t - h)
        alpha_i = wide_view((alpha_t / alpha_s) ** 2, x)
        dtype = work_dtype(x)  # a half-precision sum of squares overflows, and so does the VE step size ~ sigma^2
        x_mean = x
        for _ in range(n_steps):
            grad = score(x, t.to(x.dtype))
            z = _randn_like(x, generator)
            grad_norm = torch.linalg.vector_norm(grad.flatten(1), dim=1, dtype=dtype).mean()
            noise_norm = torch.linalg.vector_norm(z.flatten(1), dim=1, dtype=dtype).mean()
            # a score that is zero on the whole batch (a freshly initialised network) has no step size: skip
            step_size = 2 * alpha_i * torch.where(grad_norm > 0, snr * noise_norm / grad_norm, 0.0) ** 2
            x_mean = x + step_size * grad
            x = (x_mean + torch.sqrt(2 * step_size) * z).to(x.dtype)
        return x, x_mean.to(x.dtype)


class NoneCorrector:
    """No corrector step."""

    def evals(self, n_steps: int) -> int:
        return 0

    def step(self, sde, score, x, t, h, n_steps, snr, generator):
        return x, x


PREDICTORS: dict[str, Predictor] = {
    "euler_maruyama": EulerMaruyamaPredictor(),
    "reverse_diffusion": ReverseDiffusionPredictor(),
    "ancestral_sampling": AncestralSamplingPredictor(),
    "none": NonePredictor(),
}
CORRECTORS: dict[str, Corrector] = {"langevin": LangevinCorrector(), "none": NoneCorrector()}


def pc_sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int] | None,
    *,
    predictor: str | Predictor = "reverse_diffusion",
    corrector: str | Corrector = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    steps: int = 1000,
    eps: float = 1e-3,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> SampleResult:
    """Predictor–corrector sampling from the reverse-time SDE (Song et al. 2021, algorithm 1).

    Runs `steps` predictor steps on the uniform grid linspace(T, eps, steps + 1), each preceded by
    `n_corrector_steps` corrector steps at the same time. With denoise=True the last predictor step adds no
    noise (the reference's "noise removal"). Without a predictor ('none', or one whose `corrector_only` is True) the
    corrector runs at all steps + 1 points, eps included, as the reference runs it at every point of its grid:
    annealed Langevin dynamics over steps + 1 levels. Starts from x_T if given, else from
    `sde.prior_sampling(shape)`.

    Args:
        sde: the forward SDE.
        score_fn: score(x, t) with x of shape (B, *dims) and t of shape (B,), returning x's shape.
        shape: (B, *dims) of the samples (None when x_T is given).
        predictor: a name from PREDICTORS, or an object with the same interface (`evals`, `step`).
        corrector: a name from CORRECTORS, or an object with the same interface (`evals`, `step`).
        snr: signal-to-noise ratio r of the Langevin step-size rule.
        n_corrector_steps: corrector steps at each time (0: none).
        steps: intervals of the grid.
        eps: the final time, in (0, T).
        denoise: the last predictor step adds no noise (returns its mean); no effect without a predictor.
        generator: the source of every draw (the prior's too when x_T is not given).
        x_T: (B, *dims) the starting state; else drawn from the prior.
        dtype: of the prior draw, when x_T is not given (x_T's own is used otherwise).
        device: of the prior draw, likewise.
    Returns:
        SampleResult(x of shape (B, *dims) at t = eps, nfe score evaluations).
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
    predictor = check_choice("predictor", predictor, PREDICTORS, ("evals", "step"))
    corrector = check_choice("corrector", corrector, CORRECTORS, ("evals", "step"))
    snr = check_real("snr", snr, positive=True)
    n_corrector_steps = check_int("n_corrector_steps", n_corrector_steps, minimum=0)
    steps = check_int("steps", steps, minimum=1)
    # a custom method's counts are read now, not after the whole loop
    predictor_evals = check_int("predictor.evals", predictor.evals, minimum=0)
    if not callable(corrector.evals):
        raise TypeError(
            f"corrector.evals must be a method evals(n_steps) -> int (score evaluations per call of step), got "
            f"{type(corrector.evals).__name__} {corrector.evals!r}."
        )
    corrector_evals = check_int("corrector.evals(n_corrector_steps)", corrector.evals(n_corrector_steps), minimum=0)
    if shape is not None:
        shape = tuple(check_numbers("shape", shape, Integral, "a sequence (batch, *dims) of positive integers or None"))
    eps = check_eps(eps, sde.T)
    denoise = check_bool("denoise", denoise)
    if x_T is None:
        if shape is None:
            raise ValueError("pass shape=(B, *dims) or x_T.")
        generator = check_generator(generator, torch.device(device or "cpu"))
        x = sde.prior_sampling(shape, generator=generator, dtype=dtype, device=device)
    else:
        x = check_data("x_T", x_T)
        if shape is not None and shape != tuple(x.shape):
            raise ValueError(f"shape {shape} disagrees with x_T of shape {tuple(x.shape)}; pass one of them.")
        if dtype is not None or device is not None:
            raise ValueError(
                f"dtype and device apply to the prior draw; with x_T given, its own ({x.dtype}, {x.device}) are used, "
                f"got dtype={dtype}, device={device}: leave them out."
            )
        generator = check_generator(generator, x.device)
    score = CheckedScore(score_fn)
    B = x.shape[0]
    grid = torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64).tolist()
    x_mean = x
    for i in range(steps):
        t = torch.full((B,), grid[i], dtype=torch.float64, device=x.device)
        h = grid[i] - grid[i + 1]
        x, x_mean = corrector.step(sde, score, x, t, h, n_corrector_steps, snr, generator)
        x, x_mean = predictor.step(sde, score, x, t, h, generator)
    if getattr(predictor, "corrector_only", False):  # no predictor: the last level, eps, too; its step h reaches down to 0 at most
        t = torch.full((B,), eps, dtype=torch.float64, device=x.device)
        x, _ = corrector.step(sde, score, x, t, min(grid[-2] - eps, eps), n_corrector_steps, snr, generator)
        x_mean = x
    x = x_mean if denoise else x
    per_step = predictor_evals + corrector_evals

    def step_of(k: int, t: float) -> int:
        return k // per_step if per_step else 0

    score.raise_if_nonfinite(x, "pc_sample", step_of)
    return SampleResult(x=x, nfe=score.nfe)
