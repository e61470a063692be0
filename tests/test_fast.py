"""Fast samplers against closed forms: convergence orders on the exact Gaussian flow, exactness of the
exponential integrators on polynomial integrands, honest nfe, laws of the stochastic samplers, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as sps
import torch

import sdescore as sds
from sdescore._score import CheckedScore, NonFiniteError
from sdescore.fast import (
    FAST_SAMPLERS,
    FixedStepSampler,
    _Multistep,
    _Run,
    adaptive_ode_sample,
    adaptive_sde_sample,
    dpm_solver_pp_sample,
    dpm_solver_sample,
    heun_sample,
)
from sdescore.sde import SDE, batch_view
from validation import ring, single_gaussian
from validation.stats import sliced_ks_test

from _half import HALF

LEVEL = 0.01  # null level of every statistical test here: each fails by chance with probability <= 1%


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small tensors: a second intra-op thread only adds synchronisation (on a busy machine, milliseconds per op).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _gaussian():
    """A 3-D Gaussian with a rotated covariance of eigenvalues 0.05, 1 and 4: stiff and anisotropic."""
    Q, _ = torch.linalg.qr(torch.tensor([[1.0, 0.4, -0.3], [0.2, 1.0, 0.5], [-0.6, 0.1, 1.0]], dtype=torch.float64))
    cov = Q @ torch.diag(torch.tensor([0.05, 1.0, 4.0], dtype=torch.float64)) @ Q.T
    return single_gaussian([1.0, -0.5, 2.0], 0.5 * (cov + cov.T))


class EDMSDE(SDE):
    """A user's own SDE, written without sdescore's help: x_t = x0 + t sigma_max z (Karras et al. 2022, sigma(t) = t).

    Neither VE (sigma is linear, not geometric) nor VP; the published DPM-Solvers do not cover it.
    """

    def __init__(self, sigma_max: float = 80.0):
        super().__init__()
        self.sigma_max = sigma_max

    def f(self, x, t):
        return torch.zeros_like(x)

    def g(self, t):
        return self.sigma_max * torch.sqrt(2.0 * t)

    def kernel(self, t):
        return torch.ones_like(t), self.sigma_max * t

    def t_from_log_snr(self, log_snr):
        return torch.exp(-0.5 * log_snr) / self.sigma_max


SDE_CASES = {
    "VE": (lambda: sds.VESDE(0.01, 50.0), 1e-3),
    "VP": (lambda: sds.VPSDE(), 1e-3),
    "subVP": (lambda: sds.SubVPSDE(), 1e-3),
    "EDM": (lambda: EDMSDE(), 2.5e-5),
}

# (sampler, options, theoretical global order)
ORDER_CASES = {
    "heun": (heun_sample, {}, 2),
    "heun_log_snr_grid": (heun_sample, {"grid": "log_snr"}, 2),
    "dpm_solver_1": (dpm_solver_sample, {"order": 1}, 1),
    "dpm_solver_2": (dpm_solver_sample, {"order": 2}, 2),
    "dpm_solver_3": (dpm_solver_sample, {"order": 3}, 3),
    "dpm_solver_2m": (dpm_solver_sample, {"order": 2, "multistep": True}, 2),
    "dpm_solver_pp_2m": (dpm_solver_pp_sample, {"order": 2}, 2),
}


def _fitted_order(errors, steps) -> float:
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def _rms(x, y) -> float:
    return float((x - y).flatten(1).norm(dim=1).pow(2).mean().sqrt())


@pytest.mark.parametrize("sde_name", list(SDE_CASES))
@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_error_against_the_exact_gaussian_flow_decreases_at_the_theoretical_order(sde_name, case):
    """log error vs log steps has slope -order (within 0.25) against the closed-form probability-flow ODE solution."""
    make, eps = SDE_CASES[sde_name]
    sde = make()
    fn, options, order = ORDER_CASES[case]
    target = _gaussian()
    dm = target.diffuse(sde)
    x_T = dm.sample(64, sde.T, torch.Generator().manual_seed(0))
    exact = target.ode_solution(sde, x_T, sde.T, eps)
    steps = [32, 64, 128, 256]
    errors = [_rms(fn(sde, dm, x_T, steps=n, eps=eps, **options).x, exact) for n in steps]
    assert abs(_fitted_order(errors, steps) - order) < 0.25, errors


def _exact_history_step(sde, method, score_fn, exact_at, ts, x0):
    """Run the multistep method over ts with the exact state fed in at every node; return the last step's error."""
    return _multistep_from(sde, score_fn, method, ts, x0, exact_at, len(ts) - 2) - exact_at(float(ts[-1]))


@pytest.mark.parametrize("data_prediction", [False, True], ids=["dpm_solver", "dpm_solver_pp"])
@pytest.mark.parametrize("order", [2, 3])
def test_multistep_step_has_local_error_of_order_k_plus_one_given_the_exact_history(sde, order, data_prediction):
    """One k-th order multistep step from exact past states errs by O(h^(k+1)) (uniform log-SNR spacing h)."""
    target = _gaussian()
    dm = target.diffuse(sde)
    t0 = 0.5
    x0 = dm.sample(32, t0, torch.Generator().manual_seed(1))
    lam0 = 0.5 * float(sde.log_snr(torch.tensor([t0], dtype=torch.float64)))
    hs = [0.1, 0.05, 0.025, 0.0125]
    errors = []
    for h in hs:
        lam = torch.tensor([lam0 + k * h for k in range(order + 1)], dtype=torch.float64)
        ts = sde.t_from_log_snr(2.0 * lam)
        ts[0] = t0
        method = _Multistep(order, data_prediction, lower_order_final=False)
        err = _exact_history_step(sde, method, dm, lambda t: target.ode_solution(sde, x0, t0, t), ts, x0)
        errors.append(float(err.norm(dim=1).mean()))
    assert abs(-_fitted_order(errors, hs) - (order + 1)) < 0.35, errors


def _multistep_from(sde, dm, method, ts, x_T, exact_at=None, exact_steps=0):
    """Run `method` over ts from x_T; with exact_at, the states after the first exact_steps steps are the exact flow's."""
    run = _Run(sde, CheckedScore(dm), ts, x_T, None)
    method.prepare(run)
    x = x_T
    for i in range(len(ts) - 1):
        x = method.step(run, x, i)
        if i < exact_steps:
            x = exact_at(float(ts[i + 1]))
    return x


@pytest.mark.parametrize("data_prediction", [False, True], ids=["dpm_solver_3m", "dpm_solver_pp_3m"])
def test_third_order_multistep_is_globally_second_order_through_its_warm_up(data_prediction):
    """3M's first step is DPM-Solver-1 (no past evaluations): its O(h^2) local error makes the global error O(h^2).

    On the VE-SDE and the exact Gaussian flow: the fitted slope of log error against log steps is 2 (within 0.3)
    between 512 and 2048 steps; with the states after the first two (warm-up) steps replaced by the exact flow,
    the runs of 64-256 steps fall at 3 or faster (measured 3.8-4.6; beyond 512 steps such errors reach float64
    rounding). Both halves fail if the warm-up's order or the steady 3M step changes.
    """
    sde = sds.VESDE()
    target = _gaussian()
    dm = target.diffuse(sde)
    x_T = dm.sample(32, sde.T, torch.Generator().manual_seed(3))
    eps = 1e-3
    exact = target.ode_solution(sde, x_T, sde.T, eps)

    def error(n, exact_steps):
        ts = sds.time_grid(sde, n, "log_snr", eps)
        method = _Multistep(3, data_prediction, lower_order_final=False)
        exact_at = lambda t: target.ode_solution(sde, x_T, sde.T, t)  # noqa: E731
        return _rms(_multistep_from(sde, dm, method, ts, x_T, exact_at, exact_steps), exact)

    plain_steps, warm_steps = [512, 1024, 2048], [64, 128, 256]
    plain = [error(n, 0) for n in plain_steps]
    warm = [error(n, 2) for n in warm_steps]
    assert abs(_fitted_order(plain, plain_steps) - 2.0) < 0.3, plain
    assert _fitted_order(warm, warm_steps) > 3.0, warm


