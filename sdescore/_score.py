"""The one result type of every sampler, the checked score call the solvers make, and their Gaussian draw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._checks import all_finite, check_output

__all__ = ["SampleResult", "CheckedScore", "NonFiniteError"]


@dataclass(frozen=True)
class SampleResult:
    """What every sampler returns: the samples `x` (shaped like the request) and `nfe`, the score evaluations made."""

    x: Tensor
    nfe: int


def _randn_like(x: Tensor, generator: torch.Generator | None, out: Tensor | None = None) -> Tensor:
    """Standard normal noise shaped like x, in its dtype and on its device, from `generator` (into `out` if given:
    the same numbers)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device, out=out)


def _span(when: float | tuple[float, float] | Tensor) -> tuple[float, float]:
    """(earliest, latest) of a score call's reported times: a number, a (lo, hi) pair, or a tensor of times."""
    if isinstance(when, Tensor):
        return (float(when.min()), float(when.max())) if when.numel() > 1 else (float(when.reshape(-1)[0]),) * 2
    if isinstance(when, tuple):
        return float(when[0]), float(when[1])
    return float(when), float(when)


class NonFiniteError(FloatingPointError, ValueError):
    """A sampler met NaN or inf; the message names where it first appeared: the step (where known), the score
    evaluation and the time."""


class CheckedScore:
    """Wrap score_fn(x, t): check its output's shape and dtype, count evaluations, and note non-finite ones.

    Finiteness is recorded per evaluation as a device scalar (no host synchronisation per call) and resolved
    once by `raise_if_nonfinite`, which names the step and the time where NaN or inf first appeared. With
    record=False (an object that outlives any one solve, such as a `ReverseSDE` handed to torchsde.sdeint, where
    no solver calls `raise_if_nonfinite` and a record would grow with every call) each call is checked at once
    instead, one host synchronisation per call, and nothing is kept.

    With dtype (a half-precision x_T's dtype, where the solver works in float32: `sdescore.sde.work_dtype`) score_fn is
    called at x and t rounded to dtype, as a network of that precision would be, and its output widened to the
    solver's x: s(x, t) = score_fn(x.to(dtype), t.to(dtype)).to(x.dtype). The state, and every product of the score
    with a coefficient such as g(t)^2 (which exceeds float16's range for the VE-SDE's usual sigma_max), stay in
    the solver's precision; the reported time is the solver's.
    """

    def __init__(
        self, score_fn: Callable[[Tensor, Tensor], Tensor], name: str = "score_fn", *, record: bool = True,
        dtype: torch.dtype | None = None,
    ):
        if not callable(score_fn):
            raise TypeError(f"{name} must be callable as {name}(x, t), got {type(score_fn).__name__}.")
        self.score_fn = score_fn
        self.name = name
        self.record = record
        self.dtype = dtype
        self._ranges: list[tuple[Tensor, Tensor]] = []
        self._when: list[float | Tensor] = []

    @property
    def nfe(self) -> int:
        """Score evaluations made so far."""
        return len(self._ranges)

    def __call__(self, x: Tensor, t: Tensor, when: float | tuple[float, float] | Tensor | None = None) -> Tensor:
        """Evaluate the score at x (B, *dims) and times t (B,); `when` is what to report of the call's times: a
        number, a (lo, hi) pair where they differ between samples, or a tensor of them (default t itself, which is
        then kept until the solve ends: a solver with one time per sample passes the pair instead)."""
        if self.dtype is not None and x.dtype != self.dtype:
            return self._checked(x.to(self.dtype), t.to(self.dtype), t if when is None else when).to(x.dtype)
        return self._checked(x, t, when)

    def _checked(self, x: Tensor, t: Tensor, when: float | tuple[float, float] | Tensor | None) -> Tensor:
        s = check_output(
            self.name, self.score_fn(x, t), x, shape_rule="a score has the shape of x", cast_under_autocast=True
        )
        if not self.record:
            if not all_finite(s):
                t_text = f"{_span(t if when is None else when)[0]:.6g}"
                raise NonFiniteError(
                    f"{self.name} returned NaN or inf at t={t_text}: check the score model, or the state, which may "
                    "have diverged before (the step size and the time grid)."
                )
            return s
        # One reduction per call, resolved later: min and max are both finite exactly when every entry is (NaN
        # propagates to both, +inf shows in max, -inf in min; no overflow is possible), and t is kept by
        # reference, read only on failure.
        self._ranges.append(torch.aminmax(s.detach()))
        self._when.append(t if when is None else when)
        return s

    def first_nonfinite(self) -> tuple[int, float] | None:
        """(evaluation index, time) of the first non-finite score, or None. Synchronises once.

        The time is the first of the call's times (all equal, except in a solver with one time per sample)."""
        if not self._ranges:
            return None
        finite = torch.isfinite(torch.stack([v for r in self._ranges for v in r]).reshape(-1, 2)).all(1)
        if bool(finite.all()):
            return None
        k = int((~finite).nonzero()[0, 0])
        when = self._when[k]
        return k, float(when.reshape(-1)[0]) if isinstance(when, Tensor) else _span(when)[0]

    def raise_if_nonfinite(self, x: Tensor, where: str, step_of: Callable[[int, float], int | str | None]) -> None:
        """Raise NonFiniteError if a score, or the final state x, was non-finite.

        step_of(evaluation index, time) gives the solver step that made that evaluation, or None where the step is
        not known (an adaptive solver, whose rejected steps and initial-step probe also evaluate the score): the
        message then names the evaluation and its time only; or a phrase naming the evaluation ("in the final
        denoising evaluation"), which the message then uses instead of the step and the evaluation's index. Where a
        call's times differ between samples, the message gives their range.
        """
        bad = self.first_nonfinite()
        if bad is not None:
            k, t = bad
            step = step_of(k, t)
            at = "in the solve" if step is None else step if isinstance(step, str) else f"at step {step}"
            lo, hi = _span(self._when[k])
            t_text = f"t from {lo:.6g} to {hi:.6g} across the batch" if lo != hi else f"t={t:.6g}"
            if not isinstance(step, str):
                t_text += f", score evaluation {k}"
            raise NonFiniteError(
                f"{where}: non-finite values appeared {at} ({t_text}): "
                f"{self.name} returned NaN or inf there, or the state had already diverged; check the score model, "
                "the step size and the time grid."
            )
        if not all_finite(x):
            raise NonFiniteError(f"{where}: the final state holds non-finite values although every score was finite.")


