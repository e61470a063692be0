"""The reverse-time SDE and the probability-flow ODE at their edges: half-precision states integrated in float32, a
Brownian motion that answers each interval once, the step a non-finite evaluation is named by, the recipe for
calling the flow from torchdiffeq directly, and a score on another device."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torchdiffeq
import torchsde

import sdescore as sds
from sdescore.reverse import SDE_METHODS

from _half import HALF, HALF_SDES, gaussian_score

EPS = 1e-3

# the VP-SDE's coefficients fit float16; these are the cases where the drift or velocity does not, and sub-VP's
OVERFLOW_SDES = {name: HALF_SDES[name] for name in ("VE(1e-3,1000)", "VE(0.01,378)", "subVP")}


class _TableBrownian(torchsde.BaseBrownian):
    """The increments sqrt(tb - ta) z_k of a fixed table z of standard normals, the k-th on the k-th query, in `dtype`:
    the same noise for a float64 solve and a float32 one when z is representable in both."""

    def __init__(self, z: torch.Tensor, dtype: torch.dtype):
        self.z, self._dtype, self.k = z.to(dtype), dtype, 0

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        w = math.sqrt(float(tb) - float(ta)) * self.z[self.k]
        self.k += 1
        return w

    def __repr__(self):
        return "_TableBrownian()"

    dtype = property(lambda self: self._dtype)
    device = property(lambda self: self.z.device)
    shape = property(lambda self: self.z.shape[1:])
    levy_area_approximation = property(lambda self: "none")


# ---------------------------------------------------------------------------------------------- half precision
@HALF
@pytest.mark.parametrize("name", list(OVERFLOW_SDES))
@pytest.mark.parametrize("method", ["euler", "heun", "midpoint"])
def test_reverse_sde_in_half_precision_integrates_in_float32_and_follows_the_float64_run(name, dtype, method):
    """ReverseSDE.sample(200 steps) from a half-precision prior sample against the float64 run from the same x_T
    with the same Brownian increments (a table of float16 numbers, exact in both). For VE(1e-3, 1000) the drift
    g^2 s - f at t = T is 2 log(sigma_max / sigma_min) |x| = 27.6 |x|, beyond float16's 65504 for |x| > 2370 (2.4
    sigma of the prior, reached in 64 x 3 draws) although state and step fit: built in x's dtype it was inf, and
    NonFiniteError blamed the score. Now the state, the increments and the drift are float32, the score sees x and t
    in x_T's dtype, and the result is rounded once. The error is that final rounding (eps / 2 of max|x|) plus the
    score's roundings of x, t and its output, which the reverse drift contracts (an error made at noise level sigma
    shrinks with it): measured at most 0.49 eps max|x|; 2 eps max|x| leaves a factor four."""
    sde = OVERFLOW_SDES[name]()
    steps, B, D = 200, 64, 3
    x_T = (sde.prior_std * torch.randn(B, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).to(dtype)
    z = torch.randn(steps, B, D, generator=torch.Generator().manual_seed(1)).half()
    seen = set()
    got = sde.reverse(gaussian_score(sde, seen)).sample(x_T, steps=steps, method=method, eps=EPS,
                                                         bm=_TableBrownian(z, torch.float32))
    want = sde.reverse(gaussian_score(sde)).sample(x_T.double(), steps=steps, method=method, eps=EPS,
                                                    bm=_TableBrownian(z, torch.float64))
    assert got.x.dtype == dtype and seen == {(dtype, dtype)}
    assert got.nfe == want.nfe
    eps = torch.finfo(dtype).eps
    assert float((got.x.double() - want.x).abs().max()) <= 2 * eps * float(want.x.abs().max())


@HALF
@pytest.mark.parametrize("name", list(OVERFLOW_SDES))
@pytest.mark.parametrize("method", ["euler", "milstein", "srk", "midpoint", "heun", "euler_heun"])
def test_reverse_sde_in_half_precision_draws_the_float32_runs_noise_and_follows_it(name, dtype, method):
    """With generator= a half-precision x_T gets the float32 IncrementBrownian a float32 x_T gets: the same
    increments (and srk's Lévy areas) from the same seed. So the half run is the float32 run up to the score's
    roundings and the final one: measured at most 0.46 eps max|x| over these methods, 2 eps max|x| leaves a factor
    four. In float16 the VE(1e-3, 1000) runs raised NonFiniteError at step 0 or 1 (the drift overflowed), blaming
    the score. Reversible Heun is left out: on the VE-SDE at 200 steps it amplifies float32's rounding itself
    (float32 and float64 runs differ by 1 there); log_ode draws from a BrownianInterval, not from generator."""
    sde = OVERFLOW_SDES[name]()
    n = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = (sde.prior_std * n).to(dtype)

    def run(x):
        return sde.reverse(gaussian_score(sde)).sample(x, steps=200, method=method, eps=EPS,
                                                        generator=torch.Generator().manual_seed(1)).x

    got, want = run(x_T), run(x_T.float())
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert float((got.float() - want).abs().max()) <= 2 * eps * float(want.abs().max())


def test_reverse_sde_in_half_precision_takes_a_float32_brownian_motion():
    """The solve of a half-precision x_T runs in float32, so a bm= must be float32: a float16 one is refused,
    naming the dtype to create it with."""
    sde = sds.VPSDE()
    x_T = torch.zeros(4, 2, dtype=torch.float16)

    def bm(dtype):
        return torchsde.BrownianInterval(t0=0.0, t1=sde.T - EPS, size=(4, 2), dtype=dtype, entropy=0)

    with pytest.raises(TypeError, match=r"bm must have the state's dtype torch\.float32, got torch\.float16; create it "
                                        r"with dtype=torch\.float32 \(the solve runs .* in float32 for a half"):
        sde.reverse(lambda x, t: -x).sample(x_T, steps=5, eps=EPS, bm=bm(torch.float16))
    assert sde.reverse(lambda x, t: -x).sample(x_T, steps=5, eps=EPS, bm=bm(torch.float32)).x.dtype == torch.float16


@HALF
@pytest.mark.parametrize("name", list(OVERFLOW_SDES))
@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "rk4"])
@pytest.mark.parametrize("direction", ["sample", "encode"])
def test_probability_flow_in_half_precision_integrates_in_float32_and_follows_the_float64_run(
    name, dtype, method, direction
):
    """ProbabilityFlowODE.sample / encode with 50 fixed steps from a half-precision state, against the float64 run
    from the same state. For VE(1e-3, 1000) the velocity at t = T is log(sigma_max / sigma_min) |x| = 13.8 |x|,
    beyond float16's 65504 for a 4.75-sigma coordinate (one is set to 4.8 sigma): in x's dtype it was inf. Now the
    state and the velocity are float32, the score sees x and t in the state's dtype, and the result is rounded once.
    Each step's increment carries the score's roundings of x, t and its output: eps / 2 each, and t's through
    d log s / dt = 2 log(sigma_max / sigma_min), up to 7 eps for t near 1. For the linear flow of Gaussian data a
    relative error stays relative to the end, and the 50 steps' errors, of both signs, add like a random walk:
    measured at most 5.9 eps max|x| (midpoint, bfloat16, VE(1e-3, 1000)); 16 eps max|x| leaves a factor 2.7. The
    Adams methods are left out: at 50 steps they diverge on the VE-SDE in float64 too."""
    sde = OVERFLOW_SDES[name]()
    B, D = 64, 3
    n = torch.randn(B, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if direction == "sample":
        x = sde.prior_std * n
        x[0, 0] = 4.8 * sde.prior_std
    else:
        x = n
    x = x.to(dtype)
    seen = set()
    got = getattr(sde.probability_flow(gaussian_score(sde, seen)), direction)(x, method=method, steps=50, eps=EPS)
    want = getattr(sde.probability_flow(gaussian_score(sde)), direction)(x.double(), method=method, steps=50, eps=EPS)
    assert got.x.dtype == dtype and seen == {(dtype, dtype)}
    assert got.nfe == want.nfe
    eps = torch.finfo(dtype).eps
    assert float((got.x.double() - want.x).abs().max()) <= 16 * eps * float(want.x.abs().max())


@pytest.mark.parametrize(
    "run, where",
    [
        (lambda sde, s, x: sde.reverse(s).sample(x, steps=20, eps=EPS, generator=torch.Generator().manual_seed(0)),
         r"ReverseSDE\.sample\(method='euler'\)"),
        (lambda sde, s, x: sde.probability_flow(s).sample(x, method="euler", steps=20, eps=EPS),
         r"ProbabilityFlowODE\.sample"),
    ],
    ids=["reverse", "flow"],
)
def test_a_half_precision_result_beyond_its_dtype_is_named(run, where):
    """The constant score k = 1/4 (of the density proportional to exp(k x)) moves x by (k / 2) (sigma(T)^2 -
    sigma(eps)^2) = 1.25e5 along the flow of VE(1e-3, 1000), twice that in the reverse SDE (Euler's 20 steps: 1.3e5
    and 4.6e5): finite in the float32 solve, beyond float16's 65504 once rounded. The message says so, names x_T's
    dtype and the fix, instead of reporting a state that became non-finite although every score was finite."""
    sde = sds.VESDE(sigma_min=1e-3, sigma_max=1000.0)
    x_T = torch.zeros(4, 2, dtype=torch.float16)
    with pytest.raises(sds.NonFiniteError, match=where + r": the result \(max \|x\| = \d{6}, finite in "
                       r"torch\.float32\) exceeds the range of x_T's dtype torch\.float16 \(largest 65504\); pass x_T "
                       r"in float32\."):
        run(sde, lambda x, t: torch.full_like(x, 0.25), x_T)


# ---------------------------------------------------------------------------------------------- IncrementBrownian
def test_increment_brownian_answers_each_interval_once_forward_in_time():
    """It keeps no path: a second query of an answered interval, or one reaching back before its end, would get
    fresh noise instead of the same path's increment. It raises, naming the interval and torchsde.BrownianInterval;
    consecutive and disjoint later intervals (independent increments) are answered."""
    bm = sds.IncrementBrownian((2, 3), torch.float64, "cpu", torch.Generator().manual_seed(0))
    assert bm(0.0, 0.1).shape == (2, 3) and bm(0.1, 0.3).shape == (2, 3)
    for ta, tb in ((0.1, 0.3), (0.0, 0.1), (0.2, 0.4)):
        with pytest.raises(ValueError, match=rf"asked for W\({tb}\) - W\({ta}\), an interval that starts before the "
                           r"end 0\.3 of the last one answered.*use torchsde\.BrownianInterval"):
            bm(ta, tb)
    assert bm(0.5, 0.6).shape == (2, 3)  # a later, disjoint interval
    with pytest.raises(ValueError, match=r"for ta <= tb, forward in time; got ta=0\.7, tb=0\.65"):
        bm(0.7, 0.65)


def test_sdeint_adjoint_refuses_an_increment_brownian_instead_of_returning_wrong_gradients():
    """torchsde.sdeint_adjoint walks the forward solve's intervals again from the end. IncrementBrownian answered
    them with fresh noise, and the gradient with respect to x0 was off by 44 % of its size, silently. It now raises;
    torchsde.BrownianInterval, which the message points to, reproduces the same path and the gradient of the
    solve differentiated directly (reversible Heun's adjoint is exact up to rounding: measured 5e-8, bound 1e-6)."""
    sde = sds.VPSDE()
    W = torch.nn.Parameter(torch.tensor([[1.0, 0.3], [0.0, 0.8]], dtype=torch.float64))
    rsde = sds.ReverseSDE(sde, lambda x, t: -x @ W - 0.5 * torch.sin(x), sde_type="stratonovich")
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ts = torch.tensor([0.0, 0.3], dtype=torch.float64)
    kw = dict(method="reversible_heun", dt=0.01)
    adjoint = dict(kw, adjoint_method="adjoint_reversible_heun", adjoint_params=(W,))
    incr = sds.IncrementBrownian((8, 2), torch.float64, "cpu", torch.Generator().manual_seed(1))
    y = torchsde.sdeint_adjoint(rsde, x, ts, bm=incr, **adjoint)[-1]
    with pytest.raises(ValueError, match=r"starts before the end 0\.3.*torchsde\.sdeint_adjoint"
                                         r".*torchsde\.BrownianInterval"):
        torch.autograd.grad(y.pow(2).sum(), x)

    def interval():
        return torchsde.BrownianInterval(0.0, 0.3, size=(8, 2), dtype=torch.float64, entropy=1)

    direct, = torch.autograd.grad(torchsde.sdeint(rsde, x, ts, bm=interval(), **kw)[-1].pow(2).sum(), x)
    adj, = torch.autograd.grad(torchsde.sdeint_adjoint(rsde, x, ts, bm=interval(), **adjoint)[-1].pow(2).sum(), x)
    assert float((adj - direct).abs().max()) <= 1e-6 * float(direct.abs().max())


@pytest.mark.parametrize("method", sorted(m for m, (_, levy) in SDE_METHODS.items() if levy != "foster"))
def test_every_fixed_step_method_queries_each_interval_of_the_grid_once_in_order(method, monkeypatch):
    """Every method that `sample` gives an IncrementBrownian (all but 'log_ode', which needs torchsde's Lévy area)
    asks it for the increments of the `steps` intervals of the grid, consecutive, from 0 to T - eps, each once:
    the pattern its no-memory rule allows. With the increments it draws, the solve makes its count of evaluations
    (one more than steps for reversible Heun, the srk stages' repeats answered by the memo)."""
    queries = []

    class Spy(sds.IncrementBrownian):
        def __call__(self, ta, tb=None, return_U=False, return_A=False):
            queries.append((float(ta), float(tb)))
            return super().__call__(ta, tb, return_U, return_A)

    monkeypatch.setattr("sdescore.reverse.IncrementBrownian", Spy)
    sde, steps = sds.VPSDE(), 7
    r = sde.reverse(lambda x, t: -x).sample(torch.randn(4, 2, dtype=torch.float64), steps=steps, method=method, eps=EPS,
                                            generator=torch.Generator().manual_seed(0))
    assert len(queries) == steps and queries[0][0] == 0.0
    assert all(a[1] == b[0] for a, b in zip(queries, queries[1:]))
    assert queries[-1][1] == pytest.approx(sde.T - EPS, rel=1e-12)
    per_step = {"euler": 1, "milstein": 1, "euler_heun": 1, "midpoint": 2, "heun": 2, "srk": 4}
    assert r.nfe == (steps + 1 if method == "reversible_heun" else per_step[method] * steps)
    assert bool(torch.isfinite(r.x).all())


# ---------------------------------------------------------------------------------------------- naming the step
def _named(run) -> tuple[int, int]:
    """(step, score evaluation) that the NonFiniteError of run() names."""
    with pytest.raises(sds.NonFiniteError) as info:
        run()
    msg = str(info.value)
    return int(msg.split("at step ")[1].split(" ")[0]), int(msg.split("score evaluation ")[1].split(")")[0])


def _nan_where(cond):
    return lambda x, t: torch.where(cond(t)[:, None], torch.full_like(x, float("nan")), -x)


FIXED = [("euler", 5), ("midpoint", 5), ("heun2", 4), ("heun3", 5), ("rk4", 4), ("explicit_adams", 5)]


@pytest.mark.parametrize("method, step", FIXED)
def test_probability_flow_names_the_step_that_made_the_non_finite_evaluation(method, step):
    """A score that is NaN from the grid time t_5 = T - 5 h on (10 steps of h = (T - eps) / 10, from T down). euler,
    midpoint and heun3 first evaluate there at the start of step 5; heun2's and rk4's last stage lies at the end of
    step 4, the time of step 5's start, and was named step 5 (the step of the time alone). The Adams methods, whose
    count varies from step to step, keep the time rule: explicit_adams evaluates once per step after its
    Runge–Kutta start, at the step's start."""
    sde = sds.VPSDE()
    cut = sde.T - 5 * (sde.T - EPS) / 10 + 1e-9
    run = lambda: sde.probability_flow(_nan_where(lambda t: t <= cut)).sample(  # noqa: E731
        torch.randn(4, 2, dtype=torch.float64), method=method, steps=10, eps=EPS)
    assert _named(run)[0] == step


@pytest.mark.parametrize("method, step", FIXED)
def test_log_likelihood_names_the_step_that_made_the_non_finite_evaluation(method, step):
    """As for the flow, in the likelihood's direction (eps up to T, in tau = t): NaN from t_5 = eps + 5 h on. heun2's
    and rk4's last stage at the end of step 4 was named step 5."""
    sde = sds.VPSDE()
    cut = EPS + 5 * (sde.T - EPS) / 10 - 1e-9
    x = torch.randn(4, 2, dtype=torch.float64)
    run = lambda: sds.log_likelihood(  # noqa: E731
        sde, _nan_where(lambda t: t >= cut), x, method=method, steps=10, eps=EPS, time_variable="t")
    assert _named(run)[0] == step


def test_an_adams_method_whose_count_is_a_multiple_of_steps_keeps_the_time_rule():
    """explicit_adams with 6 steps makes 12 evaluations (2 Runge–Kutta starting steps of 4, then 1 a step), a
    multiple of steps that does not mean 2 a step: NaN from t_4 on is its evaluation 10, at the start of step 4
    (10 // 2 = 5 would be wrong)."""
    sde = sds.VPSDE()
    cut = sde.T - 4 * (sde.T - EPS) / 6 + 1e-9
    finite = sde.probability_flow(lambda x, t: -x)
    assert finite.sample(torch.randn(4, 2, dtype=torch.float64), method="explicit_adams", steps=6, eps=EPS).nfe == 12
    run = lambda: sde.probability_flow(_nan_where(lambda t: t <= cut)).sample(  # noqa: E731
        torch.randn(4, 2, dtype=torch.float64), method="explicit_adams", steps=6, eps=EPS)
    assert _named(run) == (4, 10)


THRESHOLDS = torch.linspace(0.05, 0.95, 7, dtype=torch.float64).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("method", ["euler", "explicit_adams"])
def test_probability_flow_names_the_step_despite_the_rounding_of_t(method, dtype):
    """torchdiffeq casts the solver's time to the state's dtype (float32 for a float16 state, now integrated in
    float32): a node t_k may come out up to 3e-8 above its value, which the time rule int(|t - t0| / h + 1e-6) put
    in step k - 1 (20 of 37 thresholds at 1000 steps). A NaN below each threshold: Euler's step is its evaluation's
    index; explicit_adams' (time rule, now with a margin of the dtype's rounding) the first node below it."""
    sde = sds.VPSDE()
    # the times the score sees: the solver's, cast to float32 by torchdiffeq, then to the state's dtype
    nodes = torch.linspace(sde.T, EPS, 1001, dtype=torch.float64).float().to(dtype)
    for thr in THRESHOLDS:
        first = int((nodes < thr).nonzero()[0, 0])
        run = lambda: sde.probability_flow(_nan_where(lambda t: t < thr)).sample(  # noqa: E731
            torch.randn(2, 2).to(dtype), method=method, steps=1000, eps=EPS)
        step, k = _named(run)
        assert step == first and (k == first if method == "euler" else k == first + 6), (thr, step, k)


@pytest.mark.parametrize("method", ["euler", "explicit_adams"])
def test_log_likelihood_names_the_step_despite_the_rounding_of_t(method):
    """As for the flow, in float32 with tau = t from eps up: the old rule named step k - 1 for 3 of these 7
    thresholds."""
    sde = sds.VPSDE()
    nodes = torch.linspace(EPS, sde.T, 1001, dtype=torch.float64).float()
    for thr in THRESHOLDS:
        first = int((nodes > thr).nonzero()[0, 0])
        x = torch.randn(2, 2)
        run = lambda: sds.log_likelihood(  # noqa: E731
            sde, _nan_where(lambda t: t > thr), x, method=method, steps=1000, eps=EPS, time_variable="t")
        step, k = _named(run)
        assert step == first and (k == first if method == "euler" else k == first + 6), (thr, step, k)


# ---------------------------------------------------------------------------------------------- torchdiffeq directly
def test_the_recipe_of_the_flows_time_error_integrates_with_odeint_and_odeint_adjoint():
    """Called by an adaptive torchdiffeq solver with options={'step_t': [t1]} only, the flow was probed at
    t0 + h0 = 11.5 by the initial step-size heuristic (VE-SDE, encode) and raised; its message recommended exactly
    that. The message now gives options={'step_t': ts[-1:], 'first_step': h} and, for odeint_adjoint, the backward
    solve's adjoint_options (step_t at t0, negated where t decreases). Run as written, for both directions and
    two methods, on Gaussian data with the exact score s = -W x / v(t), v = alpha^2 + std^2, W = 1: z = c x0 with
    c = sqrt(v(t1) / v(t0)), and d(|z|^2 / 2)/dx0 = c^2 x0, d(|z|^2 / 2)/dW = |z|^2 K with
    K = log(v(t1) / v(t0)) / 2 - log(alpha(t1) / alpha(t0)). rtol = 1e-8 (atol 1e-12, below every value: the
    gradient is 1e-3 in size) over some hundred steps: 1e-6 relative bounds the solution and both gradients
    (measured at most 2e-8). No warning either: float(t) of a time that requires grad (the adjoint's) warned."""
    for sde in (sds.VESDE(), sds.SubVPSDE()):
        W = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def score(x, t, sde=sde, W=W):
            alpha, std = sde.kernel(t)
            return -W * x / (alpha**2 + std**2)[:, None]

        ode = sde.probability_flow(score)
        with pytest.raises(ValueError, match=r"got t=1\.5: .*options=\{'step_t': ts\[-1:\], 'first_step': h\}.*"
                           r"odeint_adjoint also adjoint_options=\{'step_t': ts\[:1\] if t1 > t0 else -ts\[:1\], "
                           r"'first_step': h\}"):
            ode(torch.tensor(1.5, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64))
        x0 = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
        for ts in ([EPS, sde.T], [sde.T, EPS]):
            ts = torch.tensor(ts, dtype=torch.float64)
            t0, t1 = float(ts[0]), float(ts[1])
            h = abs(t1 - t0) / 100
            alpha, std = sde.kernel(ts)
            v = alpha**2 + std**2
            c = float(torch.sqrt(v[1] / v[0]))
            K = float(0.5 * torch.log(v[1] / v[0]) - torch.log(alpha[1] / alpha[0]))
            for method in ("dopri5", "tsit5"):
                kw = dict(rtol=1e-8, atol=1e-12, method=method, options={"step_t": ts[-1:], "first_step": h})
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    z = torchdiffeq.odeint(ode, x0, ts, **kw)[-1]
                    za = torchdiffeq.odeint_adjoint(
                        ode, x0, ts, **kw, adjoint_params=(W,),
                        adjoint_options={"step_t": ts[:1] if t1 > t0 else -ts[:1], "first_step": h},
                    )[-1]
                    gx, gW = torch.autograd.grad(za.pow(2).sum() / 2, (x0, W))
                exact = c * x0.detach()
                for got in (z.detach(), za.detach()):
                    assert float((got - exact).abs().max()) <= 1e-6 * float(exact.abs().max()), (sde, t0, method)
                assert float((gx - c * exact).abs().max()) <= 1e-6 * float((c * exact).abs().max())
                want_W = float(exact.pow(2).sum()) * K
                assert abs(float(gW) - want_W) <= 1e-6 * abs(want_W), (sde, t0, method, float(gW), want_W)


# ---------------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize(
    "run",
    [
        lambda sde, s, x: sde.reverse(s).sample(x, steps=3, eps=EPS),
        lambda sde, s, x: sde.probability_flow(s).sample(x, eps=EPS),
        lambda sde, s, x: sde.probability_flow(s).encode(x, method="rk4", steps=3, eps=EPS),
        lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, steps=3, eps=EPS),
    ],
    ids=["reverse", "flow", "encode", "pc"],
)
def test_a_score_on_another_device_is_named(run):
    """A score returning its tensor on another device (the 'meta' device standing in for a GPU) failed later, in
    the solver's arithmetic, with torch's message naming no function: a ValueError now names score_fn and both
    devices, at its first evaluation."""
    calls = []

    def score(x, t):
        calls.append(1)
        return torch.zeros_like(x, device="meta")

    with pytest.raises(ValueError, match=r"score_fn returned a tensor on device meta for x on device cpu; return it "
                                         r"on x's device"):
        run(sds.VPSDE(), score, torch.randn(4, 2, dtype=torch.float64))
    assert len(calls) == 1
