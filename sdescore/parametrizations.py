"""Converters between the score, epsilon and denoiser (x0) parametrizations, exact by Tweedie's formula.

For a kernel x_t = alpha(t) x0 + std(t) eps with eps ~ N(0, I) (any `SDE.kernel`), Tweedie's formula
(Efron 2011; Vincent 2011) gives

    score(x, t) = (alpha(t) E[x0 | x_t = x] - x) / std(t)^2 = -E[eps | x_t = x] / std(t).

Everything inside sdescore speaks score_fn(x, t); networks that predict eps or x0 enter through these.
Each converter is a small callable object (x: (B, *dims), t: (B,) floating) -> tensor shaped like x; a call
checks the types and shapes of x, t and the wrapped function's output (raising a TypeError or ValueError that
names them), but not the values of t, which would cost a host synchronisation at every step of a sampler.

Precision: the kernel is computed at t in float64 and the coefficients are combined with the tensors in
`work_dtype(x)` (float32 for a half-precision x, x's dtype otherwise); only the result is rounded to x's dtype,
which it always has. In float16, std(t)^2, 1 / std(t)^2 or std(t) itself overflow or fall among the subnormals for
the VE-SDE's usual sigma_max (378 and above) although the converted quantity fits; and a t that arrives already
rounded to x's dtype (bfloat16 keeps three digits) costs no more than its own rounding. What no converter
restores is the network's own rounding where a formula cancels: (alpha D - x) / std^2 amplifies the rounding of D
by alpha / std^2, so below std(t) of about 0.02 a float16 denoiser leaves the score without a correct digit (an eps
or score network does not have this problem).

Domain: t in [0, T]. `score_from_eps` and `score_from_denoiser` divide by std(t), so they need std(t) > 0: at
t = 0 of the VP and sub-VP SDEs (std(0) = 0) no score follows from eps or x0 and they return inf or NaN, as the
formula does. The samplers never evaluate there (their times are >= eps > 0), and they raise NonFiniteError,
naming the time, wherever a score is not finite.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._checks import check_output

from .sde import SDE, wide_view, work_dtype

__all__ = [
    "score_from_eps",
    "eps_from_score",
    "score_from_denoiser",
    "denoiser_from_score",
]

Fn = Callable[[Tensor, Tensor], Tensor]


def _check_x(x: Tensor) -> None:
    """A converter's x: a floating tensor of shape (B, *dims) (its values are the caller's: no host read)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating tensor of shape (B, *dims), got {got}.")
    if x.ndim < 2:
        raise ValueError(f"x must be a floating tensor of shape (B, *dims), got shape {tuple(x.shape)}.")


class _Converter:
    """A parametrization expressed through another one and the SDE's kernel.

    Each call checks the types and shapes of x, t and the wrapped function's output, which costs no host
    synchronisation; the values of t are not read, since the samplers call converters at every step.
    """

    def __init__(self, sde: SDE, fn: Fn, name: str):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
        if not callable(fn):
            raise TypeError(f"{name} must be callable as {name}(x, t), got {type(fn).__name__}.")
        self.sde = sde
        self.fn = fn
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sde!r}, {self.fn!r})"

    def _check(self, x: Tensor, t: Tensor, t_name: str = "t") -> None:
        _check_x(x)
        if not isinstance(t, Tensor) or not t.is_floating_point():
            got = f"dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{t_name} must be a floating tensor of shape ({x.shape[0]},), one per sample, got {got}.")
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"{t_name} must have shape ({x.shape[0]},), one per sample of x {tuple(x.shape)}, got shape "
                f"{tuple(t.shape)}; for one time for the whole batch pass torch.full(({x.shape[0]},), t)."
            )

    def _out(self, x: Tensor, t: Tensor) -> Tensor:
        """The wrapped function at (x, t), in work_dtype(x) for the converter's arithmetic."""
        return check_output(self.name, self.fn(x, t), x, cast_under_autocast=True).to(work_dtype(x))

    def _kernel(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha(t), std(t)) in float64, as (B, 1, ..., 1) views in work_dtype(x)."""
        alpha, std = self.sde.kernel(t.to(torch.float64))
        return wide_view(alpha, x), wide_view(std, x)


class _ScoreFromEps(_Converter):
    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self._check(x, t)
        _, std = self._kernel(t, x)
        return (-self._out(x, t) / std).to(x.dtype)


class _EpsFromScore(_Converter):
    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self._check(x, t)
        _, std = self._kernel(t, x)
        return (-std * self._out(x, t)).to(x.dtype)


class _ScoreFromDenoiser(_Converter):
    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self._check(x, t)
        alpha, std = self._kernel(t, x)
        return ((alpha * self._out(x, t) - x) / (std * std)).to(x.dtype)


class _DenoiserFromScore(_Converter):
    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self._check(x, t)
        alpha, std = self._kernel(t, x)
        return ((x + std * std * self._out(x, t)) / alpha).to(x.dtype)


def score_from_eps(sde: SDE, eps_fn: Fn) -> Fn:
    """score(x, t) = -eps(x, t) / std(t): a noise-prediction network (DDPM, Ho et al. 2020) as a score."""
    return _ScoreFromEps(sde, eps_fn, "eps_fn")


def eps_from_score(sde: SDE, score_fn: Fn) -> Fn:
    """eps(x, t) = -std(t) score(x, t) = E[eps | x_t = x]: the noise prediction a score implies."""
    return _EpsFromScore(sde, score_fn, "score_fn")


def score_from_denoiser(sde: SDE, denoiser_fn: Fn) -> Fn:
    """score(x, t) = (alpha(t) D(x, t) - x) / std(t)^2 for a denoiser D(x, t) = E[x0 | x_t = x] (Tweedie; EDM's D)."""
    return _ScoreFromDenoiser(sde, denoiser_fn, "denoiser_fn")


def denoiser_from_score(sde: SDE, score_fn: Fn) -> Fn:
    """D(x, t) = (x + std(t)^2 score(x, t)) / alpha(t) = E[x0 | x_t = x], Tweedie's formula."""
    return _DenoiserFromScore(sde, score_fn, "score_fn")
