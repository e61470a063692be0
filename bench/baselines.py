"""Peers for bench/samplers.py: the sampling recipes of score_sde_pytorch re-implemented as that code runs them,
and diffusers' ScoreSdeVeScheduler driven through its public API.

These are baselines, not sdescore samplers: each keeps the conventions of its origin (discrete noise tables
indexed by time, numpy round trips) so the benchmark measures what a user of those codebases gets. All take
score_fn(x, t) with t in the SDE's time and return sdescore's SampleResult, so the benchmark loops over them
like over sdescore's samplers.

- `score_sde_pc_sample`: sampling.py's get_pc_sampler with ReverseDiffusionPredictor + LangevinCorrector
  (Song et al. 2021, algorithms 2–5): N steps on torch.linspace(T, eps, N), the SDE discretized with N noise
  levels (sde_lib's `discretize`: discrete sigmas for VE, discrete betas for VP), snr 0.16, one corrector step,
  noise removal on the last step. nfe = 2 N.
- `score_sde_ode_sample`: get_ode_sampler: scipy.integrate.solve_ivp (RK45, rtol = atol = 1e-5 by default)
  on the flattened numpy state, converting to torch and back at every evaluation; nfe = solution.nfev.
- `diffusers_ve_pc_sample`: diffusers' ScoreSdeVeScheduler as its ScoreSdeVePipeline uses it (step_correct,
  then step_pred, returning prev_sample_mean); VE only. Needs `import diffusers`.

Deliberate departures, for a fair comparison: the states stay in the caller's dtype (float64 here) where
score_sde casts to float32, and diffusers' final clamp to [0, 1] (images) is not applied.
"""

from __future__ import annotations

import math

import torch
from scipy import integrate

import sdescore as sds
from sdescore import SampleResult
from sdescore.sde import batch_view

__all__ = ["score_sde_pc_sample", "score_sde_ode_sample", "diffusers_ve_pc_sample", "diffusers_available"]


def _discretize(sde, N: int, x: torch.Tensor, t: torch.Tensor):
    """sde_lib's discretize with the SDE's N set to the number of sampling steps: (f, G) of the discrete chain."""
    timestep = (t * (N - 1) / sde.T).long()
    if isinstance(sde, sds.VESDE):
        sigmas = torch.exp(torch.linspace(math.log(sde.sigma_min), math.log(sde.sigma_max), N, dtype=torch.float64))
        sigma = sigmas[timestep]
        adjacent = torch.where(timestep == 0, torch.zeros_like(sigma), sigmas[(timestep - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sigma**2 - adjacent**2), torch.ones_like(sigma)
    if isinstance(sde, sds.VPSDE):
        betas = torch.linspace(sde.beta_min / N, sde.beta_max / N, N, dtype=torch.float64)
        alpha = (1.0 - betas)[timestep]
        return batch_view(torch.sqrt(alpha), x) * x - x, torch.sqrt(betas[timestep]), alpha
    raise NotImplementedError("score_sde_pytorch's PC sampler covers VE and VP here (as its Langevin corrector).")


def score_sde_pc_sample(
    sde,
    score_fn,
    x_T: torch.Tensor,
    *,
    steps: int,
    eps: float,
    snr: float = 0.16,
    n_steps_each: int = 1,
    denoise: bool = True,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """get_pc_sampler(ReverseDiffusionPredictor, LangevinCorrector) of score_sde_pytorch with N = steps."""
    x = x_T.clone()
    B = x.shape[0]
    timesteps = torch.linspace(sde.T, eps, steps, dtype=torch.float64)
    nfe = 0
    x_mean = x
    for i in range(steps):
        t = torch.full((B,), float(timesteps[i]), dtype=torch.float64)
        f, G, alpha = _discretize(sde, steps, x, t)
        for _ in range(n_steps_each):  # LangevinCorrector
            grad = score_fn(x, t.to(x.dtype))
            nfe += 1
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            grad_norm = torch.norm(grad.reshape(B, -1), dim=-1).mean()
            noise_norm = torch.norm(noise.reshape(B, -1), dim=-1).mean()
            step_size = batch_view((snr * noise_norm / grad_norm) ** 2 * 2 * alpha, x)
            x_mean = x + step_size * grad
            x = x_mean + torch.sqrt(step_size * 2) * noise
        f, G, alpha = _discretize(sde, steps, x, t)  # ReverseDiffusionPredictor: rev_f = f - G^2 score
        score = score_fn(x, t.to(x.dtype))
        nfe += 1
        G = batch_view(G, x)
        x_mean = x - (f - G * G * score)
        x = x_mean + G * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return SampleResult(x=x_mean if denoise else x, nfe=nfe)


def score_sde_ode_sample(
    sde, score_fn, x_T: torch.Tensor, *, eps: float, rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45"
) -> SampleResult:
    """get_ode_sampler of score_sde_pytorch: scipy's solve_ivp on numpy, drift f - g^2 score / 2 from T to eps."""
    shape, dtype = x_T.shape, x_T.dtype

    def ode_func(t, y):
        x = torch.from_numpy(y.reshape(shape)).to(dtype)
        vec_t = torch.full((shape[0],), t, dtype=torch.float64)
        g = sde.g(vec_t)
        drift = sde.f(x, vec_t) - 0.5 * batch_view(g * g, x) * score_fn(x, vec_t.to(dtype))
        return drift.reshape(-1).numpy()

    solution = integrate.solve_ivp(ode_func, (sde.T, eps), x_T.reshape(-1).numpy(), rtol=rtol, atol=atol, method=method)
    x = torch.tensor(solution.y[:, -1]).reshape(shape).to(dtype)
    return SampleResult(x=x, nfe=int(solution.nfev))


def diffusers_available() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def diffusers_ve_pc_sample(
    sde, score_fn, x_T: torch.Tensor, *, steps: int, eps: float, generator: torch.Generator | None = None
) -> SampleResult:
    """ScoreSdeVePipeline's loop over diffusers' ScoreSdeVeScheduler (library defaults: snr 0.15, one correction).

    The scheduler conditions the model on the noise level sigma; the wrapper maps it to the SDE's time.
    """
    from diffusers import ScoreSdeVeScheduler

    if not isinstance(sde, sds.VESDE):
        raise NotImplementedError("ScoreSdeVeScheduler is the VE-SDE's sampler.")
    scheduler = ScoreSdeVeScheduler(
        num_train_timesteps=steps, sigma_min=sde.sigma_min, sigma_max=sde.sigma_max, sampling_eps=eps
    )
    scheduler.set_timesteps(steps, sampling_eps=eps)
    scheduler.set_sigmas(steps, sde.sigma_min, sde.sigma_max, eps)
    B = x_T.shape[0]
    nfe = 0

    def model(sample, sigma):
        nonlocal nfe
        nfe += 1
        t = sde.t_from_log_snr(-2.0 * torch.log(sigma.to(torch.float64))).clamp(0.0, sde.T)
        return score_fn(sample, t.to(sample.dtype))

    sample = x_T.clone()
    sample_mean = sample
    for i, t in enumerate(scheduler.timesteps):
        sigma_t = scheduler.sigmas[i] * torch.ones(B)
        for _ in range(scheduler.config.correct_steps):
            sample = scheduler.step_correct(model(sample, sigma_t), sample, generator=generator).prev_sample
        output = scheduler.step_pred(model(sample, sigma_t), t, sample, generator=generator)
        sample, sample_mean = output.prev_sample, output.prev_sample_mean
    return SampleResult(x=sample_mean.to(x_T.dtype), nfe=nfe)