def _multistep_orders_taken(steps, lower_order_final):
    """The order each step of 3M took: each step is checked against single multistep steps of orders 1, 2, 3 fed the
    same history, and the orders whose step equals it (bit for bit) are listed."""
    sde = sds.VPSDE()
    dm = _gaussian().diffuse(sde)
    x_T = dm.sample(16, sde.T, torch.Generator().manual_seed(4))
    ts = sds.time_grid(sde, steps, "log_snr", 1e-3)
    method = _Multistep(3, True, lower_order_final=lower_order_final)
    run = _Run(sde, CheckedScore(dm), ts, x_T, None)
    method.prepare(run)
    x, orders = x_T, []
    for i in range(steps):
        history = list(method.history)
        out = method.step(run, x, i)
        match = []
        for k in (1, 2, 3):
            probe = _Multistep(k, True, lower_order_final=False)
            probe.history = history[-(k - 1):] if k > 1 else []
            run_k = _Run(sde, CheckedScore(dm), ts, x_T, None)
            if len(probe.history) + 1 >= k and torch.equal(probe.step(run_k, x, i), out):
                match.append(k)
        orders.append(match)
        x = out
    return orders


@pytest.mark.parametrize("steps", [5, 9, 10])
def test_lower_order_final_lowers_the_last_steps_orders_below_ten_steps(steps):
    """With lower_order_final and steps < 10, 3M takes orders min(3, i + 1, steps - i): [1, 2, 3, 2, 1] at 5 steps;
    from 10 steps on, and without lower_order_final, min(3, i + 1) (Lu et al.'s rule, as documented). 9 and 10 pin
    the boundary."""
    lowered = [[min(3, i + 1, steps - i)] for i in range(steps)]
    plain = [[min(3, i + 1)] for i in range(steps)]
    assert _multistep_orders_taken(steps, True) == (lowered if steps < 10 else plain)
    assert _multistep_orders_taken(steps, False) == plain


@pytest.mark.parametrize("data_prediction", [False, True], ids=["noise_form", "data_form"])
def test_third_order_multistep_integrates_a_quadratic_in_log_snr_exactly(sde, data_prediction):
    """If eps_hat (or D) is a quadratic polynomial of lambda, one 3M step from exact history is exact.

    x_s = alpha_s/alpha_t x_t - alpha_s int e^{-lambda} eps_hat d lambda (noise form), and the data-form twin: the
    exponential integrator with the quadratic interpolant of three values reproduces the integral exactly. This
    pins the weight of the second divided difference (a factor 2 away from the one in Lu et al.'s code).
    """
    c = (0.3, -0.7, 0.25)
    p = lambda lam: c[0] + c[1] * lam + c[2] * lam**2  # noqa: E731

    def score(x, t):
        alpha, std = sde.kernel(t.to(torch.float64))
        value = p(torch.log(alpha / std))
        if data_prediction:  # D = p(lambda): score = (alpha D - x) / std^2
            return (batch_view(alpha * value, x) - x) / batch_view(std * std, x)
        return batch_view(-value / std, x).expand_as(x).clone()  # eps_hat = -std score = p(lambda)

    def exact(x_from, t_from, t_to):
        lam_a, lam_b = (0.5 * float(sde.log_snr(torch.tensor([s], dtype=torch.float64))) for s in (t_from, t_to))
        ka, kb = (sde.kernel(torch.tensor([s], dtype=torch.float64)) for s in (t_from, t_to))
        sign = 1.0 if data_prediction else -1.0
        # int e^{sign lam} p(lam) d lam in closed form: repeated integration by parts.
        def F(lam):
            e = math.exp(sign * lam)
            return e * (sign * p(lam) - (c[1] + 2 * c[2] * lam) + sign * 2 * c[2]) if sign > 0 else -e * (
                p(lam) + (c[1] + 2 * c[2] * lam) + 2 * c[2]
            )
        integral = F(lam_b) - F(lam_a)
        if data_prediction:
            return float(kb[1] / ka[1]) * x_from + float(kb[1]) * integral
        return float(kb[0] / ka[0]) * x_from - float(kb[0]) * integral

    x0 = torch.tensor([[0.5]], dtype=torch.float64)
    ts = torch.tensor([0.9, 0.7, 0.45, 0.3], dtype=torch.float64)
    method = _Multistep(3, data_prediction, lower_order_final=False)
    err = _exact_history_step(sde, method, score, lambda t: exact(x0, 0.9, t), ts, x0)
    scale = float(exact(x0, 0.9, 0.3).abs())
    assert float(err.abs()) < 1e-10 * max(scale, 1.0)


def test_float32_state_gives_the_float64_result_to_float32_accuracy():
    sde, target = sds.VPSDE(), _gaussian()
    dm64 = target.diffuse(sde)
    dm32 = target.to(torch.float32).diffuse(sde)
    x_T = dm64.sample(128, sde.T, torch.Generator().manual_seed(0))
    for name, sampler in FAST_SAMPLERS.items():
        if not isinstance(sampler, FixedStepSampler) or sampler.stochastic:
            continue
        r64 = sampler(sde, dm64, x_T, steps=12)
        r32 = sampler(sde, dm32, x_T.float(), steps=12)
        assert r32.x.dtype == torch.float32, name
        assert _rms(r32.x.double(), r64.x) < 1e-4 * _rms(r64.x, 0 * r64.x), name


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.mark.parametrize("name", [n for n, s in FAST_SAMPLERS.items() if isinstance(s, FixedStepSampler)])
@pytest.mark.parametrize("denoise", [False, True])
def test_nfe_is_the_number_of_score_calls_and_matches_the_budget_rule(name, denoise):
    sde = sds.VESDE(0.01, 50.0)
    dm = ring().diffuse(sde)
    sampler = FAST_SAMPLERS[name]
    score = _Counter(dm)
    steps = sampler.steps_for(35, denoise=denoise)
    out = sampler(sde, score, dm.sample(16, 1.0), steps=steps, generator=torch.Generator().manual_seed(0), denoise=denoise)
    assert out.nfe == score.calls == steps * sampler.evals_per_step + int(denoise)
    assert out.nfe <= 35


def test_denoise_returns_tweedies_posterior_mean_at_eps(sde):
    target = _gaussian()
    dm = target.diffuse(sde)
    x_T = dm.sample(32, sde.T, torch.Generator().manual_seed(0))
    for fn in (heun_sample, dpm_solver_sample, dpm_solver_pp_sample):
        plain = fn(sde, dm, x_T, steps=10)
        clean = fn(sde, dm, x_T, steps=10, denoise=True)
        torch.testing.assert_close(clean.x, dm.denoiser(plain.x, 1e-3), rtol=1e-10, atol=1e-10)
        assert clean.nfe == plain.nfe + 1


