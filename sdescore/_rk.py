"""A cheaper embedded Runge–Kutta step for torchdiffeq's adaptive solvers: same tableau, same step control.

torchdiffeq (0.2.x) stores the stages of a step as the last axis of one (*y.shape, s) tensor and forms every
stage input as `sum(k[..., :i] * (dt * a_i), dim=-1)`. On the CPU that broadcast product and the reduction over
a short, strided axis cost far more than the arithmetic: at 65 536 state entries one such stage input takes
about 0.75 ms against 0.09 ms as a chain of fused scaled additions (measured on this project's 2-core
machine). Its step control also runs on 0-d float64 tensors, a dozen small dispatches per step that dominate
small states.

`fast_step(cls)` returns a subclass of a torchdiffeq `RKAdaptiveStepsizeODESolver` with the same Butcher
tableau, order and half-step weights whose `_adaptive_step` computes

    y_i = y0 + h sum_j a_ij k_j,   y1 = y0 + h sum_j b_j k_j,   err = h sum_j e_j k_j

(e: the tableau's error weights `c_error`, b - b_hat in torchdiffeq's tableaux and b_hat - b in tsit5's; the
norm does not see the sign) as one `torch.add(y0, k_1, alpha=h a_i1)` followed by in-place
`add_(k_j, alpha=h a_ij)` (skipping zero weights), and runs the controller on host floats; torchdiffeq's
per-evaluation wrappers (time reversal, the perturbation of a step's end time) are absorbed into the step. The
set-up (`_before_integrate`) is torchdiffeq's too, done on the host: f(t0), the initial step of Hairer et al.
(II.4) with torchdiffeq's formula on Python floats, and `step_t` / `jump_t` sorted and checked as lists
(torchdiffeq does these on 0-d tensors and with `torch.sort` / `torch.unique`, about 0.6 ms of a solve's fixed
cost). Everything else is torchdiffeq's: the
norm (for tuple states its own), the callbacks, the output loop and event handling, and the
accept rule and step-size update of `_adaptive_step`, which this mirrors:

    accept iff ||err / (atol + rtol max(|y0|, |y1|))|| <= 1,
    h_next = h min(ifactor, max(safety ratio^(-1/order), dfactor if rejected else 1)).

Four deliberate differences, tested in tests/test_rk.py: the function receives t in the solver's time dtype
(float64 by default, in the set-up's two evaluations too) where torchdiffeq's wrapper rounds it to the state's
dtype (float32 times carry 1e-7 relative errors, which its own source flags as possibly buggy); the tolerance
weights are formed in the state's dtype where torchdiffeq promotes them to float64 (in the initial-step
heuristic too); the dense-output polynomial is fitted only when something reads it (`_advance` does so once
per output time, and not at all when the last step lands on it); and with the default norm of a single tensor
a NaN in a stage or in y1 is caught through the error ratio, a host float the step computes anyway (NaN
propagates through the RMS norm), raising torchdiffeq's AssertionError in that step (in the set-up, for a
non-finite y0 or f(t0)), where torchdiffeq checks the whole state y0 at the start of every step. An inf makes
the ratio infinite or NaN: the step is rejected (and the state never takes it) until it raises, or until the
step size underflows, which raises torchdiffeq's AssertionError too. With any other norm (a tuple state's,
whose Python `max` over the parts drops a NaN that is not first, or the caller's) y0 is checked at every step
as torchdiffeq does.

A function may also offer two entries that the step uses where the solver's time is float64 (sdescore's
probability-flow function for a linear drift does, `sdescore.flow._LinearFlow`): `prepare(times)`, called with
each step's stage times before they are evaluated (one coefficient computation per step instead of per
evaluation), and `scaled(t, y) -> (k, m)` with f(t, y) = m k, t a float: the step holds its stages as (k, m)
and folds m into the weights above, so that a velocity a y + c s costs one whole-state operation (k = s +
(a / c) y, m = c, say) instead of two. The state's f1 may then be such a k; the step keeps its m.

Where a gradient is being recorded through the
solve (grad mode on and the state, its derivative, the first step or the times requiring grad), and for complex
states, the step is torchdiffeq's own: its backward also runs through the step sizes, which host floats would
cut.
"""

