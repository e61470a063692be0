"""Score-matching objectives: denoising, epsilon, implicit, sliced and NCSN's multi-level loss.

Conventions held by every loss here:

- The per-sample value is lambda * ||residual||^2 / 2, summed over the non-batch dimensions (the 1/2 of
  Hyvärinen 2005, Vincent 2011 and Song & Ermon 2019 eq. 5; Song et al. 2021 eq. 7 omits it). `reduce` chooses the
  batch reduction through `REDUCTIONS`: 'mean' (default), 'sum', or 'none' for the (B,) per-sample values.
- Time-conditioned models are called score_fn(x, t) with t of shape (B,) in x's dtype; times are drawn and
  the SDE's coefficients computed in float64.
- Half-precision data (float16, bfloat16) gives a float32 loss, as autocast's losses are: the residual is formed
  and its squares summed over the D dimensions in float32, and the weights (std^2, g^2 / std^2, up to 1e5 at
  t = 1e-5) are applied in float32. In float16 a sum of D squares overflows from D of a few thousand, and the
  VE-SDE's std(t) reaches 378 and more. The model still sees x_t and t in the data's dtype. float32 and float64
  data keep their dtype (or the model output's, if wider).
- `ism_loss` and `ssm_loss` are objectives for the score of ONE law: score_fn(x) of x alone, called once on the
  B rows of x. To apply them to a noise-conditional model at a fixed time, pass `lambda x: score_fn(x, t)`.
- `ncsn_loss` takes NCSN's sigma-conditioned model score_fn(x, sigma), sigma of shape (B,).
- Every random draw uses `generator`, in a fixed order (times or labels, then noise). `eps_loss` and `dsm_loss`
  draw the same way, so given the same generator state they see the same times and noise and agree value for
  value. `ncsn_loss` draws integer labels (randint) where `dsm_loss` draws continuous times (rand), so their
  draws differ; it equals `dsm_loss` value for value given the same labels (as `t=`, the grid times of the
  labels) and the same `noise=`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from ._checks import (
    check_bool,
    check_callable,
    check_choice,
    check_data,
    check_eps,
    check_generator,
    check_int,
    check_like,
    check_output,
    check_sigmas,
    check_time,
)
from .sde import SDE, wide_view, work_dtype

__all__ = [
    "dsm_loss",
    "eps_loss",
    "ism_loss",
    "ssm_loss",
    "ncsn_loss",
    "Weighting",
    "Sigma2Weighting",
    "LikelihoodWeighting",
    "NoWeighting",
    "WEIGHTINGS",
    "REDUCTIONS",
    "PROJECTIONS",
]

Fn = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------------------- weightings
class Weighting(Protocol):
    """lambda(t) of the continuous DSM objective, shape (B,), for t of shape (B,) in float64."""

    def __call__(self, sde: SDE, t: Tensor) -> Tensor: ...


class Sigma2Weighting:
    """lambda(t) = std(t)^2, NCSN's choice (Song & Ermon 2019, eq. 6): the loss becomes ||std s + z||^2 / 2.

    Makes lambda(t) E||s + z/std||^2 of order one at every t (Song et al. 2021, section 3.3).
    """

    def __call__(self, sde: SDE, t: Tensor) -> Tensor:
        _, std = sde.kernel(t)
        return std * std

    def __repr__(self) -> str:
        return "Sigma2Weighting()"


class LikelihoodWeighting:
    """lambda(t) = g(t)^2, the likelihood weighting of Song et al. (2021b, theorem 1).

    With it, (T - eps) times the DSM loss, plus a constant and the prior's KL term, bounds the negative
    log-likelihood of the probability-flow / reverse-SDE model. Pair it with `importance_sampling=True`.
    """

    def __call__(self, sde: SDE, t: Tensor) -> Tensor:
        g = sde.g(t)
        return g * g

    def __repr__(self) -> str:
        return "LikelihoodWeighting()"


class NoWeighting:
    """lambda(t) = 1: plain denoising score matching (Vincent 2011) averaged over t."""

    def __call__(self, sde: SDE, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def __repr__(self) -> str:
        return "NoWeighting()"


WEIGHTINGS: dict[str, Weighting] = {
    "sigma2": Sigma2Weighting(),
    "likelihood": LikelihoodWeighting(),
    "none": NoWeighting(),
}

REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": torch.mean,
    "sum": torch.sum,
    "none": lambda loss: loss,
}


def _rademacher(shape, generator, dtype, device) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1


def _gaussian(shape, generator, dtype, device) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


# Projection laws of sliced score matching: any law with E[v v^T] = I (Song et al. 2019, section 3).
PROJECTIONS: dict[str, Callable[..., Tensor]] = {"gaussian": _gaussian, "rademacher": _rademacher}


# ---------------------------------------------------------------------------------------------- helpers
def _resolve(name: str, value: Any, registry: dict) -> Any:
    value = check_choice(name, value, registry)
    if not callable(value):
        raise TypeError(f"{name} must be one of {sorted(registry)} or a callable, got {type(value).__name__}.")
    return value


def _evaluate(fn: Callable, x: Tensor, *cond: Tensor, name: str) -> Tensor:
    # no dtype rule: a network under autocast (train(bf16=True)) returns its lower precision into the loss
    return check_output(name, fn(x, *cond), x, dtype=False)


def _sum_sq(r: Tensor) -> Tensor:
    """||r_b||^2 per sample, shape (B,): in float32 for a half-precision r, whose sum over D dimensions overflows."""
    return r.to(work_dtype(r)).pow(2).flatten(1).sum(1)


def _draw_times(
    sde: SDE, B: int, eps: float, generator: torch.Generator | None, device: torch.device, importance_sampling: bool
) -> tuple[Tensor, Tensor | None]:
    """t ~ U(eps, T), or t uniform in log-SNR with its importance weight p_U(t) / q(t).

    The proposal draws lambda = log-SNR uniformly on [lambda(T), lambda(eps)] and maps it back through
    `sde.t_from_log_snr`: its density is q(t) = |lambda'(t)| / (lambda(eps) - lambda(T)). For the Gaussian
    kernel of an SDE with affine drift, d(std^2)/dt = 2 f std^2 + g^2 and d(alpha)/dt = f alpha give
    lambda'(t) = -g(t)^2 / std(t)^2, so q is proportional to g^2 / std^2: the proposal of Song et al. (2021b,
    section 5.1) that turns the likelihood-weighted loss g^2 ||s + z/std||^2 into a bounded multiple of
    ||std s + z||^2. The weight p_U / q = Z std^2 / ((T - eps) g^2), Z = lambda(eps) - lambda(T), keeps the
    estimator unbiased for any weighting.
    """
    u = torch.rand(B, generator=generator, dtype=torch.float64, device=device)
    if not importance_sampling:
        return eps + (sde.T - eps) * u, None
    ends = torch.tensor([sde.T, eps], dtype=torch.float64, device=device)
    lam_T, lam_eps = sde.log_snr(ends).tolist()
    if not lam_eps > lam_T:
        raise ValueError(
            f"importance sampling needs a log-SNR that decreases on [eps, T]; {type(sde).__name__} gives "
            f"lambda(eps)={lam_eps}, lambda(T)={lam_T}."
        )
    # decreasing in u, so t increases with u: for the VE-SDE (log-SNR linear in t) this is the plain draw.
    t = sde.t_from_log_snr(lam_eps - (lam_eps - lam_T) * u).clamp(eps, sde.T)
    _, std = sde.kernel(t)
    g = sde.g(t)
    weight = (lam_eps - lam_T) * (std * std) / ((sde.T - eps) * (g * g))  # |lambda'(t)| = g^2 / std^2
    return t, weight


def _noised(
    sde: SDE, x0: Any, eps: Any, t: Any, noise: Any, generator: Any, importance_sampling: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Shared draws of dsm_loss and eps_loss: (x0, t, x_t, z, std, importance weight or None)."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
    x0 = check_data("x0", x0)
    eps = check_eps(eps, sde.T)
    generator = check_generator(generator, x0.device)
    B = x0.shape[0]
    if t is None:
        t, weight = _draw_times(sde, B, eps, generator, x0.device, importance_sampling)
    else:
        if importance_sampling:
            raise ValueError("importance_sampling draws the times; pass t=None with it, or importance_sampling=False.")
        t = check_time("t", t, B, sde.T).to(torch.float64)
        weight = None
    if noise is None:
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    else:
        z = check_like("noise", noise, x0, "x0")
    alpha, std = sde.kernel(t)
    if not bool((std > 0).all()):
        raise ValueError("the kernel's std(t) must be > 0 for DSM's target -z / std; use t > 0.")
    x_t = (wide_view(alpha, x0) * x0 + wide_view(std, x0) * z).to(x0.dtype)  # rounded once to the model's input dtype
    return x0, t, x_t, z, std, weight


# ---------------------------------------------------------------------------------------------- DSM
def dsm_loss(
    sde: SDE,
    score_fn: Fn,
    x0: Tensor,
    *,
    weighting: str | Weighting = "sigma2",
    eps: float = 1e-5,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
    importance_sampling: bool = False,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Continuous-time denoising score matching: E_t E_{x0, z} [lambda(t) ||s(x_t, t) + z / std(t)||^2 / 2].

    Song et al. (2021), eq. 7, with Vincent's (2011) denoising target: x_t = alpha(t) x0 + std(t) z from the
    SDE's kernel, whose score is -z / std(t). t ~ U(eps, T), so the loss estimates the average over t, not
    the integral. Per sample it is computed as (lambda / std^2) ||std s + z||^2 / 2, summed over dimensions.

    Args:
        sde: the forward SDE; must have a Gaussian `kernel`.
        score_fn: score(x, t), x (B, *dims), t (B,) in x's dtype.
        x0: clean data (B, *dims).
        weighting: a name in WEIGHTINGS ('sigma2': std^2; 'likelihood': g^2, Song et al. 2021b; 'none': 1)
            or an object lambda(sde, t) -> tensor of shape (B,) (any other shape raises a ValueError).
        eps: smallest time.
        reduce: 'mean' | 'sum' | 'none' (per-sample values of shape (B,)).
        generator: draws t (first) and z (second).
        importance_sampling: draw t uniformly in log-SNR (density proportional to g^2 / std^2, Song et al.
            2021b) and reweight by p_U(t) / q(t): an unbiased estimator of the same quantity whose variance is
            far lower for the likelihood weighting.
        t: fixed times (B,) instead of drawn ones (a fixed-time objective, or exact comparisons).
        noise: fixed z shaped like x0 instead of a drawn one.
    Returns:
        The reduced loss (scalar), or per-sample values (B,) with reduce='none'; float32 for half-precision x0
        (the residual, its sum over dimensions and the weight are formed in float32), else x0's dtype.
    """
    weighting = _resolve("weighting", weighting, WEIGHTINGS)
    reduction = _resolve("reduce", reduce, REDUCTIONS)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    importance_sampling = check_bool("importance_sampling", importance_sampling)
    x0, t, x_t, z, std, weight = _noised(sde, x0, eps, t, noise, generator, importance_sampling)
    s = _evaluate(score_fn, x_t, t.to(x0.dtype), name="score_fn")
    w = weighting(sde, t)
    if not isinstance(w, Tensor) or w.shape != t.shape:
        got = f"shape {tuple(w.shape)}" if isinstance(w, Tensor) else type(w).__name__
        raise ValueError(
            f"weighting returned {got} for t of shape {tuple(t.shape)}; lambda(sde, t) has one value per sample, "
            f"shape {tuple(t.shape)} (a (B, 1) output would broadcast the loss to (B, B))."
        )
    w = w / (std * std)
    if weight is not None:
        w = w * weight
    r = wide_view(std, x_t) * s + z  # float32 for half-precision data: std reaches 378 and more for the VE-SDE
    loss = 0.5 * _sum_sq(r) * w.to(work_dtype(r))
    return reduction(loss)