def test_adaptive_ode_matches_the_exact_flow_at_tight_tolerance(sde):
    target = _gaussian()
    dm = target.diffuse(sde)
    x_T = dm.sample(32, sde.T, torch.Generator().manual_seed(0))
    out = adaptive_ode_sample(sde, dm, x_T, rtol=1e-9, atol=1e-9)
    assert _rms(out.x, target.ode_solution(sde, x_T, sde.T, 1e-3)) < 1e-6
    loose = adaptive_ode_sample(sde, dm, x_T, rtol=1e-3, atol=1e-3)
    assert loose.nfe < out.nfe


# ---------------------------------------------------------------------- stochastic samplers: their law
STOCHASTIC = {
    "heun_churn": lambda sde, dm, x, g, eps: FAST_SAMPLERS["heun_churn"](sde, dm, x, steps=150, eps=eps, generator=g),
    "adaptive_sde": lambda sde, dm, x, g, eps: adaptive_sde_sample(sde, dm, x, rtol=0.05, eps=eps, generator=g),
}


@pytest.mark.parametrize("sde_name", ["VE", "VP"])
@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_stochastic_sampler_draws_the_law_at_eps_of_the_ring(sde_name, name):
    """Sliced KS test of the samples against the exact law p_eps (a one-sample test with an exact null), level 1%."""
    make, eps = SDE_CASES[sde_name]
    sde = make()
    target = ring()
    dm = target.diffuse(sde)
    g = torch.Generator().manual_seed(2)
    x_T = dm.sample(2000, sde.T, g)
    out = STOCHASTIC[name](sde, dm, x_T, g, eps)
    result = sliced_ks_test(out.x, dm.marginal(eps), generator=torch.Generator().manual_seed(3))
    assert result.passed(LEVEL), result


@pytest.mark.parametrize("sde_name", ["VE", "VP"])
def test_redrawing_rejected_noise_biases_the_adaptive_solver_and_the_brownian_bridge_does_not(sde_name):
    """For N(0, I) data the law at eps is N(0, (alpha^2 + std^2) I). With the published redraw the accepted
    increments are selected by size and the variance is off by far more than its sampling error; with the bridge
    the same test passes at level 1%. (Also shows that the test has the power to fail.)"""
    make, eps = SDE_CASES[sde_name]
    sde = make()
    target = single_gaussian([0.0, 0.0], [1.0, 1.0])
    dm = target.diffuse(sde)
    g = torch.Generator().manual_seed(4)
    x_T = dm.sample(3000, sde.T, g)
    law = dm.marginal(eps)
    biased = adaptive_sde_sample(sde, dm, x_T, rtol=0.02, eps=eps, generator=g, redraw_rejected=True)
    bridged = adaptive_sde_sample(sde, dm, x_T, rtol=0.02, eps=eps, generator=g)
    assert not sliced_ks_test(biased.x, law, generator=torch.Generator().manual_seed(5)).passed(LEVEL)
    assert sliced_ks_test(bridged.x, law, generator=torch.Generator().manual_seed(5)).passed(LEVEL)


class _Brownian(SDE):
    """dx = dw on [0, 1]: f = 0 (a linear drift, folded in), g = 1."""

    def f(self, x, t):
        return torch.zeros_like(x)

    def linear_drift(self, t):
        return torch.zeros_like(t)

    def g(self, t):
        return torch.ones_like(t)


@pytest.mark.parametrize("rtol", [0.1, 0.02])
def test_adaptive_sde_adds_exactly_one_brownian_path_whatever_it_rejects(rtol):
    """With g = 1 and a score s(x, t) = k t that ignores x, the reverse drift is -k t and both proposals are exact
    up to the noise (improved Euler integrates a linear function of t exactly): x_eps = x_T + k (T^2 - eps^2) / 2
    + W, W the sum of the accepted increments. The tolerance sees |x'|, so which steps are rejected depends on the
    noise; with the Brownian bridge W is still one Brownian path's increment over [eps, T], N(0, (T - eps) I)
    exactly (KS test, level 1%). Redrawing the rejected noise instead selects the increments by size, and the same
    test rejects it. Both runs reject a step of more than a quarter of the samples (read from the times the score
    sees: a sample whose first-stage time repeats was rejected), so the bridge is exercised, not bypassed."""
    k, eps, n = 8.0, 1e-3, 2000
    sde = _Brownian()
    calls = []

    def score(x, t):
        calls.append(t.clone())
        return (k * t).to(x.dtype)[:, None].expand_as(x).clone()

    x_T = torch.zeros(n, 2, dtype=torch.float64)
    for redraw in (False, True):
        calls.clear()
        out = adaptive_sde_sample(sde, score, x_T, rtol=rtol, atol=1e-3, eps=eps, redraw_rejected=redraw,
                                  generator=torch.Generator().manual_seed(0))
        first = torch.stack(calls[0::2])  # (iterations, n): each iteration's time t per sample
        rejected = ((first[1:] == first[:-1]) & (first[:-1] > eps)).any(0)
        assert int(rejected.sum()) > n // 4, (redraw, int(rejected.sum()))
        z = (out.x - k * (sde.T**2 - eps**2) / 2) / math.sqrt(sde.T - eps)
        p = sps.kstest(z.flatten().numpy(), "norm").pvalue
        assert (p < LEVEL) == redraw, (redraw, p, out.nfe)