from __future__ import annotations

import bisect
import importlib
import math
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["fast_step", "NONFINITE"]

# the start of torchdiffeq's message for a non-finite state, which sdescore's step raises too (flow.py tells it apart
# from the step-size underflow by it)
NONFINITE = "non-finite values in state `y`"



def _axpy_chain(base: Tensor | None, ks: Sequence[Tensor], weights: Sequence[float], h: float,
                scales: Sequence[float]) -> Tensor:
    """base + h sum_j w_j m_j k_j (base None: 0; m_j = scales[j]), one out-of-place op and then in-place ones, zero
    weights skipped."""
    acc = base
    fresh = False
    for w, m, k in zip(weights, scales, ks):
        if w == 0.0:
            continue
        if not fresh:
            acc = torch.mul(k, h * w * m) if acc is None else torch.add(acc, k, alpha=h * w * m)
            fresh = True
        else:
            acc.add_(k, alpha=h * w * m)
    if acc is None:
        return torch.zeros_like(ks[0])
    return acc


def _unscaled(k: Tensor, m: float) -> Tensor:
    """The stage derivative m k of a stage held as (k, m)."""
    return k if m == 1.0 else k * m


def _next_float(t: float, dtype: torch.dtype, up: bool) -> float:
    """The neighbouring value of t in dtype, as torchdiffeq's Perturb.NEXT / PREV."""
    if dtype == torch.float64:
        return math.nextafter(t, math.inf if up else -math.inf)
    x = torch.tensor(t, dtype=dtype)
    return float(torch.nextafter(x, torch.tensor(math.inf if up else -math.inf, dtype=dtype)))


def _recorded(*tensors: Tensor | None) -> bool:
    """Whether autograd is recording through any of the tensors (None: absent)."""
    return torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in tensors)


def _rms(x: Tensor) -> Tensor:
    """sqrt(mean(|x|^2)), torchdiffeq's default norm, as one reduction."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


class _LazyInterp(Sequence):
    """The coefficients [e, d, c, b, a] of torchdiffeq's quartic dense output, fitted on first access."""

    def __init__(self, fit: Callable[[], list[Tensor]]):
        self._fit: Callable[[], list[Tensor]] | None = fit
        self._coeffs: list[Tensor] = []

    def _get(self) -> list[Tensor]:
        if self._fit is not None:
            self._coeffs, self._fit = self._fit(), None
        return self._coeffs

    def __getitem__(self, index: Any) -> Any:
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())