def _step_of(
    nfe: int, steps: int, position: Callable[[float], float], *, uniform: bool = True
) -> Callable[[int, float], int]:
    """The step that made evaluation k at time t, for a solve of `steps` fixed steps that made nfe evaluations.

    A method that evaluates the score the same number of times in every step (uniform: euler, milstein,
    euler_heun: once; heun, midpoint, log_ode, torchdiffeq's heun2: twice; heun3: three times; srk, its repeats
    answered by a memo, and rk4: four times) made evaluation k in step k // (nfe / steps), whatever its time:
    the last stage of heun, heun2, srk and rk4 lies at the end of its step, the time of the next step's first.
    One evaluation more than steps is reversible Heun's (an evaluation at the start, then one at each step's end):
    k in step max(k - 1, 0). Otherwise, and for a method whose count varies from step to step (uniform=False: the
    Adams methods' Runge–Kutta start and corrector iterations, whose total may happen to be a multiple of steps),
    the time rule: the step whose interval holds t, floor(position(t)), where position(t) is t's distance from
    the start of the grid in steps, raised by a bound on the rounding of t (a node rounded in t's dtype would
    otherwise fall in the step before); an evaluation at a step's end is then named as the next step's.
    """
    if uniform and nfe % steps == 0:
        per = nfe // steps
        return lambda k, t: k // per
    if uniform and nfe == steps + 1:
        return lambda k, t: max(k - 1, 0)
    return lambda k, t: min(max(int(position(t)), 0), steps - 1)


def _round_result(x: Tensor, dtype: torch.dtype, name: str, where: str) -> Tensor:
    """A solve's finite result x, made in the working precision, rounded once to the caller's dtype (that of the
    argument `name`); NonFiniteError where it lies beyond that dtype's range."""
    if x.dtype == dtype:
        return x
    out = x.to(dtype)
    if not all_finite(out):
        raise NonFiniteError(
            f"{where}: the result (max |x| = {float(x.abs().max()):.6g}, finite in {x.dtype}) exceeds the range of "
            f"{name}'s dtype {dtype} (largest {torch.finfo(dtype).max:.6g}); pass {name} in float32."
        )
    return out
