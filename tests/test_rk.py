"""sdescore's Runge–Kutta step for torchdiffeq (sdescore._rk) against torchdiffeq's own step on the same tableau.

`fast_step` changes how a step is computed, not which steps are taken: every test runs odeint twice, once with
'tsit5' (sdescore's step) and once with the same tableau through torchdiffeq's `_adaptive_step`, and asks for
the same number of evaluations and the same answer to rounding, in both time directions, with dense output,
tuple states, step_t and jump_t, callbacks, events and gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from torchdiffeq._impl.odeint import SOLVERS

import sdescore as sds
from sdescore import _rk
from sdescore._rk import _axpy_chain
from sdescore.flow import ADAPTIVE_METHODS
from validation import single_gaussian

pytestmark = pytest.mark.skipif("tsit5" not in ADAPTIVE_METHODS, reason="this torchdiffeq does not take the tsit5 tableau")
F64 = dict(dtype=torch.float64)


@pytest.fixture(scope="module")
def reference():
    """The tsit5 tableau run by torchdiffeq's own step, registered for the module's tests under a private name."""
    name = "_tsit5_torchdiffeq_step"
    SOLVERS[name] = SOLVERS["tsit5"].__bases__[0]
    assert SOLVERS[name]._adaptive_step is not SOLVERS["tsit5"]._adaptive_step
    yield name
    del SOLVERS[name]


class Counted:
    """f(t, y) that counts its calls and records every t it was given, with torchdiffeq's step callbacks."""

    def __init__(self, f):
        self.f, self.calls, self.times, self.steps = f, 0, [], []
        self.events = {"step": 0, "accept": 0, "reject": 0}

    def __call__(self, t, y):
        self.calls += 1
        self.times.append(float(t))
        return self.f(t, y)

    def callback_step(self, t0, y0, dt):
        self.events["step"] += 1
        self.steps.append(float(dt))

    def callback_accept_step(self, t0, y0, dt):
        self.events["accept"] += 1

    def callback_reject_step(self, t0, y0, dt):
        self.events["reject"] += 1


def _both(reference, f, y0, t, **kwargs):
    out = {}
    for method in ("tsit5", reference):
        func = Counted(f)
        y = torchdiffeq.odeint(func, y0, t, method=method, **kwargs)
        out[method] = (y, func)
    return out["tsit5"], out[reference]


def _rotation(t, y):
    # a rotation at angular speed 2 r^2; from (1, 0): (cos 2t, sin 2t)
    return torch.stack([-2.0 * y[..., 1], 2.0 * y[..., 0]], -1) * (y[..., :1] ** 2 + y[..., 1:] ** 2)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_same_steps_and_same_solution_as_torchdiffeqs_step(reference, direction):
    """A nonlinear system, 21 output times (19 interpolated), forward and backward in time, float64: the same
    evaluations at the same times, the same accepted and rejected steps, and outputs equal to rounding."""
    t = direction * torch.linspace(0.0, 3.0, 21, **F64)
    y0 = torch.tensor([[1.0, 0.0], [0.6, 0.3]], **F64)
    (y, fast), (y_ref, ref) = _both(reference, _rotation, y0, t, rtol=1e-7, atol=1e-9)
    assert fast.calls == ref.calls > 100 and fast.events == ref.events and ref.events["reject"] > 0
    # the first step (Hairer's initial-step heuristic, on host floats in sdescore's set-up) is torchdiffeq's
    assert abs(fast.steps[0] - ref.steps[0]) <= 1e-12 * abs(ref.steps[0])
    # Not bit for bit: the error estimate sum_j e_j k_j cancels to ~1e-13 of its terms, so the order of the
    # additions moves it by ~1e-6 relative, and the step sizes by ~1e-7; everything downstream by that much.
    assert max(abs(a - b) for a, b in zip(fast.times, ref.times)) < 1e-6
    assert float((y - y_ref).abs().max()) < 1e-9
    exact = torch.stack([torch.cos(2.0 * t), torch.sin(2.0 * t)], -1)
    assert float((y[:, 0] - exact).abs().max()) < 1e-5