def fast_step(base: type) -> type:
    """A subclass of the torchdiffeq solver class `base` whose steps are computed as described in the module docstring."""
    rk_common = importlib.import_module("torchdiffeq._impl.rk_common")
    misc = importlib.import_module("torchdiffeq._impl.misc")
    interp = importlib.import_module("torchdiffeq._impl.interp")
    interp_fit, interp_evaluate = interp._interp_fit, interp._interp_evaluate
    rms_norm = misc._rms_norm
    select_initial_step = misc._select_initial_step
    State, Perturb, PerturbFunc, ReverseFunc = rk_common._RungeKuttaState, misc.Perturb, misc._PerturbFunc, misc._ReverseFunc

    tab = base.tableau
    nodes = [float(c) for c in tab.alpha]
    rows = [[float(a) for a in row] for row in tab.beta]
    b_sol = [float(b) for b in tab.c_sol]
    b_err = [float(e) for e in tab.c_error]
    mid = [float(m) for m in base.mid]
    # first same as last (Dormand–Prince, Tsitouras, Bogacki–Shampine): y1 is the last stage's input
    fsal = b_sol[-1] == 0.0 and b_sol[:-1] == rows[-1]

    def _before_integrate(self: Any, t: Tensor) -> None:
        # odeint wraps the function as _PerturbFunc(_ReverseFunc(f, mul=-1)) when time decreases, else as
        # _PerturbFunc(f). The perturbation (t moved to the neighbouring float at a step's end) is done here on
        # the host, and the reversal f(-s) * (-1) is absorbed into the step: stages hold f itself and are
        # combined with the step -h. This saves two module calls, |y| (to read a dtype) and a negation of the
        # whole state per evaluation. The state's f1 holds f itself too.
        self._raw, self._sign = None, 1.0
        if type(self.func) is PerturbFunc:
            inner = self.func.base_func
            if type(inner) is ReverseFunc and inner.mul == -1.0:
                self._raw, self._sign = inner.base_func, -1.0
            elif type(inner) is not ReverseFunc:
                self._raw = inner
        self._ctl = {k: float(getattr(self, k)) for k in ("min_step", "max_step", "safety", "ifactor", "dfactor")}
        self._tol = [v.to(self.y0.dtype) if v.numel() > 1 else float(v) for v in (self.rtol, self.atol)]
        self._abs: tuple[Tensor | None, Tensor | None] = (None, None)  # |y1| of the last step, |y0| of the next
        # torchdiffeq's default norm abs().pow(2).mean().sqrt() as one reduction: a NaN anywhere in the step then
        # shows in the error ratio, checked on the host. Any other norm (a tuple state's, whose Python max over the
        # parts drops a NaN that is not first, or the caller's) is kept, and y0 is checked at every step as
        # torchdiffeq does.
        self._norm = _rms if self.norm is rms_norm else self.norm
        self._check_y0 = self._norm is not _rms
        # A function with `prepare(times)` and `scaled(t, y) -> (k, m)` (sdescore's flow function for a linear
        # drift) takes float times, is told each step's stage times ahead, and returns its value as m * k; float64
        # solver time only, where the float is the time itself. The stages are then held as (k, m) pairs and m is
        # folded into the weights; the state's f1 may be such a k, its m kept in _f_scale.
        prepare, scaled = getattr(self._raw, "prepare", None), getattr(self._raw, "scaled", None)
        protocol = callable(prepare) and callable(scaled) and self.dtype == torch.float64
        self._prepare, self._scaled = (prepare, scaled) if protocol else (None, None)
        self._f_scale: tuple[Tensor | None, float] = (None, 1.0)
        if self._raw is None or self.y0.is_complex():
            # complex states, and a function odeint did not wrap (a solver built by hand): torchdiffeq's own step
            base._before_integrate(self, t)
            state = self.rk_state
            self._fast = not (self._raw is None or self.y0.is_complex() or _recorded(t, self.y0, state.f1, state.dt))
            self._step_list, self._jump_list = self.step_t.tolist(), self.jump_t.tolist()
        else:
            _set_up(self, t)

    def _set_up(self: Any, t: Tensor) -> None:
        """torchdiffeq's _before_integrate with the initial step and the step_t / jump_t lists on the host."""
        y0, t0f, device = self.y0, float(t[0].detach()), self.y0.device
        f0 = self._eval(t0f, y0, Perturb.NONE)
        # torchdiffeq's own step wherever a gradient is being recorded (its backward also runs through the chosen
        # step sizes, which host floats would cut)
        self._fast = not _recorded(t, y0, f0, self.first_step)
        if self.first_step is not None:
            first = self.first_step
        elif self._fast:
            first = torch.scalar_tensor(_initial_step(self, t0f, y0, f0), dtype=self.dtype, device=device)
        else:
            first = select_initial_step(self.func, t[0], y0, self.order - 1, self.rtol, self.atol, self.norm,
                                        f0=self._sign * f0)
        self.rk_state = State(y0, f0 if self._fast else self._sign * f0, t[0], t[0], first, [y0] * 5)
        # step_t and jump_t: the times at or after t0, sorted, none in both (torchdiffeq's _sort_tvals and check)
        steps, jumps = (sorted(v for v in tv.tolist() if v >= t0f) if tv is not None else [] for tv in (self.step_t, self.jump_t))
        repeated = sorted({v for v in steps + jumps if (steps + jumps).count(v) > 1})
        if repeated:
            raise ValueError(
                f"`step_t` and `jump_t` must not have any repeated elements between them, got {repeated} more than once."
            )
        self.step_t, self.jump_t = (torch.tensor(v, dtype=self.dtype, device=device) for v in (steps, jumps))
        self._step_list, self._jump_list = steps, jumps
        self.next_step_index = min(bisect.bisect(steps, t0f), len(steps) - 1)
        self.next_jump_index = min(bisect.bisect(jumps, t0f), len(jumps) - 1)

    def _initial_step(self: Any, t0f: float, y0: Tensor, f0: Tensor) -> float:
        """Hairer et al. (II.4) as torchdiffeq's _select_initial_step, on host floats; f0 in the stages' convention."""
        rtol, atol = self._tol
        scale = y0.abs().mul_(rtol).add_(atol)
        d0, d1 = float(self._norm(y0 / scale)), float(self._norm(f0 / scale))
        if not (math.isfinite(d0) and math.isfinite(d1)):
            # torchdiffeq would probe f at t0 + NaN and fail later; the step cannot start from a non-finite y0 or f0
            raise AssertionError(f"{NONFINITE} or in its derivative")
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = self._eval(t0f + h0, torch.add(y0, f0, alpha=self._sign * h0), Perturb.NONE)
        d2 = float(self._norm((f1 - f0).div_(scale))) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / self.order)  # torchdiffeq passes order - 1 and takes 1 / (that + 1)
        return min(100.0 * h0, h1)

    def _eval(self: Any, t: float, y: Tensor, perturb: Any) -> Tensor:
        """The stage derivative at time t (a float in the solver's time), in the step's convention."""
        if perturb is not Perturb.NONE:
            t = _next_float(t, self.dtype, up=perturb is Perturb.NEXT)
        if self._prepare is not None:
            return self._raw(self._sign * t, y)
        return self._raw(torch.scalar_tensor(self._sign * t, dtype=self.dtype, device=y.device), y)

    def _advance(self: Any, next_t: Tensor) -> Tensor:
        # torchdiffeq's, except that an output time the last step landed on (step_t) returns that step's y1
        # itself: the quartic interpolant equals y1 there in exact arithmetic, and is not fitted at all.
        if not self._fast:
            return base._advance(self, next_t)
        target, limit, n_steps = float(next_t), int(self.max_num_steps), 0
        while target > float(self.rk_state.t1):
            if n_steps >= limit:
                raise AssertionError(f"max_num_steps exceeded ({n_steps}>={limit})")  # as torchdiffeq's
            self.rk_state = self._adaptive_step(self.rk_state)
            n_steps += 1
        state = self.rk_state
        if target == float(state.t1):
            return state.y1
        return interp_evaluate(state.interp_coeff, state.t0, state.t1, next_t)

    def _adaptive_step(self: Any, rk_state: Any) -> Any:
        if not self._fast:
            return base._adaptive_step(self, rk_state)
        y0, f0, _, t0, dt, interp_coeff = rk_state
        c = self._ctl
        t0f, h = float(t0), float(dt)
        if not math.isfinite(h):
            h = c["min_step"]
        h = min(max(h, c["min_step"]), c["max_step"])
        self.func.callback_step(t0, y0, torch.scalar_tensor(h, dtype=self.dtype, device=y0.device))
        if not t0f + h > t0f:
            raise AssertionError(f"underflow in dt {h}")  # torchdiffeq's failure, which callers catch
        if self._check_y0 and not bool(torch.isfinite(y0).all()):
            raise AssertionError(NONFINITE)  # as torchdiffeq's, for any norm but the default one

        t1 = None
        on_step_t = on_jump_t = False
        if self._step_list:
            s = self._step_list[self.next_step_index]
            on_step_t = t0f < s < t0f + h
            if on_step_t:
                t1, h = self.step_t[self.next_step_index], s - t0f
        if self._jump_list:
            j = self._jump_list[self.next_jump_index]
            on_jump_t = t0f < j < t0f + h
            if on_jump_t:
                on_step_t = False
                t1, h = self.jump_t[self.next_jump_index], j - t0f
        t1f = t0f + h if t1 is None else float(t1)
        if t1 is None:
            t1 = torch.scalar_tensor(t1f, dtype=self.dtype, device=y0.device)
        dt = torch.scalar_tensor(h, dtype=self.dtype, device=y0.device)
        hs = self._sign * h  # the step in the convention of the stages

        # the stage times; torchdiffeq steps to just before the end time, in case of a discontinuity there
        times = [_next_float(t1f, self.dtype, up=False) if ci == 1.0 else t0f + ci * h for ci in nodes]
        if self._prepare is not None:
            self._prepare([self._sign * s for s in times])
        m0 = self._f_scale[1] if self._f_scale[0] is f0 else 1.0  # f(t0) = m0 f0
        ks, ms = [f0], [m0]
        yi = y0
        for s, row in zip(times, rows):
            yi = _axpy_chain(y0, ks, row, hs, ms)
            if self._scaled is not None:
                k, m = self._scaled(self._sign * s, yi)
            else:
                k, m = self._eval(s, yi, Perturb.NONE), 1.0
            ks.append(k)
            ms.append(m)
        y1 = yi if fsal else _axpy_chain(y0, ks, b_sol, hs, ms)
        f1, m1 = ks[-1], ms[-1]

        rtol, atol = self._tol
        abs0 = self._abs[1] if self._abs[0] is y0 else y0.abs()
        abs1 = y1.abs()
        self._abs = (y1, abs1)
        err = _axpy_chain(None, ks, b_err, hs, ms).div_(torch.maximum(abs0, abs1).mul_(rtol).add_(atol))
        ratio = float(self._norm(err))
        if math.isnan(ratio):
            raise AssertionError(f"{NONFINITE} or in its derivative")  # as torchdiffeq's

        accept = ratio <= 1.0
        if h > c["max_step"]:
            accept = False
        if h <= c["min_step"]:
            accept = True
        if accept:
            self.func.callback_accept_step(t0, y0, dt)
            t_next, y_next = t1, y1
            # torchdiffeq's quartic through y0, y1, y(t0 + h/2) and the step's end slopes ks[0], ks[-1] (not a
            # re-evaluation after a jump), in its convention (sign * f)
            interp_coeff = _LazyInterp(
                lambda: interp_fit(y0, y1, _axpy_chain(y0, ks, mid, hs, ms), _unscaled(ks[0], ms[0]),
                                   _unscaled(ks[-1], ms[-1]), (self._sign * dt).to(y0.dtype))
            )
            if on_step_t and self.next_step_index != len(self._step_list) - 1:
                self.next_step_index += 1
            if on_jump_t:
                if self.next_jump_index != len(self._jump_list) - 1:
                    self.next_jump_index += 1
                f1, m1 = self._eval(t1f, y_next, Perturb.NEXT), 1.0
            f_next = f1
            self._f_scale = (f1, m1)
        else:
            self.func.callback_reject_step(t0, y0, dt)
            t_next, y_next, f_next = t0, y0, f0
        if ratio == 0.0:
            factor = c["ifactor"]
        else:
            factor = min(c["ifactor"], max(c["safety"] / ratio ** (1.0 / self.order), 1.0 if ratio < 1.0 else c["dfactor"]))
        dt_next = torch.scalar_tensor(min(max(h * factor, c["min_step"]), c["max_step"]), dtype=self.dtype, device=y0.device)
        return State(y_next, f_next, t0, t_next, dt_next, interp_coeff)

    return type(
        base.__name__,
        (base,),
        {"_before_integrate": _before_integrate, "_eval": _eval, "_advance": _advance, "_adaptive_step": _adaptive_step,
         "__module__": __name__,
         "__doc__": f"{base.__name__} with sdescore's step (sdescore._rk): same tableau and step control."},
    )
