"""The reverse-time SDE of Anderson (1982), integrated by torchsde.

Reverse time t runs from T down to eps; torchsde integrates forward in time only, so the solver time is
s = T - t, running from 0 up to T - eps. In s the reverse SDE (Song et al. 2021, eq. 6) reads

    dx = -[f(x, T - s) - g(T - s)^2 score(x, T - s)] ds + g(T - s) dW_s,

with W a standard Brownian motion in s. The noise is additive (g does not depend on x), so the Itô and
Stratonovich readings coincide and every torchsde method for diagonal noise applies.
"""

from __future__ import annotations

import math
from collections import deque

import torch
import torchsde
from torch import Tensor

from ._checks import check_bool, check_data, check_eps, check_generator, check_int
from ._score import CheckedScore, SampleResult, _round_result, _step_of
from .sde import SDE, ScoreFn, work_dtype

__all__ = ["ReverseSDE", "IncrementBrownian", "SDE_METHODS"]

# torchsde method -> (sde_type it needs, Lévy area it needs from the Brownian motion)
SDE_METHODS: dict[str, tuple[str, str]] = {
    "euler": ("ito", "none"),
    "milstein": ("ito", "none"),
    "srk": ("ito", "space-time"),
    "midpoint": ("stratonovich", "none"),
    "heun": ("stratonovich", "none"),
    "euler_heun": ("stratonovich", "none"),
    "reversible_heun": ("stratonovich", "none"),
    "log_ode": ("stratonovich", "foster"),
}


class IncrementBrownian(torchsde.BaseBrownian):
    """Brownian motion that draws each queried increment directly: W(tb) - W(ta) ~ N(0, (tb - ta) I).

    For fixed-step solvers that query each step's interval once, in order (every method of SDE_METHODS but
    'log_ode' under `torchsde.sdeint`). Costs one `randn` per step, where torchsde's BrownianInterval walks a
    binary tree of seeds. With `levy_area='space-time'` it also draws the space-time Lévy area H ~ N(0, h/12 I),
    independent of W, and returns U = h (W/2 + H) as torchsde's SRK expects.

    It keeps no path, so it answers each interval once, forward in time: increments of disjoint intervals are
    independent, but a second query of an interval (an adaptive solver's rejected step, or the backward solve of
    `torchsde.sdeint_adjoint`, which walks the same intervals again from the end) would get fresh noise instead
    of the increment of the same path, silently (adjoint gradients off by 44 % in a test). Such a query, one that
    starts before the end of the last interval answered, raises a ValueError. Use torchsde.BrownianInterval for
    adaptive steps, sdeint_adjoint, and wherever the same path is needed at several step sizes (convergence
    studies). One object serves one solve.
    """

    def __init__(
        self,
        size: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | None = None,
        levy_area: str = "none",
    ):
        if levy_area not in ("none", "space-time"):
            raise ValueError(f"levy_area must be 'none' or 'space-time', got {levy_area!r}.")
        self._size = torch.Size(size)
        self._dtype = dtype
        self._device = torch.device(device)
        self._generator = generator
        self._levy = levy_area
        self._answered = -math.inf  # the end of the last interval answered

    def _randn(self, scale: float) -> Tensor:
        return scale * torch.randn(self._size, generator=self._generator, dtype=self._dtype, device=self._device)

    def __call__(self, ta, tb=None, return_U: bool = False, return_A: bool = False):
        if tb is None or return_A:
            raise ValueError("IncrementBrownian answers increments W(tb) - W(ta) only; use torchsde.BrownianInterval.")
        ta, tb = float(ta), float(tb)
        if tb < ta:
            raise ValueError(
                f"IncrementBrownian answers W(tb) - W(ta) for ta <= tb, forward in time; got ta={ta}, tb={tb}."
            )
        if ta < self._answered:
            raise ValueError(
                f"IncrementBrownian was asked for W({tb}) - W({ta}), an interval that starts before the end "
                f"{self._answered} of the last one answered: it keeps no path and answers each interval once, forward "
                "in time (a fixed-step torchsde.sdeint), so a second query would get fresh noise. For adaptive steps, "
                "torchsde.sdeint_adjoint or a path queried again, use torchsde.BrownianInterval; for a new solve, a "
                "new IncrementBrownian."
            )
        self._answered = tb
        h = tb - ta
        W = self._randn(math.sqrt(h))
        if not return_U:
            return W
        if self._levy != "space-time":
            raise ValueError("return_U needs IncrementBrownian(levy_area='space-time').")
        return W, h * (0.5 * W + self._randn(math.sqrt(h / 12.0)))

    def __repr__(self) -> str:
        return f"IncrementBrownian(size={tuple(self._size)}, dtype={self._dtype}, device={self._device})"

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def shape(self) -> torch.Size:
        return self._size

    @property
    def levy_area_approximation(self) -> str:
        return self._levy