def eps_loss(
    sde: SDE,
    eps_fn: Fn,
    x0: Tensor,
    *,
    eps: float = 1e-5,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Noise-prediction loss ||eps_fn(x_t, t) - z||^2 / 2, t ~ U(eps, T): DDPM's simple loss (Ho et al. 2020, eq. 14).

    Carries the factor 1/2 of every loss of sdescore and sums over dimensions (Ho et al. average over them
    without the 1/2: their L_simple is 2 / D times this). With that convention it equals
    `dsm_loss(sde, score_from_eps(sde, eps_fn), x0, weighting='sigma2')` value for value under the same
    generator state, since std^2 ||s + z/std||^2 = ||-eps + z||^2 for s = -eps / std.

    Args: as `dsm_loss`; eps_fn(x, t) predicts the noise z, shaped like x. Returns as `dsm_loss` (float32 for
    half-precision x0).
    """
    reduction = _resolve("reduce", reduce, REDUCTIONS)
    check_callable("eps_fn", eps_fn, "eps_fn(x, t)")
    x0, t, x_t, z, _, _ = _noised(sde, x0, eps, t, noise, generator, False)
    e = _evaluate(eps_fn, x_t, t.to(x0.dtype), name="eps_fn")
    return reduction(0.5 * _sum_sq(e - z))


# ---------------------------------------------------------------------------------------------- ISM, SSM
def _leaf_for_derivatives(x: Tensor, where: str) -> tuple[Tensor, bool]:
    """(a leaf copy of x that requires grad, whether the loss keeps its graph): under torch.no_grad() the loss is the
    value alone, its x-derivatives taken without a graph. Inference mode is refused: torch.enable_grad() does not
    lift it, so the x-derivatives would be missing and the loss wrong."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{where} cannot run under torch.inference_mode(): its trace term differentiates the score with respect to "
            "x by autograd. Call it under torch.no_grad() for a value without a graph, or with grad enabled to train."
        )
    # an inference tensor (made under inference mode earlier) cannot be detached into a leaf: copy it
    leaf = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
    return leaf, torch.is_grad_enabled()