class Scaled(Counted):
    """The rotation offered through the step's two entries: `prepare(times)`, and `scaled(t, y) -> (k, m)` with
    f = m k and m = 2 + cos(3 t), never 1; it records the announced and the evaluated times of each step."""

    def __init__(self):
        super().__init__(_rotation)
        self.announced, self.evaluated = [], []

    def prepare(self, times):
        self.announced.append(list(times))
        self.evaluated.append([])

    def scaled(self, t, y):
        assert isinstance(t, float)
        self.calls += 1
        self.evaluated[-1].append(t)
        m = 2.0 + math.cos(3.0 * t)
        return _rotation(t, y) / m, m


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_a_function_offering_its_value_scaled_gets_the_same_steps(reference, direction):
    """The stages held as (k, m) with m folded into the weights: the same evaluations, accepted and rejected steps
    and solution as torchdiffeq's step on f itself, with 21 output times (the dense output reads m k), a jump
    (the derivative re-evaluated unscaled) and both time directions; every step evaluates the times it announced."""
    t = direction * torch.linspace(0.0, 3.0, 21, **F64)
    y0 = torch.tensor([[1.0, 0.0], [0.6, 0.3]], **F64)
    opts = dict(rtol=1e-7, atol=1e-9, options={"jump_t": direction * torch.tensor([1.23], **F64)})
    fast = Scaled()
    y = torchdiffeq.odeint(fast, y0, t, method="tsit5", **opts)
    ref = Counted(_rotation)
    y_ref = torchdiffeq.odeint(ref, y0, t, method=reference, **opts)
    assert fast.calls == ref.calls > 100 and fast.events == ref.events and ref.events["reject"] > 0
    assert float((y - y_ref).abs().max()) < 1e-9
    assert len(fast.announced) == fast.events["step"] and fast.announced == fast.evaluated
    exact = torch.stack([torch.cos(2.0 * t), torch.sin(2.0 * t)], -1)
    assert float((y[:, 0] - exact).abs().max()) < 1e-5


def test_float32_state_and_the_probability_flow_in_reverse_time(reference, monkeypatch):
    """sdescore's own use: x_T -> x_eps on a Gaussian's probability flow in float32, the end time as step_t. The
    tolerance weights are formed in float32 here (float64 in torchdiffeq), so the accepted steps may differ in a
    borderline case; the evaluation counts agree within one step and both meet the exact flow to the tolerance."""
    monkeypatch.setattr(sds.flow, "ADAPTIVE_METHODS", ADAPTIVE_METHODS + (reference,))
    target64 = single_gaussian()
    target = single_gaussian(dtype=torch.float32)
    sde = sds.VPSDE()
    x_T = target64.marginal(sde, sde.T).sample(256, generator=torch.Generator().manual_seed(0))
    out = {}
    for method in ("tsit5", reference):
        out[method] = sde.probability_flow(target.score_fn(sde)).sample(x_T.float(), method=method, rtol=1e-5, atol=1e-5)
    exact = target64.ode_solution(sde, x_T, sde.T, 1e-3).float()
    for method, res in out.items():
        assert float((res.x - exact).abs().max()) < 2e-4, method
    assert abs(out["tsit5"].nfe - out[reference].nfe) <= 6
    assert float((out["tsit5"].x - out[reference].x).abs().max()) < 5e-5


def test_tuple_states_keep_torchdiffeqs_mixed_norm(reference):
    """(y, integral of |y|^2): a tuple state, flattened by torchdiffeq and normed per part; same steps, same values."""

    def f(t, state):
        y, _ = state
        return _rotation(t, y), (y**2).sum(-1)

    y0 = (torch.tensor([[1.0, 0.0]], **F64), torch.zeros(1, **F64))
    t = torch.tensor([0.0, 2.0], **F64)
    (y, fast), (y_ref, ref) = _both(reference, f, y0, t, rtol=1e-8, atol=1e-10)
    assert fast.calls == ref.calls
    assert float((y[0] - y_ref[0]).abs().max()) < 1e-12 and float((y[1] - y_ref[1]).abs().max()) < 1e-12
    assert abs(float(y[1][-1, 0]) - 2.0) < 1e-7  # r = 1 all along