def _check_bm(bm: object, shape: tuple[int, ...], dtype: torch.dtype, s_end: float) -> None:
    """bm: a torchsde Brownian motion of the flattened state's shape and working dtype covering the solver times
    [0, s_end]."""
    if not isinstance(bm, torchsde.BaseBrownian):
        raise TypeError(f"bm must be a torchsde Brownian motion (e.g. torchsde.BrownianInterval) or None, got {type(bm).__name__}.")
    if tuple(bm.shape) != shape:
        raise ValueError(f"bm must have the shape (B, D) = {shape} of the flattened state, got {tuple(bm.shape)}.")
    if getattr(bm, "dtype", dtype) != dtype:  # a float32 path under a float64 state would round every increment
        raise TypeError(
            f"bm must have the state's dtype {dtype}, got {bm.dtype}; create it with dtype={dtype} (the solve runs in "
            "x_T's dtype, in float32 for a half-precision x_T)."
        )
    # BrownianInterval keeps its interval in private attributes; outside it torchsde only warns and clamps
    start, end = getattr(bm, "_start", None), getattr(bm, "_end", None)
    if start is not None and end is not None and (start > 0.0 or end < s_end * (1 - 1e-12)):
        raise ValueError(
            f"bm covers the solver times [{start}, {end}], but the solve runs over [0, T - eps] = [0, {s_end}]; "
            f"create it with t0=0.0, t1={s_end}."
        )