def _check_attached(s: Tensor | None, where: str) -> None:
    """Refuse a score that autograd does not connect to x (s = None: x is not in s's graph): its trace term
    would silently be 0 and the loss ||s||^2 / 2, which training minimises by pushing s to 0. Consistent with
    `log_likelihood`, a score constant in x is refused too."""
    if s is None or not s.requires_grad:
        raise TypeError(
            f"{where}: score_fn's output does not depend on x through autograd (it does not require grad, or x is "
            "not in its graph): is score_fn wrapped in torch.no_grad() or torch.inference_mode(), does it detach x "
            f"(a network applied to x.detach()), or is it constant in x? The trace term differentiates the score "
            "with respect to x; remove the wrapper or the detach (the loss itself may be called under "
            "torch.no_grad()). A score meant to be constant in x must still be computed from x (e.g. c + 0 * x)."
        )


def ism_loss(score_fn: Callable[[Tensor], Tensor], x: Tensor, *, reduce: str = "mean") -> Tensor:
    """Implicit score matching E[tr(grad_x s(x)) + ||s(x)||^2 / 2] with the exact trace (Hyvärinen 2005, eq. 4).

    Equals E||s - grad log p||^2 / 2 minus the constant E||grad log p||^2 / 2, without knowing p. The trace costs
    D backward passes (D = number of dimensions): use it for small D, `ssm_loss` otherwise. With grad enabled the
    loss keeps its graph (create_graph), so it can be minimised; under torch.no_grad() it is the value alone.
    score_fn must treat the samples of a batch independently.

    Args:
        score_fn: score(x) of x alone, x (B, *dims); for a model at a fixed time pass `lambda x: model(x, t)`.
            Must be differentiable in x by autograd (TypeError otherwise: not under torch.no_grad(), not on
            x.detach(), not constant in x).
        x: samples of the data law (B, *dims).
        reduce: 'mean' | 'sum' | 'none'.
    """
    reduction = _resolve("reduce", reduce, REDUCTIONS)
    check_callable("score_fn", score_fn, "score_fn(x)")
    x = check_data("x", x)
    x, graph = _leaf_for_derivatives(x, "ism_loss")
    with torch.enable_grad():  # the loss is made of x-derivatives, whatever the caller's grad mode
        s = _evaluate(score_fn, x, name="score_fn").flatten(1)
        _check_attached(s, "ism_loss")
        trace = torch.zeros(x.shape[0], dtype=work_dtype(s), device=s.device)
        reached = False
        for i in range(s.shape[1]):
            (row,) = torch.autograd.grad(s[:, i].sum(), x, create_graph=graph, retain_graph=True, allow_unused=True)
            if row is not None:  # None: component i does not reach x, d s_i / d x_i = 0
                reached = True
                trace = trace + row.flatten(1)[:, i]
        if not reached:  # no component reaches x: a network applied to x.detach(), or one that ignores x
            _check_attached(None, "ism_loss")
        loss = reduction(trace + 0.5 * _sum_sq(s))
    return loss if graph else loss.detach()