def test_step_t_and_jump_t(reference):
    """A drift that jumps at t = 0.5 (jump_t) and an output time landed on exactly (step_t): torchdiffeq's
    handling (stop on both, re-evaluate after the jump) is kept, and the solution is the piecewise closed form."""

    def f(t, y):
        return -y * (1.0 if float(t) < 0.5 else 3.0)

    y0 = torch.ones(4, **F64)
    t = torch.tensor([0.0, 0.45, 0.499, 0.8, 1.0], **F64)  # two interpolated inside the steps before the jump
    opts = dict(rtol=1e-9, atol=1e-12, options={"jump_t": torch.tensor([0.5], **F64), "step_t": torch.tensor([0.8], **F64)})
    (y, fast), (y_ref, ref) = _both(reference, f, y0, t, **opts)
    assert fast.calls == ref.calls and fast.events == ref.events
    assert float((y - y_ref).abs().max()) < 1e-13
    exact = torch.tensor([1.0, math.exp(-0.45), math.exp(-0.499), math.exp(-0.5 - 0.9), math.exp(-0.5 - 1.5)], **F64)
    assert float((y[:, 0] - exact).abs().max()) < 1e-8
    # a time in both step_t and jump_t is refused by both set-ups; sdescore's names it
    both = dict(rtol=1e-6, atol=1e-9, options={"jump_t": torch.tensor([0.5], **F64), "step_t": torch.tensor([0.5, 0.8], **F64)})
    for method in ("tsit5", reference):
        with pytest.raises(ValueError, match="repeated elements"):
            torchdiffeq.odeint(f, y0, t, method=method, **both)
    with pytest.raises(ValueError, match=r"got \[0\.5\] more than once"):
        torchdiffeq.odeint(f, y0, t, method="tsit5", **both)


def test_events_are_located_as_by_torchdiffeq(reference):
    """odeint_event drives the solver through its own loop: the first time the rotation crosses y_1 = 0.5."""
    y0 = torch.tensor([1.0, 0.0], **F64)
    found = {}
    for method in ("tsit5", reference):
        t_event, _ = torchdiffeq.odeint_event(
            lambda t, y: _rotation(t, y), y0, torch.tensor(0.0, **F64), event_fn=lambda t, y: y[1] - 0.5,
            method=method, rtol=1e-10, atol=1e-10,
        )
        found[method] = float(t_event)
    # both within the root finder's tolerance (atol = 1e-10 in time) of the exact crossing, and of each other
    assert abs(found["tsit5"] - math.asin(0.5) / 2.0) < 2e-10 and abs(found[reference] - math.asin(0.5) / 2.0) < 2e-10