class ReverseSDE:
    """Reverse-time SDE dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dw_bar, in torchsde's duck type.

    Song et al. (2021), eq. 6 (Anderson 1982). With probability_flow=True, the deterministic reverse
    dx = [f - g^2 score / 2] dt (eq. 13) with zero diffusion. `f(s, y)` and `g(s, y)` take the solver time
    s = T - t in [0, T] and the flattened state y of shape (B, D); the data shape is `event_shape` (default: y's
    (D,)). Pass it to `torchsde.sdeint` directly, or call `sample`.
    """

    noise_type = "diagonal"

    def __init__(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        probability_flow: bool = False,
        *,
        event_shape: tuple[int, ...] | None = None,
        sde_type: str = "ito",
    ):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}.")
        if sde_type not in ("ito", "stratonovich"):
            raise ValueError(f"sde_type must be 'ito' or 'stratonovich', got {sde_type!r}.")
        self.sde = sde
        self.score_fn = score_fn
        self.probability_flow = check_bool("probability_flow", probability_flow)
        if event_shape is not None and (
            isinstance(event_shape, (str, bytes)) or not hasattr(event_shape, "__iter__")
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in event_shape)
        ):
            raise TypeError(f"event_shape must be a tuple of positive ints (the data shape, e.g. (3, 32, 32)) or None, "
                            f"got {event_shape!r}.")
        self.event_shape = None if event_shape is None else tuple(event_shape)
        self.sde_type = sde_type
        # A solve of `sample` gets its own recording CheckedScore (a copy of this object); this one, which
        # torchsde.sdeint may call any number of times, checks each call at once and keeps nothing.
        self._score = score_fn if isinstance(score_fn, CheckedScore) else CheckedScore(score_fn, record=False)
        # the memo of _drift_and_g's last evaluations: empty (maxlen 0, it keeps nothing) except in the copy
        # `sample` makes for one solve
        self._memo: deque[tuple[Tensor, int, float, Tensor, float]] = deque(maxlen=0)

    def __repr__(self) -> str:
        return f"ReverseSDE({self.sde!r}, probability_flow={self.probability_flow})"

    # ------------------------------------------------------------------ torchsde interface
    def _time(self, s: Tensor | float) -> float:
        """The forward time t = T - s of a solver time s, which must lie in [0, T]."""
        s_value = float(s)
        if not 0.0 <= s_value <= self.sde.T:
            raise ValueError(
                f"the reverse SDE takes solver times s = T - t in [0, {self.sde.T}], got s={s_value}; integrate over "
                f"ts within [0, T - eps], as `sample` does."
            )
        return self.sde.T - s_value

    def _drift_and_g(self, s: Tensor, y: Tensor) -> tuple[Tensor, float]:
        # torchsde probes f and g at (ts[0], y0) for shapes before integrating from the same point, and its
        # stochastic Runge-Kutta step ('srk') evaluates the drift of each earlier stage again in every later stage
        # (10 calls for its 4 stage states). Within one solve (`sample`'s copy), a memo of the last evaluations (one,
        # or the 4 stages for 'srk': each entry holds two states) answers these repeats (the same tensor, unmodified,
        # at the same time), so that every score evaluation is one the solver uses. The version counter sees
        # in-place changes; inference tensors have none, and there identity and time are the key (torchsde builds
        # its stage states out of place). An object handed to torchsde.sdeint directly keeps no memo: between its
        # solves the model may have changed, which no key can see.
        t_value = self._time(s)
        version = -1 if y.is_inference() else y._version
        for memo in self._memo:
            if memo[0] is y and memo[1] == version and memo[2] == t_value:
                return memo[3], memo[4]
        B = y.shape[0]
        if self.event_shape is not None and math.prod(self.event_shape) != y[0].numel():
            raise ValueError(
                f"event_shape {self.event_shape} holds {math.prod(self.event_shape)} values, but the flattened state has "
                f"D = {y[0].numel()} per sample (shape {tuple(y.shape)}); pass the data shape of y0's samples."
            )
        x = y.reshape(B, *(self.event_shape or y.shape[1:]))
        t = torch.full((B,), t_value, dtype=torch.float64, device=y.device)
        # g(t) is shared by the batch: evaluated once, on the host, it enters as a Python scalar (no device
        # tensor, no broadcast, no synchronisation).
        g = float(self.sde.g(torch.full((1,), t_value, dtype=torch.float64))[0])
        score = self._score(x, t.to(x.dtype), t_value)
        if self.probability_flow:  # solver-time drift -(f - g^2 s / 2), zero noise
            drift = (score * (0.5 * g * g)).sub_(self.sde.f(x, t))
            g = 0.0
        else:  # solver-time drift -(f - g^2 s)
            drift = (score * (g * g)).sub_(self.sde.f(x, t))
        out = drift.reshape(B, -1), g
        self._memo.append((y, version, t_value, *out))
        return out

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        """Drift in solver time: -(f - g^2 score)(x, T - s), on the flattened state (B, D)."""
        return self._drift_and_g(s, y)[0]

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        """Diagonal diffusion g(T - s), expanded to (B, D)."""
        B = y.shape[0]
        t = torch.full((B,), self._time(s), dtype=torch.float64, device=y.device)
        g = torch.zeros_like(t) if self.probability_flow else self.sde.g(t)
        return g.to(y.dtype)[:, None].expand_as(y)

    def f_and_g_prod(self, s: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        drift, g = self._drift_and_g(s, y)
        return drift, v * g

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        x_T: Tensor,
        *,
        steps: int = 1000,
        method: str = "euler",
        eps: float = 1e-3,
        generator: torch.Generator | None = None,
        bm: object | None = None,
    ) -> SampleResult:
        """Integrate from t = T to t = eps with `steps` fixed steps of torchsde's `method`; x_T: (B, *dims).

        Returns a SampleResult with x shaped like x_T and nfe the score evaluations made. `bm` overrides the
        Brownian motion (a torchsde.BrownianInterval of shape (B, D) on solver times [0, T - eps], for
        convergence studies on one path); by default increments are drawn from `generator` (not both).

        A half-precision x_T is integrated in float32 (`work_dtype`: the state, the Brownian increments, the drift
        g^2 s - f, which exceeds float16's range for the VE-SDE's usual sigma_max although state and step fit) with
        the score called at x and t in x_T's dtype; the result is rounded to x_T's dtype once, at the end.
        """
        x_T = check_data("x_T", x_T)
        steps = check_int("steps", steps, minimum=1)
        eps = check_eps(eps, self.sde.T)
        if method not in SDE_METHODS:
            raise ValueError(f"method must be one of {sorted(SDE_METHODS)} (torchsde, diagonal noise), got {method!r}.")
        generator = check_generator(generator, x_T.device)
        if generator is not None and bm is not None:
            raise ValueError("pass generator= or bm=, not both: the increments come from bm when it is given.")
        sde_type, levy = SDE_METHODS[method]
        B = x_T.shape[0]
        y0 = x_T.reshape(B, -1).to(work_dtype(x_T))
        s_end = self.sde.T - eps
        if bm is not None:
            _check_bm(bm, tuple(y0.shape), y0.dtype, s_end)
        else:
            if levy == "foster":
                if generator is not None:
                    raise ValueError("method 'log_ode' draws from torchsde.BrownianInterval; pass bm= to seed it.")
                bm = torchsde.BrownianInterval(
                    t0=0.0, t1=s_end, size=tuple(y0.shape), dtype=y0.dtype, device=y0.device,
                    levy_area_approximation="foster",
                )
            else:
                bm = IncrementBrownian(tuple(y0.shape), y0.dtype, y0.device, generator, levy_area=levy)
        score = CheckedScore(self.score_fn, dtype=x_T.dtype)
        bound = ReverseSDE(self.sde, score, self.probability_flow, event_shape=x_T.shape[1:], sde_type=sde_type)
        bound._memo = deque(maxlen=4 if method == "srk" else 1)
        ts = torch.tensor([0.0, s_end], dtype=torch.float64)
        # torchsde steps by accumulating dt in floating point; a step a hair longer than (s_end / steps)
        # keeps the count at exactly `steps` (the last one is clipped to s_end) instead of adding a sliver.
        dt = s_end / steps * (1.0 + 1e-9)
        ys = torchsde.sdeint(bound, y0, ts, bm=bm, method=method, dt=dt)
        x = ys[-1].reshape(x_T.shape)
        # every method here makes the same number of evaluations in each step (reversible Heun: one more in all);
        # the reported times are exact float64, so the time rule, kept for safety, needs no margin beyond 1e-6
        h = s_end / steps
        step_of = _step_of(score.nfe, steps, lambda t: (self.sde.T - t) / h + 1e-6)
        where = f"ReverseSDE.sample(method={method!r})"
        score.raise_if_nonfinite(x, where, step_of)
        return SampleResult(x=_round_result(x, x_T.dtype, "x_T", where), nfe=score.nfe)