def ssm_loss(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    n_projections: int = 1,
    *,
    projection: str | Callable[..., Tensor] = "gaussian",
    variance_reduction: bool = True,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced score matching E_v E_x[v^T (grad_x s) v + (v^T s)^2 / 2] (Song et al. 2019, eq. 6).

    v^T (grad_x s) v comes from one vector-Jacobian product per projection, so the cost does not grow with D.
    With variance_reduction=True the second term is its expectation over v, ||s||^2 / 2 (SSM-VR, eq. 8). In
    expectation over v (any law with E[v v^T] = I) it equals `ism_loss`.

    score_fn is called once, on the B rows of x (so `lambda x: model(x, t)` with t of shape (B,) works for any
    n_projections); the M projections share that evaluation and each adds one backward pass through it.

    Args:
        score_fn: score(x) of x alone, x (B, *dims); differentiable in x by autograd, as for `ism_loss`.
        x: samples of the data law (B, *dims).
        n_projections: M projections per sample, averaged.
        projection: 'gaussian' | 'rademacher' (PROJECTIONS), or a callable (shape, generator, dtype, device) -> v
            returning a tensor of the given shape (M B, *dims) and x's dtype; block m (rows m B .. (m + 1) B - 1)
            holds projection m of every sample.
        variance_reduction: use ||s||^2 / 2 for the second term.
        reduce: 'mean' | 'sum' | 'none'.
        generator: draws the projections v.
    """
    reduction = _resolve("reduce", reduce, REDUCTIONS)
    draw = _resolve("projection", projection, PROJECTIONS)
    check_callable("score_fn", score_fn, "score_fn(x)")
    variance_reduction = check_bool("variance_reduction", variance_reduction)
    M = check_int("n_projections", n_projections, minimum=1)
    x = check_data("x", x)
    x, graph = _leaf_for_derivatives(x, "ssm_loss")
    generator = check_generator(generator, x.device)
    B = x.shape[0]
    shape = (M * B, *x.shape[1:])
    v = draw(shape, generator, x.dtype, x.device)
    if not isinstance(v, Tensor) or v.shape != shape or v.dtype != x.dtype:
        got = f"shape {tuple(v.shape)} {v.dtype}" if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(
            f"projection must return v of the requested shape {shape} and x's dtype {x.dtype}, got {got}; a v that "
            "broadcasts would change the estimator."
        )
    v = v.reshape(M, *x.shape)
    with torch.enable_grad():
        s = _evaluate(score_fn, x, name="score_fn")
        _check_attached(s, "ssm_loss")
        w = work_dtype(s)  # float32 for half precision: products rounded to it would cost v^T s its digits
        sv = (s.to(w) * v.to(w)).flatten(2).sum(2)  # (M, B): s broadcast over the M projections

        def vJv(m: int) -> Tensor:  # v_m^T (d s / d x) v_m, one backward pass through the shared evaluation
            (Jv,) = torch.autograd.grad(sv[m].sum(), x, create_graph=graph, retain_graph=True, allow_unused=True)
            if Jv is None:  # s does not reach x in autograd's graph (v_m only scales it): a network on x.detach()
                _check_attached(None, "ssm_loss")
            return (Jv.to(w) * v[m].to(w)).flatten(1).sum(1)

        first = torch.stack([vJv(m) for m in range(M)]).mean(0)
        last = 0.5 * _sum_sq(s) if variance_reduction else (0.5 * sv * sv).mean(0)
        loss = reduction(first + last)
    return loss if graph else loss.detach()


# ---------------------------------------------------------------------------------------------- NCSN
def _check_labels(labels: Any, B: int, L: int, device: torch.device) -> Tensor:
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        got = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise TypeError(f"labels must be an integer tensor of shape ({B},) indexing sigmas, got {got}.")
    if labels.shape != (B,):
        raise ValueError(f"labels must have shape ({B},), one noise-level index per sample, got {tuple(labels.shape)}.")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= L:
        raise ValueError(
            f"labels index sigmas of length L={L}, so they must lie in [0, {L - 1}]; got values in [{lo}, {hi}]. "
            "The labels disagree with the sigmas: pass the sigmas the labels were drawn for."
        )
    return labels.to(device=device, dtype=torch.long)


def ncsn_loss(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    sigmas: Any,
    labels: Tensor | None = None,
    *,
    noise: Tensor | None = None,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    """NCSN's objective: sigma_i^2 ||s(x0 + sigma_i z, sigma_i) + z / sigma_i||^2 / 2 with i ~ U{1..L}.

    Song & Ermon (2019), eq. 5–6 with lambda(sigma) = sigma^2, computed as ||sigma s + z||^2 / 2. It is the
    sigma2-weighted `dsm_loss` of the VE-SDE restricted to the grid t_i = (L - 1 - i) / (L - 1) (docs:
    theory/discrete_special_cases).

    Args:
        score_fn: NCSN model score(x, sigma), x (B, *dims), sigma (B,) in x's dtype.
        x0: clean data (B, *dims).
        sigmas: levels sigma_1 > ... > sigma_L > 0 (tensor (L,) or sequence), e.g. `ncsn_sigmas`.
        labels: 0-based indices (B,) into sigmas; drawn uniformly (first, from `generator`) when None.
        noise: fixed z shaped like x0; drawn (second) when None.
        reduce: 'mean' | 'sum' | 'none'.
    Returns:
        As `dsm_loss`: float32 for half-precision x0, else x0's dtype.
    """
    reduction = _resolve("reduce", reduce, REDUCTIONS)
    check_callable("score_fn", score_fn, "score_fn(x, sigma)")
    x0 = check_data("x0", x0)
    sigmas = check_sigmas("sigmas", sigmas, device=x0.device)
    generator = check_generator(generator, x0.device)
    B, L = x0.shape[0], sigmas.shape[0]
    if labels is None:
        labels = torch.randint(0, L, (B,), generator=generator, device=x0.device)
    else:
        labels = _check_labels(labels, B, L, x0.device)
    sigma = sigmas[labels]
    if noise is None:
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    else:
        z = check_like("noise", noise, x0, "x0")
    x_t = (x0 + wide_view(sigma, x0) * z).to(x0.dtype)
    s = _evaluate(score_fn, x_t, sigma.to(x0.dtype), name="score_fn")
    return reduction(0.5 * _sum_sq(wide_view(sigma, x_t) * s + z))