def test_adaptive_sde_accepts_and_sizes_its_first_step_by_the_documented_error_norm():
    """One iteration of the solver against the formula of Jolicoeur-Martineau et al. (2021) as documented: for
    dx = dw (g = 1, f = 0) and a score s(x, t) = k t that ignores x, the two proposals over [t - h, t] are
    x' = x + h k t + W and x~ = x + h k (t - h) + W, so x' - x'' = (x' - x~) / 2 = k h^2 / 2 in every entry, and with
    W = sqrt(h) Z (Z the generator's first draw) every quantity of the decision is known:
        delta = max(atol, rtol max(|x'|, |x'_prev|)),  x'_prev = x_T at the first iteration,
        E = ||(x' - x'') / delta||_2 / sqrt(D),  accept iff E <= 1,
        h_next = min(safety h E^-exponent, t - h - eps if accepted else 0.99 h).
    The rows of x_T (|x_T| from 0 to 2000, one negative) put E on both sides of 1, some within a factor 2 of it;
    checked per sample: the time the second iteration starts from (t - h if accepted, else t), its step h_next and
    its state (x'' = x + h k (t - h / 2) + W if accepted, else x_T), all read from the score's arguments."""
    k, h, T, eps, D = 140.0, 0.1, 1.0, 1e-3, 3
    rtol, atol, safety, exponent = 1e-3, 0.5, 0.9, 0.9
    x_T = torch.tensor([0.0, 300.0, 500.0, 700.0, 1000.0, -1000.0, 2000.0], dtype=torch.float64)[:, None].repeat(1, D)
    calls = []

    def score(x, t):
        calls.append((x.clone(), t.clone()))
        return (k * t)[:, None].expand_as(x).clone()

    adaptive_sde_sample(_Brownian(), score, x_T, rtol=rtol, atol=atol, eps=eps, h_init=h, safety=safety,
                        exponent=exponent, generator=torch.Generator().manual_seed(0))
    W = math.sqrt(h) * torch.randn(x_T.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x1 = x_T + h * k * T + W
    delta = torch.maximum(torch.full_like(x1, atol), rtol * torch.maximum(x1.abs(), x_T.abs()))
    E = (torch.full_like(x1, k * h**2 / 2) / delta).norm(dim=1) / math.sqrt(D)
    accept = E <= 1.0
    assert 0 < int(accept.sum()) < len(E) and bool(((E > 0.5) & (E <= 1.0)).any()), E  # both outcomes, one near 1
    full = lambda value: torch.full_like(E, value)  # noqa: E731
    h_next = torch.minimum(safety * h * E ** -exponent, torch.where(accept, full(T - h - eps), full(0.99 * h)))
    (x_second, t_second), (_, t_second_late) = calls[2], calls[3]  # the second iteration's two evaluations
    torch.testing.assert_close(t_second, torch.where(accept, full(T - h), full(T)), rtol=1e-14, atol=0.0)
    torch.testing.assert_close(t_second - t_second_late, h_next, rtol=1e-12, atol=0.0)
    x_extrapolated = x_T + h * k * (T - h / 2) + W
    torch.testing.assert_close(x_second, torch.where(accept[:, None], x_extrapolated, x_T), rtol=1e-14, atol=1e-12)


def test_stochastic_samplers_are_reproducible_from_the_generator():
    sde = sds.VPSDE()
    dm = ring().diffuse(sde)
    x_T = dm.sample(64, 1.0, torch.Generator().manual_seed(0))
    for name in STOCHASTIC:
        a = STOCHASTIC[name](sde, dm, x_T, torch.Generator().manual_seed(7), 1e-3)
        b = STOCHASTIC[name](sde, dm, x_T, torch.Generator().manual_seed(7), 1e-3)
        c = STOCHASTIC[name](sde, dm, x_T, torch.Generator().manual_seed(8), 1e-3)
        assert torch.equal(a.x, b.x) and a.nfe == b.nfe
        assert not torch.equal(a.x, c.x)


def test_churn_off_is_the_deterministic_sampler_and_churn_on_is_not():
    sde = sds.VESDE(0.01, 50.0)
    dm = ring().diffuse(sde)
    x_T = dm.sample(64, 1.0, torch.Generator().manual_seed(0))
    plain = heun_sample(sde, dm, x_T, steps=8)
    zero = heun_sample(sde, dm, x_T, steps=8, S_churn=0.0, generator=torch.Generator().manual_seed(1))
    churned = heun_sample(sde, dm, x_T, steps=8, S_churn=5.0, generator=torch.Generator().manual_seed(1))
    outside = heun_sample(sde, dm, x_T, steps=8, S_churn=5.0, S_tmin=1e3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain.x, zero.x) and torch.equal(plain.x, outside.x)
    assert not torch.equal(plain.x, churned.x) and churned.nfe == plain.nfe


def _edm_algorithm_2(denoiser, x, sigmas, S_churn, S_tmin, S_tmax, S_noise, generator):
    """Karras et al. (2022), algorithm 2, written out in sigma for the VE-SDE (s(t) = 1), with sdescore's two
    documented conventions: sigma_hat is capped at sigma_0 = sigma(T), where the SDE ends, and noise is drawn only
    at the steps that churn (sigma_hat > sigma_i), so the generator's draws line up."""
    n = len(sigmas) - 1
    churned = []
    for i in range(n):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / n, math.sqrt(2.0) - 1.0) if S_tmin <= s_cur <= S_tmax else 0.0
        s_hat = min(s_cur + gamma * s_cur, sigmas[0])
        if s_hat > s_cur:
            churned.append(i)
            eps_i = S_noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)  # eps_i ~ N(0, S_noise^2 I)
            x = x + math.sqrt(s_hat**2 - s_cur**2) * eps_i
        d = (x - denoiser(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        d_prime = (x_next - denoiser(x_next, s_next)) / s_next
        x = x + (s_next - s_hat) * (0.5 * d + 0.5 * d_prime)
    return x, churned


@pytest.mark.parametrize(
    "S_churn, S_tmax",
    [(3.0, 15.0), (40.0, 15.0), (40.0, math.inf)],
    ids=["below_the_cap", "above_the_cap", "whole_range"],
)
def test_heun_with_churn_is_edm_algorithm_2(S_churn, S_tmax):
    """heun_sample with churn against algorithm 2 written out here on the VE-SDE, from the same x_T and generator,
    equal to float64 rounding (1e-12 of the state's scale). n = 12 steps, so the cap N (sqrt 2 - 1) = 4.97 lies
    between S_churn = 3 (gamma = 1/4) and 40 (gamma = sqrt 2 - 1); S_noise = 1.3; the window [0.05, 15] leaves out
    the first three nodes (50, 32.8, 20.9) and the last (0.036); with S_tmax = inf the first node's sigma_hat is
    capped at sigma(T). The grid is Karras et al.'s eq. 5 (rho = 7) computed here, and the denoiser
    D(x, sigma) = x + sigma^2 score(x, t(sigma)) with t(sigma) = log(sigma / sigma_min) / log(sigma_max / sigma_min)."""
    sigma_min, sigma_max, n, eps = 0.01, 50.0, 12, 1e-3
    sde = sds.VESDE(sigma_min, sigma_max)
    dm = single_gaussian([0.3, -0.2], [1.0, 0.5]).diffuse(sde)
    x_T = dm.sample(16, 1.0, torch.Generator().manual_seed(0))
    S_tmin, S_noise = 0.05, 1.3

    def denoiser(x, sigma):
        t = math.log(sigma / sigma_min) / math.log(sigma_max / sigma_min)
        return x + sigma**2 * dm(x, torch.full((x.shape[0],), t, dtype=torch.float64))

    lo, hi = sigma_min * (sigma_max / sigma_min) ** eps, sigma_max
    sigmas = [(hi ** (1 / 7) + i / n * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7 for i in range(n + 1)]
    expected, churned = _edm_algorithm_2(denoiser, x_T, sigmas, S_churn, S_tmin, S_tmax, S_noise,
                                         torch.Generator().manual_seed(5))
    assert churned == (list(range(3, 11)) if S_tmax == 15.0 else list(range(1, 11)))  # the window cuts nodes off
    out = heun_sample(sde, dm, x_T, steps=n, eps=eps, S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax,
                      S_noise=S_noise, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out.x, expected, rtol=0.0, atol=1e-12 * float(expected.abs().max()))


# ---------------------------------------------------------------------- failures and input checks
def test_a_non_finite_score_is_reported_with_its_step():
    sde = sds.VPSDE()
    dm = ring().diffuse(sde)

    def broken(x, t):
        s = dm(x, t)
        return torch.where(t[:, None] < 0.3, torch.full_like(s, float("nan")), s)

    x_T = dm.sample(8, 1.0)
    # the first node below t = 0.3 of each grid is the first evaluation to fail: the error names its step and time
    for fn in (heun_sample, dpm_solver_pp_sample):
        grid = "karras" if fn is heun_sample else "log_snr"
        ts = sds.time_grid(sde, 10, grid, 1e-3).tolist()
        k = next(i for i, t in enumerate(ts) if t < 0.3)
        step = k - 1 if fn is heun_sample else k  # Heun meets t_k at the end of step k - 1; ++2M at the start of step k
        with pytest.raises(NonFiniteError, match=rf"at step {step} \(t={ts[k]:.6g}"):
            fn(sde, broken, x_T, steps=10)
    with pytest.raises(NonFiniteError):
        adaptive_sde_sample(sde, broken, x_T)
    # an adaptive ODE solver rejects every step after NaN until dt underflows; the first NaN is the initial-step
    # probe, evaluation 1, which sdescore places at the end time eps = 1e-3
    for method in ("tsit5", "dopri5"):
        with pytest.raises(NonFiniteError, match=r"t=0\.001, score evaluation 1\)"):
            adaptive_ode_sample(sde, broken, x_T, method=method)


def test_the_final_denoising_evaluation_and_per_sample_times_are_named_when_they_fail():
    sde = sds.VPSDE()
    dm = ring().diffuse(sde)
    x_T = dm.sample(8, 1.0, torch.Generator().manual_seed(0))
    cases = {
        heun_sample: lambda: dict(steps=4),
        adaptive_ode_sample: dict,
        adaptive_sde_sample: lambda: dict(generator=torch.Generator().manual_seed(1)),
    }
    for fn, kwargs in cases.items():
        n_solve = fn(sde, dm, x_T, **kwargs()).nfe  # the solve's evaluations; Tweedie's comes after them
        calls = []

        def fail_last(x, t):
            calls.append(1)
            return dm(x, t) * (float("nan") if len(calls) > n_solve else 1.0)

        with pytest.raises(NonFiniteError, match=r"in the final denoising evaluation \(t=0\.001\)"):
            fn(sde, fail_last, x_T, denoise=True, **kwargs())

    def nan_in_sample_3(x, t):
        s = dm(x, t)
        s[3] = s[3] * float("nan") if float(t[3]) < 0.5 else s[3]
        return s

    with pytest.raises(NonFiniteError, match=r"\(t from [0-9.e-]+ to [0-9.e-]+ across the batch, score evaluation"):
        adaptive_sde_sample(sde, nan_in_sample_3, x_T, generator=torch.Generator().manual_seed(1))


def test_adaptive_sde_keeps_two_numbers_per_score_call_for_its_error_message(monkeypatch):
    """CheckedScore keeps each call's `when` until the solve ends, for the error message. The adaptive solver gives
    it (min t, max t) of the call's times, two numbers, not a tensor (the (B,) times, views of the iteration's
    whole coefficient rows, would hold 8 B numbers per call). A NaN at the fifth evaluation is still reported with
    that call's range of times."""
    kept = []

    class Keeping(CheckedScore):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            kept.append(self)

    monkeypatch.setattr(sds.fast, "CheckedScore", Keeping)
    sde = sds.VPSDE()
    dm = ring().diffuse(sde)
    B = 1024
    x_T = dm.sample(B, 1.0, torch.Generator().manual_seed(0))
    out = adaptive_sde_sample(sde, dm, x_T, generator=torch.Generator().manual_seed(1))
    whens = kept[-1]._when
    assert len(whens) == out.nfe > 20
    assert all(isinstance(w, tuple) and len(w) == 2 and not isinstance(w[0], torch.Tensor) for w in whens)
    assert all(0 < float(lo) <= float(hi) <= sde.T for lo, hi in whens)

    seen = []

    def nan_at_fifth(x, t):
        seen.append(t.clone())
        return dm(x, t) * (float("nan") if len(seen) == 5 else 1.0)

    with pytest.raises(NonFiniteError) as info:
        adaptive_sde_sample(sde, nan_at_fifth, x_T, generator=torch.Generator().manual_seed(1))
    t = seen[4]
    assert float(t.min()) < float(t.max())
    expected = f"(t from {float(t.min()):.6g} to {float(t.max()):.6g} across the batch, score evaluation 4)"
    assert expected in str(info.value), str(info.value)


def test_denoise_without_a_kernel_fails_before_the_solve():
    class Quartic(SDE):  # a user's SDE without a Gaussian kernel
        def f(self, x, t):
            return -(x**3)

        def g(self, t):
            return torch.full_like(t, 2.0**0.5)

    calls = []
    score = lambda x, t: calls.append(1) or -x  # noqa: E731
    for fn, kwargs in ((heun_sample, dict(steps=4)), (adaptive_ode_sample, {}), (adaptive_sde_sample, {})):
        with pytest.raises(NotImplementedError, match="no closed-form Gaussian kernel"):
            fn(Quartic(), score, torch.randn(4, 2), denoise=True, **kwargs)
    assert calls == []


def test_adaptive_sde_runs_with_a_score_that_carries_autograd():
    """A network called outside no_grad: the sample carries the graph, with the step sizes the controller chose held
    fixed (its decisions are made on the host and not differentiated)."""
    net = torch.nn.Linear(2, 2).double()
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = adaptive_sde_sample(sds.VPSDE(), lambda x, t: net(x), x_T, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = adaptive_sde_sample(sds.VPSDE(), lambda x, t: net(x), x_T, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.x.detach(), plain.x) and out.nfe == plain.nfe
    out.x.square().sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0 for p in net.parameters())


def test_adaptive_sde_in_float16_keeps_large_coefficients_in_float32():
    """With sigma_max = 348 (Song et al.'s 256-px VE-SDE) h g(t)^2 exceeds float16's largest number, 65504: the
    coefficient rows stay in float32 and the float16 samples have the law of the float32 ones. N(0, I) data: the
    law at eps is N(0, (1 + sigma(eps)^2) I); the sample variance of n = 2000 x 2 entries has relative standard
    error sqrt(2 / 4000) = 0.022, bounded at 4.5 of them (two-sided level 7e-6)."""
    import warnings

    sde = sds.VESDE(0.01, 348.0)
    dm = single_gaussian([0.0, 0.0], [1.0, 1.0]).diffuse(sde)
    x_T = dm.sample(2000, 1.0, torch.Generator().manual_seed(3)).to(torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow in a float16 cast was a RuntimeWarning
        out = adaptive_sde_sample(sde, lambda x, t: dm(x.double(), t.double()).to(x.dtype), x_T,
                                  generator=torch.Generator().manual_seed(4))
    assert out.x.dtype == torch.float16 and bool(torch.isfinite(out.x).all())
    var = float(out.x.double().var())
    assert abs(var / (1 + 0.01**2) - 1) < 4.5 * (2 / out.x.numel()) ** 0.5


@HALF
def test_a_half_precision_combination_is_the_float64_sum_rounded_once(dtype):
    """_Lin.eval of half-precision tensors with weights beyond float16's range (std^2 = 348^2 = 1.2e5, as in
    Tweedie's D = x + std^2 score for the VE-SDE's sigma_max = 348): the result, of size 1, is the float64 sum of the
    same half-precision inputs rounded once, within half a unit in the last place of the half dtype (u |sum|) plus
    float32's roundings of the product and the sum (each within 2^-24 of the terms' size). Summed in the half dtype
    instead, float16 overflows and bfloat16 loses the result to the terms' rounding (each term about 350)."""
    from sdescore.fast import _Lin

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 4, generator=g, dtype=torch.float64)
    x = (x0 + 348.0 * torch.randn(256, 4, generator=g, dtype=torch.float64)).to(dtype)
    score = ((x0 - x.double()) / 348.0**2).to(dtype)  # D = x + std^2 score is x0 (to the score's rounding)
    expr = _Lin.of(x) + 348.0**2 * _Lin.of(score) - 0.5 * _Lin.of(x) + 0.5 * _Lin.of(x)
    out = expr.eval()
    assert out.dtype == dtype
    exact = x.double() + 348.0**2 * score.double()
    size = x.double().abs() + 348.0**2 * score.double().abs()
    u = torch.finfo(dtype).eps / 2
    assert bool(((out.double() - exact).abs() <= u * exact.abs() + 2 * 2.0**-24 * size).all())


VE_256 = (0.01, 348.0)  # Song et al.'s VE-SDE for 256-px images: std^2 and (sigma_i - sigma_i+1) std_i beyond 65504


@HALF
def test_fixed_step_samplers_in_half_precision_follow_the_float32_result(dtype):
    """With sigma_max = 348 every fixed-step sampler runs in float16 and bfloat16 (denoise included; at 10 steps
    the float16 weights of the first-order, multistep and data-prediction steps exceed 65504) and stays near the
    float32 result of the same sampler from the same x_T (and, with churn, the same generator). The score receives
    its times in the state's dtype, so the float32 run's score is given the same rounded times: what is compared is
    the arithmetic. A half-precision run carries its state in float32 and rounds the score's input and output once
    per step and the result once at the end (relative u = eps / 2 each); such errors accumulate at most linearly over the n = 10 steps, so the relative RMS difference is bounded by
    n eps (1e-2 for float16, 8e-2 for bfloat16; measured 0.6 to 2.5 eps)."""
    sde = sds.VESDE(*VE_256)
    dm = single_gaussian([0.3, -0.2], [1.0, 0.5]).diffuse(sde)
    x_T = dm.sample(64, 1.0, torch.Generator().manual_seed(0))
    score = lambda x, t: dm(x.double(), t.double()).to(x.dtype)  # noqa: E731
    score_at_rounded_times = lambda x, t: dm(x.double(), t.to(dtype).double()).to(x.dtype)  # noqa: E731
    steps = 10
    for name, sampler in FAST_SAMPLERS.items():
        if not isinstance(sampler, FixedStepSampler):
            continue
        run = lambda score, x: sampler(sde, score, x, steps=steps, denoise=True,  # noqa: E731
                                       generator=torch.Generator().manual_seed(1)).x
        ref = run(score_at_rounded_times, x_T.float()).double()
        out = run(score, x_T.to(dtype))
        assert out.dtype == dtype, name
        assert _rms(out.double(), ref) < steps * torch.finfo(dtype).eps * _rms(ref, 0 * ref), name


@HALF
@pytest.mark.parametrize("name", ["heun", "dpm_solver_pp_2m"])
@pytest.mark.parametrize("sde", [sds.VPSDE(), sds.VESDE(0.01, 50.0)], ids=["VP", "VE"])
def test_fixed_step_samplers_in_half_precision_keep_the_flows_variance_over_many_steps(sde, name, dtype):
    """500 steps from a half-precision x_T, the exact score given x and t in that dtype, against the exact flow
    from the same x_T (closed form; target std 0.5 and 0.05): the variance of each coordinate within 2 % of the
    flow's. The state is carried in float32 and rounded once at the end (a relative 2^-9 in bfloat16, a 0.4 %
    change of a variance at most, and unbiased); the score's roundings of its inputs and output are unbiased and
    average over the steps, and the discretisation error at 500 steps is below 1e-3 (float64 runs: 1.000). A state
    rounded to its dtype every step lost a few-ulp change each step: variance 1.13-2.17 times the flow's in
    bfloat16, 1.01-1.04 in float16."""
    target = single_gaussian([0.5, -0.3], [0.25, 0.0025])
    dm = target.diffuse(sde)
    x_T = dm.sample(4000, 1.0, torch.Generator().manual_seed(3)).to(dtype)
    exact = target.ode_solution(sde, x_T.double(), 1.0, 1e-3)
    out = FAST_SAMPLERS[name](sde, lambda x, t: dm(x.double(), t.double()).to(x.dtype), x_T, steps=500).x
    assert out.dtype == dtype
    ratio = out.double().var(0) / exact.var(0)
    assert bool(((ratio - 1).abs() < 0.02).all()), ratio.tolist()


def test_adaptive_sde_steps_grow_at_most_max_growth_per_iteration():
    """An error estimate near 0 by chance (E ~ 1e-8) made the next step safety E^-0.9 ~ 1e6 times longer (measured
    9.3e5 in float64), nearly all of [eps, t]: a trial whose state, in float16, overflowed the score. Each sample's
    step (its t - t' per iteration, recorded exactly in float64) now grows at most max_growth = 10 times per
    iteration, and the float16 runs of this VE problem, of which 5 of 10 seeds raised NonFiniteError, finish."""
    sde = sds.VESDE(0.01, 50.0)
    dm = single_gaussian([0.5, -0.3], [0.25, 0.0025]).diffuse(sde)
    seen = []

    def score(x, t):
        seen.append(t.double())
        return dm(x.double(), t.double()).to(x.dtype)

    x_T = dm.sample(2000, 1.0, torch.Generator().manual_seed(0))
    adaptive_sde_sample(sde, score, x_T, generator=torch.Generator().manual_seed(100))
    h = torch.stack(seen[0::2]) - torch.stack(seen[1::2])  # (iterations, B): each sample's step
    grown = h[1:][h[:-1] > 0] / h[:-1][h[:-1] > 0]
    assert float(grown.max()) <= 10.0 * (1 + 1e-9)
    for seed in range(10):
        x_T = dm.sample(2000, 1.0, torch.Generator().manual_seed(seed)).half()
        out = adaptive_sde_sample(sde, lambda x, t: dm(x.double(), t.double()).to(x.dtype), x_T,
                                  generator=torch.Generator().manual_seed(100 + seed))
        assert bool(torch.isfinite(out.x).all())
    with pytest.raises(ValueError, match=r"max_growth must be > 1 \(the largest factor by which a step may grow\), "
                                         r"got 1.0"):
        adaptive_sde_sample(sde, score, x_T.double(), max_growth=1.0)


def test_adaptive_sde_in_float16_denoises_where_std_squared_exceeds_its_range():
    """eps = 0.99 on the VE-SDE with sigma_max = 348: std(eps)^2 = 1.1e5 exceeds float16's 65504. Tweedie's
    E[x0 | x_eps] = (x + std^2 score) / alpha is formed in float32 and rounded once: against the float64 value of the
    same formula from the same float16 state and score (the denoise=False run of the same generator), within half
    a float16 ulp of the result (u |D|) plus float32's roundings of std^2, the product and the sum (2^-24 of the
    terms' size each)."""
    sde = sds.VESDE(*VE_256)
    dm = single_gaussian([0.3, -0.2], [1.0, 0.5]).diffuse(sde)
    x_T = dm.sample(64, 1.0, torch.Generator().manual_seed(0)).half()
    score = lambda x, t: dm(x.double(), t.double()).to(x.dtype)  # noqa: E731
    eps = 0.99
    run = lambda denoise: adaptive_sde_sample(sde, score, x_T, eps=eps, denoise=denoise,  # noqa: E731
                                              generator=torch.Generator().manual_seed(1))
    plain, clean = run(False), run(True)
    assert clean.x.dtype == torch.float16 and clean.nfe == plain.nfe + 1
    std = float(sde.sigma(torch.tensor([eps], dtype=torch.float64)))
    assert std**2 > torch.finfo(torch.float16).max
    s = score(plain.x, torch.full((64,), eps, dtype=torch.float64).half()).double()
    exact = plain.x.double() + std**2 * s
    size = plain.x.double().abs() + std**2 * s.abs()
    u = torch.finfo(torch.float16).eps / 2
    assert bool(((clean.x.double() - exact).abs() <= u * exact.abs() + 3 * 2.0**-24 * size).all())


def test_adaptive_sde_keeps_the_state_dtype_when_a_users_drift_returns_float64():
    class Cubic(SDE):  # the drift built from t, which arrives in float64
        def f(self, x, t):
            return -0.1 * t[:, None] * x**3

        def g(self, t):
            return torch.full_like(t, 2.0**0.5)

    seen = []
    out = adaptive_sde_sample(Cubic(), lambda x, t: seen.append(x.dtype) or -x, torch.randn(8, 2))
    assert out.x.dtype == torch.float32 and set(seen) == {torch.float32}


def test_samplers_take_a_score_network_under_autocast():
    """Under torch.autocast a network returns bfloat16 for a float32 state: the samplers cast it back, as the
    converters do, instead of refusing it."""
    from sdescore.nets import ScoreMLP

    net = ScoreMLP(2).eval()
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for name in ("dpm_solver_pp_2m", "heun"):
            assert FAST_SAMPLERS[name](sds.VPSDE(), net, x_T, steps=4).x.dtype == torch.float32
        assert sds.pc_sample(sds.VPSDE(), net, None, x_T=x_T, steps=50).x.dtype == torch.float32


def test_adaptive_sde_stops_at_max_evals():
    sde = sds.VPSDE()
    dm = ring().diffuse(sde)
    with pytest.raises(RuntimeError, match="max_evals"):
        adaptive_sde_sample(sde, dm, dm.sample(8, 1.0), rtol=1e-4, atol=1e-6, max_evals=20)


@pytest.mark.parametrize(
    "fn, kwargs, error, match",
    [
        (heun_sample, {"steps": 0}, ValueError, "steps"),
        (heun_sample, {"steps": 3.0}, TypeError, "steps"),
        (heun_sample, {"steps": 3, "grid": "linear"}, ValueError, "grid"),
        (heun_sample, {"steps": 3, "S_churn": -1.0}, ValueError, "S_churn"),
        (heun_sample, {"steps": 3, "S_noise": float("nan")}, ValueError, "S_noise"),
        (heun_sample, {"steps": 3, "denoise": 1}, TypeError, "denoise"),
        (heun_sample, {"steps": 3, "eps": 2.0}, ValueError, "eps"),
        (heun_sample, {"steps": 3, "generator": 0}, TypeError, "generator"),
        (heun_sample, {"steps": 3, "S_churn": 1.0, "S_tmin": 2.0, "S_tmax": 1.0}, ValueError, "S_tmin=2.0, S_tmax=1.0"),
        (heun_sample, {"steps": 3, "S_churn": "1"}, TypeError, "S_churn"),
        (heun_sample, {"steps": 3, "S_tmax": True}, TypeError, "S_tmax"),
        (heun_sample, {"steps": 3, "grid": sds.KarrasGrid}, TypeError, r"pass an instance, e\.g\. grid=KarrasGrid\(\)"),
        (dpm_solver_sample, {"steps": 3, "order": 4}, ValueError, "order"),
        (dpm_solver_sample, {"steps": 3, "multistep": "yes"}, TypeError, "multistep"),
        (dpm_solver_pp_sample, {"steps": 3, "order": 0}, ValueError, "order"),
        (dpm_solver_pp_sample, {"steps": 3, "lower_order_final": 1}, TypeError, "lower_order_final"),
        (adaptive_sde_sample, {"rtol": 0.0}, ValueError, "rtol"),
        (adaptive_sde_sample, {"max_evals": 1}, ValueError, "max_evals"),
        (adaptive_sde_sample, {"redraw_rejected": 1}, TypeError, "redraw_rejected"),
        (adaptive_sde_sample, {"h_init": -0.1}, ValueError, "h_init"),
        (adaptive_ode_sample, {"method": "rk45"}, ValueError, "method"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(fn, kwargs, error, match):
    sde = sds.VPSDE()
    dm = ring().diffuse(sde)
    with pytest.raises(error, match=match):
        fn(sde, dm, dm.sample(4, 1.0), **kwargs)


class _ConstantAlphaEDM(EDMSDE):
    """EDMSDE whose kernel returns alpha = 1 as one broadcastable number, shape (1,), instead of one per time."""

    def kernel(self, t):
        return torch.ones(1, dtype=t.dtype), self.sigma_max * t


class _NoiselessEDM(EDMSDE):
    """EDMSDE whose kernel's std is 0 for t in [0.1, 0.6] (a wrong kernel): no log-SNR there. Each sampler below has a
    node there (Karras grid: t = 0.33; log-SNR grid: t = 0.159)."""

    def kernel(self, t):
        return torch.ones_like(t), torch.where((t >= 0.1) & (t <= 0.6), 0.0, self.sigma_max * t)


@pytest.mark.parametrize("name", ["heun", "dpm_solver_2", "dpm_solver_pp_2m"])
def test_a_users_kernel_of_the_wrong_shape_or_value_is_rejected_naming_it(name):
    """The fixed-grid samplers read alpha and std at every node (n of them in one call): a broadcastable (1,) alpha
    would silently give fewer nodes, a zero std an infinite log-SNR; both are refused naming sde.kernel."""
    score = lambda x, t: -x / (1 + (80 * t[:, None]) ** 2)  # noqa: E731
    x_T = 80 * torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"sde\.kernel\(t\) must return \(alpha, std\), two tensors of shape \(6,\).*"
                                         r"got shape \(1,\) and shape \(6,\)"):
        FAST_SAMPLERS[name](_ConstantAlphaEDM(), score, x_T, steps=5, eps=1e-4)
    with pytest.raises(ValueError, match=r"sde\.kernel\(t\) must return finite alpha > 0 and std > 0.*std=0\.0"):
        FAST_SAMPLERS[name](_NoiselessEDM(), score, x_T, steps=5, eps=1e-4)


def test_an_eps_whose_std_underflows_is_rejected_naming_eps():
    """On the VP-SDE std(eps)^2 = 1 - exp(-beta_min eps - ...) is 0 in float64 for eps = 5e-324: every grid, and
    the samplers on the uniform grid (which does not need the log-SNR), say that eps is too small."""
    dm = ring().diffuse(sds.VPSDE())
    x_T = dm.sample(4, 1.0, torch.Generator().manual_seed(0))
    for grid in ("uniform", "karras", "log_snr"):
        with pytest.raises(ValueError, match=r"eps=4\.94066e-324 is too small for VPSDE"):
            heun_sample(sds.VPSDE(), dm, x_T, steps=3, grid=grid, eps=5e-324)


def test_heuns_churn_parameters_take_numpy_scalars():
    """numpy's scalars are real numbers: each S_ parameter takes them, with the result of the Python float (values
    exact in float32, so np.float32 gives the same numbers)."""
    sde = sds.VESDE(0.01, 50.0)
    dm = ring().diffuse(sde)
    x_T = dm.sample(16, 1.0, torch.Generator().manual_seed(0))
    def run(cast):
        return heun_sample(sde, dm, x_T, steps=6, S_churn=cast(5.0), S_tmin=cast(0.0625), S_tmax=cast(20.0),
                           S_noise=cast(1.125), generator=torch.Generator().manual_seed(1)).x

    plain = run(float)
    assert not torch.equal(plain, heun_sample(sde, dm, x_T, steps=6).x)  # the churn is on
    for cast in (np.float32, np.float64):
        assert torch.equal(run(cast), plain), cast


def test_bad_sde_state_and_budget_are_rejected():
    dm = ring().diffuse(sds.VPSDE())
    with pytest.raises(TypeError, match="sde"):
        heun_sample("VP", dm, torch.zeros(4, 2), steps=3)
    with pytest.raises(ValueError, match="x_T"):
        heun_sample(sds.VPSDE(), dm, torch.zeros(2), steps=3)
    with pytest.raises(ValueError, match="nfe"):
        FAST_SAMPLERS["dpm_solver_3"].steps_for(2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_checked_score_finds_the_first_non_finite_evaluation_and_not_a_huge_finite_one(bad):
    """The per-call check is min/max of the output: any NaN or +-inf anywhere is found, at the right evaluation;
    entries near the float32 limit are finite and must not be reported (a float32 sum of them would overflow)."""
    x = torch.zeros(64, 5)
    huge = torch.full_like(x, 3.0e38)
    calls = {"n": 0}

    def score(x, t):
        calls["n"] += 1
        out = huge.clone()
        if calls["n"] == 3:
            out[17, 4] = bad
        return out

    checked = CheckedScore(score)
    t = torch.zeros(64)
    checked(x, t, 0.5)
    checked(x, t, 0.4)
    assert checked.first_nonfinite() is None
    checked(x, t, 0.3)
    checked(x, t, 0.2)
    assert checked.first_nonfinite() == (2, 0.3)


def test_all_finite_is_isfinite_all_from_one_min_max():
    from sdescore._checks import all_finite

    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.full((33, 5), torch.finfo(dtype).max, dtype=dtype)
        x[0] = torch.finfo(dtype).min
        assert all_finite(x) and bool(torch.isfinite(x).all())
        for bad in (float("nan"), float("inf"), -float("inf")):
            y = x.clone()
            y[17, 3] = bad
            assert not all_finite(y)
    assert all_finite(torch.empty(0, 3))


class _VPWithItsOwnDrift(sds.VPSDE):
    """The VP-SDE with f redefined by the same formula: not read through linear_drift (the generic path)."""

    def f(self, x, t):
        return -0.5 * self.beta(t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) * x


@pytest.mark.parametrize("make", [sds.VPSDE, sds.SubVPSDE, lambda: sds.VESDE(0.01, 50.0)], ids=["VP", "subVP", "VE"])
def test_the_flow_function_of_a_linear_drift_is_the_velocity(make):
    """ProbabilityFlowODE.func forms v = a(t) x - g(t)^2 s / 2 from host scalars where the drift is linear; it
    equals `velocity` (f - g^2 s / 2 from per-sample tensors) to rounding, and clamps t into [lo, hi]."""
    sde = make()
    dm = ring().diffuse(sde)
    x = dm.sample(16, 0.6, torch.Generator().manual_seed(0))
    ode = sde.probability_flow(dm)
    func = ode.func(dm, 0.1, 0.9)
    for t, inside in ((0.6, 0.6), (0.95, 0.9), (0.05, 0.1)):
        expected = ode.velocity(x, torch.full((16,), inside, dtype=torch.float64))
        torch.testing.assert_close(func(torch.tensor(t, dtype=torch.float64), x), expected, rtol=1e-13, atol=1e-13)
    # a time that carries a gradient keeps it: d v / d t by autograd against a central difference
    t = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    (dv,) = torch.autograd.grad(func(t, x).sum(), t)
    fd = (func(torch.tensor(0.6 + 1e-6, dtype=torch.float64), x) - func(torch.tensor(0.6 - 1e-6, dtype=torch.float64), x))
    torch.testing.assert_close(dv, fd.sum() / 2e-6, rtol=1e-5, atol=1e-6)
    generic = _VPWithItsOwnDrift()
    assert not generic.drift_is_linear
    ode = generic.probability_flow(dm)
    torch.testing.assert_close(ode.func(dm, 0.0, 1.0)(torch.tensor(0.6, dtype=torch.float64), x),
                               ode.velocity(x, torch.full((16,), 0.6, dtype=torch.float64)), rtol=0, atol=0)


class _FaintVP(sds.VPSDE):
    """The VP drift with a diffusion 1e-25 times the VP's: g^2 / 2 is some 1e50 times smaller than |a(t)|."""

    def g(self, t):
        return 1e-25 * super().g(t)


def test_the_scaled_velocity_factors_out_the_larger_coefficient():
    """`scaled` returns (k, m) with m k = a y - (g^2 / 2) s in one whole-state operation, m the larger of a and
    c = -g^2 / 2 in size (c where they are equal), so the coefficient left inside k is at most 1: a ratio of 1e50
    between a and c does not overflow float32, and m k matches the two-term formula to float32 rounding, for the
    VP (a = c), the sub-VP (|a| > |c|), the VE (a = 0: k is the score's own tensor, which must stay unchanged) and
    this one."""
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    s = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    s0 = s.clone()
    for sde in (sds.VPSDE(), sds.SubVPSDE(), sds.VESDE(), _FaintVP()):
        func = sde.probability_flow(lambda y, t: s).func(lambda y, t: s, 0.0, 1.0)
        for t in (1e-3, 0.5, 1.0):
            th = torch.tensor([t], dtype=torch.float64)
            a, g = float(sde.linear_drift(th)), float(sde.g(th))
            k, m = func.scaled(t, x)
            c = -0.5 * g * g
            assert m == (c if abs(c) >= abs(a) else a)
            assert k.dtype == torch.float32 and bool(torch.isfinite(k).all())
            expected = (a * x.double() - 0.5 * g * g * s.double())
            torch.testing.assert_close((m * k.double()), expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
            torch.testing.assert_close(func(t, x), expected.float(), rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
            assert torch.equal(s, s0)


class _CountingSubVP(sds.SubVPSDE):
    """The sub-VP SDE recording the size of every time tensor its g is called with."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def g(self, t):
        self.sizes.append(t.numel())
        return super().g(t)


def test_the_step_announces_the_times_it_evaluates():
    """sdescore's step tells the linear flow function each step's stage times (`prepare`) and evaluates exactly
    those, both ways in time: only the set-up's two evaluations compute their coefficients alone, each step's six
    in one call; and the prepared coefficients give the velocity computed alone (sub-VP: g through expm1)."""
    sde = _CountingSubVP()
    dm = ring().diffuse(sde)
    x = dm.sample(64, 1.0, torch.Generator().manual_seed(0))
    ode = sde.probability_flow(dm)
    for run in (lambda: ode.sample(x, rtol=1e-6, atol=1e-6), lambda: ode.encode(x, rtol=1e-6, atol=1e-6)):
        sde.sizes.clear()
        nfe = run().nfe
        steps = (nfe - 2) // 6
        assert steps > 5 and nfe == 2 + 6 * steps
        assert sorted(sde.sizes) == [1, 1] + [6] * steps
    func = ode.func(dm, 1e-3, 1.0)
    times = [0.9, 0.45, 1e-4]  # the last one clamped to 1e-3
    alone = [func(t, x) for t in times]
    func.prepare(times)
    sde.sizes.clear()
    for t, v in zip(times, alone):
        torch.testing.assert_close(func(t, x), v, rtol=1e-14, atol=0.0)
    assert sde.sizes == []


def test_adaptive_solvers_agree_whether_the_linear_drift_is_folded_in_or_called():
    """The linear-drift path (coefficients (1 - h a) x) and the generic one (x - h f(x, t)) are the same
    algorithm: in float64 the results agree to rounding. (With redraw_rejected: the Brownian bridge's
    sqrt(h'(1 - h'/h)) turns rounding differences of h' near h into visible path differences, the law unchanged.)"""
    sde, generic = sds.VPSDE(), _VPWithItsOwnDrift()
    dm = ring().diffuse(sde)
    x_T = dm.sample(128, 1.0, torch.Generator().manual_seed(0))
    a = adaptive_sde_sample(sde, dm, x_T, rtol=0.05, generator=torch.Generator().manual_seed(1), redraw_rejected=True)
    b = adaptive_sde_sample(generic, dm, x_T, rtol=0.05, generator=torch.Generator().manual_seed(1), redraw_rejected=True)
    assert a.nfe == b.nfe
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)
    a = adaptive_ode_sample(sde, dm, x_T, rtol=1e-6, atol=1e-6)
    b = adaptive_ode_sample(generic, dm, x_T, rtol=1e-6, atol=1e-6)
    assert a.nfe == b.nfe
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)