def test_gradients_flow_through_the_solve(monkeypatch):
    """y' = theta y: d y(1) / d theta = y0 exp(theta) by backpropagation through the solve, and d y(t1) / d t1 =
    f(t1, y(t1)), which needs the times in the graph (a recorded gradient hands the solve to torchdiffeq's step)."""
    chains = []
    monkeypatch.setattr(_rk, "_axpy_chain", lambda *a: chains.append(1) or _axpy_chain(*a))
    theta = torch.tensor(0.7, **F64, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], **F64)
    ts = torch.tensor([0.0, 1.0], **F64)
    y = torchdiffeq.odeint(lambda t, y: theta * y, y0, ts, method="tsit5", rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(y[-1].sum(), theta)
    assert abs(float(g) - 3.0 * math.exp(0.7)) < 1e-7
    assert not chains  # torchdiffeq's step ran
    with torch.no_grad():
        y_fast = torchdiffeq.odeint(lambda t, y: theta * y, y0, ts, method="tsit5", rtol=1e-10, atol=1e-12)
    assert chains and float((y_fast - y.detach()).abs().max()) < 1e-9  # sdescore's step ran, to the same answer

    t = torch.tensor([0.0, 1.0], **F64, requires_grad=True)
    y = torchdiffeq.odeint(lambda t, y: -t * y, y0, t, method="tsit5", rtol=1e-10, atol=1e-12)
    (gt,) = torch.autograd.grad(y[-1].sum(), t)
    assert abs(float(gt[1]) - (-1.0 * 3.0 * math.exp(-0.5))) < 1e-7


def test_non_finite_derivatives_fail_as_in_torchdiffeq(reference):
    """A derivative that turns NaN: both steps end in torchdiffeq's AssertionError (which sdescore's callers turn
    into a NonFiniteError naming the evaluation), never in a silent NaN result."""

    def f(t, y):
        return y * (float("nan") if float(t) > 0.3 else 1.0)

    for method in ("tsit5", reference):
        with pytest.raises(AssertionError):
            torchdiffeq.odeint(f, torch.ones(3, **F64), torch.tensor([0.0, 1.0], **F64), method=method)


@pytest.mark.parametrize("start", [0.3, 0.0], ids=["mid-solve", "at-t0"])
def test_a_nan_in_the_second_part_of_a_tuple_state_fails_as_in_torchdiffeq(reference, start):
    """(y, q) with q' NaN for t > start (at t0 itself too for start = 0): torchdiffeq's mixed norm takes a Python
    max over the parts, which drops a NaN that is not first, and its step catches the NaN by checking y0 at every
    step; sdescore's step sees it in the error ratio (and in the initial-step heuristic). Every step fails, for
    tsit5 on both steps and for dopri5, and also with a caller's norm that drops the NaN (y0 checked as by
    torchdiffeq); no evaluation is made at a NaN time."""
    times = []

    def f(t, state):
        times.append(float(t))
        y, q = state
        return -y, torch.full_like(q, float("nan") if float(t) > start or start == 0.0 else 1.0)

    y0 = (torch.ones(3, **F64), torch.zeros(1, **F64))
    ts = torch.tensor([0.0, 1.0], **F64)
    python_max = {"norm": lambda parts: max(p.abs().max() for p in parts)}
    for method, options in (("tsit5", None), (reference, None), ("dopri5", None), ("tsit5", python_max)):
        times.clear()
        with pytest.raises(AssertionError, match="non-finite"):
            torchdiffeq.odeint(f, y0, ts, method=method, options=options)
        assert times and all(math.isfinite(t) for t in times), (method, times)


@pytest.mark.parametrize("method", ["tsit5", "dopri5"])
def test_a_state_non_finite_with_finite_scores_is_a_nonfinite_error_for_sdescores_callers(method):
    """sdescore.flow.odeint_naming_nonfinite on a state (x, q) as log_likelihood's: q' turns NaN (as a NaN gradient
    in the divergence does) while every score, of x alone, stays finite. torchdiffeq's step (dopri5) and
    sdescore's (tsit5) fail differently; both become the same NonFiniteError, not a raw AssertionError dumping the
    state. A failure that is not about non-finite values (max_num_steps) is re-raised as it is."""
    from sdescore._score import CheckedScore, NonFiniteError
    from sdescore.flow import odeint_naming_nonfinite

    score = CheckedScore(lambda x, t: -x)

    def f(t, state):
        x, q = state
        return score(x, t.expand(x.shape[0])), torch.full_like(q, float("nan") if float(t) > 0.3 else 1.0)

    x0 = torch.ones(3, 2, **F64)
    y0, ts = (x0, torch.zeros(3, **F64)), torch.tensor([0.0, 1.0], **F64)
    with pytest.raises(NonFiniteError, match=r"^here: the state became non-finite although every score was finite"):
        odeint_naming_nonfinite(score, x0, "here", lambda k, t: None, f, y0, ts, method, {})
    with pytest.raises(NonFiniteError, match="^custom$"):
        odeint_naming_nonfinite(score, x0, "here", lambda k, t: None, f, y0, ts, method, {}, nonfinite_state="custom")
    with pytest.raises(AssertionError, match="max_num_steps"):
        odeint_naming_nonfinite(score, x0, "here", lambda k, t: None, lambda t, y: -y, x0, ts, method,
                                {"rtol": 1e-10, "atol": 1e-10, "options": {"max_num_steps": 2}})


def test_the_lazy_interpolant_is_torchdiffeqs():
    """The quartic fitted on first access equals torchdiffeq's _interp_fit of the same five inputs."""
    from torchdiffeq._impl.interp import _interp_fit

    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(5, generator=gen, **F64) for _ in range(5)] + [torch.tensor(0.1, **F64)]
    calls = []
    lazy = _rk._LazyInterp(lambda: calls.append(1) or _interp_fit(*args))
    assert not calls
    eager = _interp_fit(*args)
    assert len(lazy) == 5 and all(torch.equal(a, b) for a, b in zip(lazy[:], eager)) and calls == [1]


def test_the_function_sees_float64_times_for_a_float32_state():
    """torchdiffeq's wrapper rounds t to the state's dtype; every evaluation of sdescore's step, its set-up's
    (f(t0) and the initial-step probe) included, gets the solver's float64 time."""
    seen = []

    def f(t, y):
        seen.append(t.dtype)
        return -y

    y = torchdiffeq.odeint(f, torch.ones(3), torch.tensor([0.0, 1.0], **F64), method="tsit5", rtol=1e-6, atol=1e-8)
    assert len(seen) > 8 and set(seen) == {torch.float64}
    assert abs(float(y[-1, 0]) - math.exp(-1.0)) < 1e-5
