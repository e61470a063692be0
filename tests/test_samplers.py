"""Reverse SDE (torchsde), probability-flow ODE (torchdiffeq) and PC samplers against closed-form Gaussians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchsde
from scipy.optimize import curve_fit

import sdescore as sds
from sdescore.reverse import SDE_METHODS, ReverseSDE
from validation import GaussianMixture, single_gaussian

from _half import HALF, HALF_SDES, gaussian_score, rounding_bound

EPS = 1e-3
TARGET = single_gaussian()  # 2-D, correlated covariance


def _law_at_T_samples(sde, n, seed):
    """x_T from the exact law p_T (not the prior), so the only error left is the sampler's."""
    return TARGET.marginal(sde, sde.T).sample(n, generator=torch.Generator().manual_seed(seed))


def _assert_moments(x, law, *, bias_mean, bias_cov):
    """Sample mean and covariance against a Gaussian law, within 5 standard errors plus a bias allowance."""
    n = x.shape[0]
    mean, cov = law.mean(), law.covariance()
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert bool((x.mean(0) - mean).abs().le(5 * se_mean + bias_mean).all()), (x.mean(0), mean)
    d = torch.diagonal(cov)
    se_cov = torch.sqrt((d[:, None] * d[None, :] + cov**2) / n)
    emp = torch.cov(x.T)
    assert bool((emp - cov).abs().le(5 * se_cov + bias_cov * d.max()).all()), (emp, cov)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_reverse_sde_reproduces_gaussian_moments(sde, method):
    x_T = _law_at_T_samples(sde, 8000, 0)
    r = sde.reverse(TARGET.score_fn(sde)).sample(
        x_T, steps=250, method=method, eps=EPS, generator=torch.Generator().manual_seed(1)
    )
    assert r.x.shape == x_T.shape
    assert r.nfe == 250 * SDE_METHODS_EVALS[method]
    _assert_moments(r.x, TARGET.marginal(sde, EPS), bias_mean=0.01, bias_cov=0.03)


SDE_METHODS_EVALS = {"euler": 1, "heun": 2}


@pytest.mark.parametrize("method", sorted(SDE_METHODS))
def test_every_torchsde_method_for_diagonal_noise_samples_the_target(method):
    sde = sds.VPSDE()
    x_T = _law_at_T_samples(sde, 2000, 2)
    if method == "log_ode":  # torchsde's BrownianInterval (Lévy area), seeded through its entropy
        gen, bm = None, torchsde.BrownianInterval(t0=0.0, t1=sde.T - EPS, size=tuple(x_T.shape), dtype=x_T.dtype,
                                                  entropy=3, levy_area_approximation="foster")
    else:
        gen, bm = torch.Generator().manual_seed(3), None
    r = sde.reverse(TARGET.score_fn(sde)).sample(x_T, steps=100, method=method, eps=EPS, generator=gen, bm=bm)
    _assert_moments(r.x, TARGET.marginal(sde, EPS), bias_mean=0.03, bias_cov=0.08)


def test_reverse_sde_is_a_torchsde_sde():
    """sde.reverse(score) goes straight into torchsde.sdeint and agrees with .sample on the same Brownian path."""
    sde = sds.VPSDE()
    score = TARGET.score_fn(sde)
    x_T = _law_at_T_samples(sde, 64, 4)
    s_end = sde.T - EPS

    def bm():
        return torchsde.BrownianInterval(t0=0.0, t1=s_end, size=(64, 2), dtype=torch.float64, entropy=7)

    ys = torchsde.sdeint(
        sde.reverse(score), x_T, torch.tensor([0.0, s_end], dtype=torch.float64), bm=bm(), method="euler", dt=s_end / 50 * (1 + 1e-9)
    )
    r = sde.reverse(score).sample(x_T, steps=50, eps=EPS, bm=bm())
    torch.testing.assert_close(r.x, ys[-1], rtol=0, atol=1e-12)


def _fit_order(steps, errors):
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


def test_euler_maruyama_has_weak_order_one():
    """|E phi(X_h) - E phi(X_ref)| on a shared Brownian path, phi = |x|^2, falls as h^1 (fitted slope)."""
    sde = sds.VPSDE()
    score = TARGET.score_fn(sde)
    n = 4000
    x_T = _law_at_T_samples(sde, n, 5)
    s_end = sde.T - EPS

    def second_moment(steps):
        bm = torchsde.BrownianInterval(t0=0.0, t1=s_end, size=(n, 2), dtype=torch.float64, entropy=11)
        return float(sde.reverse(score).sample(x_T, steps=steps, eps=EPS, bm=bm).x.pow(2).sum(1).mean())

    ref_steps = 512
    ref = second_moment(ref_steps)
    steps = np.array([16, 32, 64, 128])
    errors = np.array([abs(second_moment(int(k)) - ref) for k in steps])
    # The reference has an error of its own, C h_ref^p with the same p: fit e(h) = C (h^p - h_ref^p) for (C, p).
    h, h_ref = 1.0 / steps, 1.0 / ref_steps
    (_, p), _ = curve_fit(lambda h, C, p: C * (h**p - h_ref**p), h, errors, p0=(1.0, 1.0))
    assert 0.75 < p < 1.25, (errors, p)  # separates order 1 from 0.5 (strong EM) and 2


@pytest.mark.parametrize("method, order", [("euler", 1), ("midpoint", 2), ("heun2", 2), ("rk4", 4)])
def test_fixed_step_ode_methods_converge_at_their_order(method, order):
    """Error against the closed-form probability-flow solution of a Gaussian, fitted slope in the step count."""
    sde = sds.VPSDE()
    ode = sde.probability_flow(TARGET.score_fn(sde))
    x_T = _law_at_T_samples(sde, 256, 6)
    exact = TARGET.ode_solution(sde, x_T, sde.T, EPS)
    steps = [8, 16, 32, 64]
    errors = [float((ode.sample(x_T, method=method, steps=k, eps=EPS).x - exact).abs().max()) for k in steps]
    assert order - 0.35 < _fit_order(steps, errors) < order + 0.6, errors


def test_probability_flow_matches_the_closed_form_solution(sde):
    ode = sde.probability_flow(TARGET.score_fn(sde))
    x_T = _law_at_T_samples(sde, 512, 8)
    r = ode.sample(x_T, rtol=1e-8, atol=1e-8, eps=EPS)
    exact = TARGET.ode_solution(sde, x_T, sde.T, EPS)
    assert float((r.x - exact).abs().max()) < 1e-5
    _assert_moments(r.x, TARGET.marginal(sde, EPS), bias_mean=0.0, bias_cov=0.0)


def test_encode_then_sample_is_the_identity(sde):
    ode = sde.probability_flow(TARGET.score_fn(sde))
    x0 = TARGET.marginal(sde, EPS).sample(256, generator=torch.Generator().manual_seed(9))
    z = ode.encode(x0, rtol=1e-9, atol=1e-9, eps=EPS)
    torch.testing.assert_close(z.x, TARGET.ode_solution(sde, x0, EPS, sde.T), rtol=1e-5, atol=1e-5 * sde.prior_std)
    back = ode.sample(z.x, rtol=1e-9, atol=1e-9, eps=EPS)
    assert float((back.x - x0).abs().max()) < 1e-5


def test_the_score_is_never_evaluated_outside_the_interval(sde):
    seen = []

    def score(x, t):
        seen.append((float(t.min()), float(t.max())))
        return TARGET.score_fn(sde)(x, t)

    ode = sde.probability_flow(score)
    x0 = TARGET.marginal(sde, EPS).sample(64, generator=torch.Generator().manual_seed(10))
    for method in ("tsit5", "dopri5", "bosh3", "adaptive_heun"):
        z = ode.encode(x0, method=method, eps=EPS)
        ode.sample(z.x, method=method, eps=EPS)
    assert min(lo for lo, _ in seen) >= EPS and max(hi for _, hi in seen) <= sde.T
    with pytest.raises(ValueError, match=r"defined for t in \[0, 1.0\]"):
        ode(torch.tensor(-0.01), x0)


PREDICTORS = ["euler_maruyama", "reverse_diffusion", "ancestral_sampling"]


@pytest.mark.parametrize("corrector", ["none", "langevin"])
@pytest.mark.parametrize("predictor", PREDICTORS)
def test_pc_sample_reproduces_gaussian_moments(sde, predictor, corrector):
    x_T = _law_at_T_samples(sde, 6000, 12)
    r = sds.pc_sample(
        sde, TARGET.score_fn(sde), None, x_T=x_T, predictor=predictor, corrector=corrector, steps=200, eps=EPS,
        generator=torch.Generator().manual_seed(13),
    )
    assert r.nfe == 200 * (1 + (corrector == "langevin"))
    _assert_moments(r.x, TARGET.marginal(sde, EPS), bias_mean=0.02, bias_cov=0.06)


def test_pc_sample_draws_from_the_prior_with_numpy_integer_sizes():
    sde = sds.VPSDE()
    r = sds.pc_sample(sde, TARGET.score_fn(sde), np.array([5, 2]), steps=30, generator=torch.Generator().manual_seed(0))
    assert r.x.shape == (5, 2)


def test_corrector_only_sampling_ends_at_eps():
    """Without a predictor the corrector runs at every point of linspace(T, eps, steps + 1), eps included (annealed
    Langevin dynamics over steps + 1 levels); with a predictor, at the steps points before eps."""
    sde = sds.VESDE()
    x_T = _law_at_T_samples(sde, 16, 5)
    for predictor, levels in (("none", 4), ("reverse_diffusion", 3)):
        times = []

        def score(x, t):
            times.append(float(t[0]))
            return TARGET.score_fn(sde)(x, t)

        r = sds.pc_sample(sde, score, None, x_T=x_T, predictor=predictor, corrector="langevin", steps=3,
                          n_corrector_steps=2, eps=EPS, generator=torch.Generator().manual_seed(6))
        grid = torch.linspace(sde.T, EPS, 4, dtype=torch.float64).tolist()
        corrector_times = times if predictor == "none" else [t for k, t in enumerate(times) if k % 3 != 2]
        assert corrector_times == [t for t in grid[:levels] for _ in range(2)], times
        assert r.nfe == len(times)


def test_langevin_corrector_step_is_the_signal_to_noise_rule():
    """One corrector step is algorithm 5 of Song et al. (2021), transcribed: eps = 2 alpha_i (r ||z|| / ||s||)^2 with
    batch-mean norms and alpha_i = (alpha(t) / alpha(t - h))^2, x_mean = x + eps s, x = x_mean + sqrt(2 eps) z."""
    from sdescore._score import CheckedScore
    from sdescore.samplers import LangevinCorrector

    for sde in (sds.VPSDE(), sds.VESDE()):
        score = TARGET.score_fn(sde)
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        t = torch.full((64,), 0.4, dtype=torch.float64)
        h, snr = 0.01, 0.16
        got_x, got_mean = LangevinCorrector().step(sde, CheckedScore(score), x, t, h, 1, snr,
                                                   torch.Generator().manual_seed(8))
        z = torch.randn(64, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
        s = score(x, t)
        alpha_i = float(sde.kernel(t[:1])[0] / sde.kernel(t[:1] - h)[0]) ** 2
        step = 2 * alpha_i * (snr * float(z.norm(dim=1).mean()) / float(s.norm(dim=1).mean())) ** 2
        torch.testing.assert_close(got_mean, x + step * s, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_x, x + step * s + math.sqrt(2 * step) * z, rtol=1e-12, atol=1e-12)


def test_srk_makes_one_score_evaluation_per_stage_and_the_same_solve():
    """torchsde's SRK re-evaluates the drift of every earlier stage in each later one (10 calls for 4 stage states);
    within `sample` the repeats are answered from the memo: 4 evaluations a step, and the very solve that
    torchsde.sdeint makes on the same Brownian path without a memo."""
    sde = sds.VPSDE()
    x_T = _law_at_T_samples(sde, 16, 4)

    def bm():
        return torchsde.BrownianInterval(t0=0.0, t1=sde.T - EPS, size=tuple(x_T.shape), dtype=x_T.dtype, entropy=5,
                                         levy_area_approximation="space-time")

    rsde = sde.reverse(TARGET.score_fn(sde))
    r = rsde.sample(x_T, steps=7, method="srk", eps=EPS, bm=bm())
    assert r.nfe == 4 * 7
    calls = []
    counted = sde.reverse(lambda x, t: calls.append(1) or TARGET.score_fn(sde)(x, t))
    ts = torch.tensor([0.0, sde.T - EPS], dtype=torch.float64)
    direct = torchsde.sdeint(counted, x_T, ts, bm=bm(), method="srk", dt=(sde.T - EPS) / 7 * (1 + 1e-9))[-1]
    assert len(calls) >= 10 * 7  # without the memo: 10 drift calls a step, and torchsde's probes
    torch.testing.assert_close(r.x, direct, rtol=0, atol=0)


def test_reverse_sde_samples_under_inference_mode():
    sde = sds.VPSDE()
    x_T = _law_at_T_samples(sde, 8, 6)
    run = lambda: sde.reverse(TARGET.score_fn(sde)).sample(x_T, steps=10, generator=torch.Generator().manual_seed(2))  # noqa: E731
    with torch.inference_mode():
        inside = run()
    outside = run()
    assert inside.nfe == outside.nfe == 10
    torch.testing.assert_close(inside.x, outside.x, rtol=0, atol=0)


def test_langevin_corrector_takes_no_step_for_a_score_that_is_zero_on_the_batch():
    """The signal-to-noise rule divides by the score's norm: a zero score (a freshly initialised eps-network's
    output) gets step size 0, so x is left as it is instead of turning into inf * 0 = NaN."""
    from sdescore._score import CheckedScore
    from sdescore.samplers import LangevinCorrector

    sde = sds.VPSDE()
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 0.5, dtype=torch.float64)
    got_x, got_mean = LangevinCorrector().step(sde, CheckedScore(lambda x, t: torch.zeros_like(x)), x, t, 0.01, 2,
                                               0.16, torch.Generator().manual_seed(0))
    assert torch.equal(got_x, x) and torch.equal(got_mean, x)
    r = sds.pc_sample(sde, lambda x, t: torch.zeros_like(x), None, x_T=x, steps=50, corrector="langevin")
    assert bool(torch.isfinite(r.x).all())


def test_a_reverse_sde_reused_across_solves_reads_the_current_model():
    """sde.reverse(score) handed to torchsde.sdeint twice from the same y0 uses the score as it is at each solve
    (no drift remembered from the last solve, nor from before an in-place change of y0)."""
    sde = sds.VESDE()
    c = [1.0]
    rsde = sde.reverse(lambda x, t: -c[0] * x, probability_flow=True)
    y0 = torch.ones(3, 2)
    ts = torch.tensor([0.0, 0.01])
    first = torchsde.sdeint(rsde, y0, ts, method="euler", dt=0.01)[-1]
    c[0] = 9.0
    again = torchsde.sdeint(rsde, y0, ts, method="euler", dt=0.01)[-1]
    fresh = torchsde.sdeint(sde.reverse(lambda x, t: -9.0 * x, probability_flow=True), y0, ts, method="euler", dt=0.01)[-1]
    torch.testing.assert_close(again, fresh, rtol=1e-14, atol=1e-14)
    assert not torch.allclose(first, again)
    y0.mul_(2.0)
    doubled = torchsde.sdeint(rsde, y0, ts, method="euler", dt=0.01)[-1]
    torch.testing.assert_close(doubled, 2.0 * fresh, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("s", [-0.5, 1.5])
def test_the_reverse_sde_rejects_solver_times_outside_zero_to_T(s):
    rsde = sds.VPSDE().reverse(lambda x, t: -x)
    y = torch.ones(2, 2)
    for call in (lambda: rsde.f(torch.tensor(s), y), lambda: rsde.g(torch.tensor(s), y)):
        with pytest.raises(ValueError, match=r"solver times s = T - t in \[0, 1.0\]"):
            call()


def test_pc_sample_from_the_prior_draws_with_the_generator():
    sde = sds.VESDE()
    kw = dict(steps=20, generator=None, dtype=torch.float64)
    a = sds.pc_sample(sde, TARGET.score_fn(sde), (5, 2), **{**kw, "generator": torch.Generator().manual_seed(0)})
    b = sds.pc_sample(sde, TARGET.score_fn(sde), (5, 2), **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert torch.equal(a.x, b.x) and a.x.shape == (5, 2)


def test_vp_ancestral_step_is_ddpm_with_posterior_variance():
    """Ho et al. (2020), eq. 7: mean (x - beta_i / sqrt(1 - abar_i) eps) / sqrt(1 - beta_i), var beta_i (1 - abar_{i-1}) / (1 - abar_i)."""
    sde = sds.VPSDE()
    score = TARGET.score_fn(sde)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, h = torch.full((6,), 0.6, dtype=torch.float64), 0.01
    ancestral = sds.PREDICTORS["ancestral_sampling"]
    x_next, x_mean = ancestral.step(sde, score, x, t, h, torch.Generator().manual_seed(2))
    abar_t = sde.kernel(t)[0] ** 2
    abar_s = sde.kernel(t - h)[0] ** 2
    beta = 1 - abar_t / abar_s
    eps_hat = sds.eps_from_score(sde, score)(x, t)
    mean = (x - (beta / torch.sqrt(1 - abar_t))[:, None] * eps_hat) / torch.sqrt(1 - beta)[:, None]
    var = beta * (1 - abar_s) / (1 - abar_t)
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(x_mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x_next, mean + torch.sqrt(var)[:, None] * z, rtol=1e-10, atol=1e-12)


def test_ve_ancestral_step_is_smld():
    """Song et al. (2021), eq. 47: x + (s_i^2 - s_{i-1}^2) score + sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2) z."""
    sde = sds.VESDE()
    score = TARGET.score_fn(sde)
    x = 10 * torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, h = torch.full((6,), 0.6, dtype=torch.float64), 0.01
    x_next, x_mean = sds.PREDICTORS["ancestral_sampling"].step(sde, score, x, t, h, torch.Generator().manual_seed(2))
    s2, sp2 = sde.sigma(t) ** 2, sde.sigma(t - h) ** 2
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean = x + (s2 - sp2)[:, None] * score(x, t)
    torch.testing.assert_close(x_mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x_next, mean + torch.sqrt(sp2 * (s2 - sp2) / s2)[:, None] * z, rtol=1e-10, atol=1e-12)


def test_samplers_keep_the_data_shape():
    """Images (B, C, H, W) go through every sampler; the score sees the image shape."""
    sde = sds.VPSDE()
    d = 16
    target = GaussianMixture(torch.ones(1), torch.zeros(1, d), torch.full((1,), 0.5))
    shapes = []

    def score(x, t):
        shapes.append(tuple(x.shape))
        return target.score_fn(sde)(x, t)

    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    outs = [
        sde.reverse(score).sample(x_T, steps=5, eps=EPS),
        sde.probability_flow(score).sample(x_T, eps=EPS),
        sds.pc_sample(sde, score, None, x_T=x_T, steps=30, eps=EPS),
    ]
    assert all(r.x.shape == x_T.shape for r in outs)
    assert set(shapes) == {(3, 1, 4, 4)}


def _nan_below_half(x, t):
    return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), -x)


@pytest.mark.parametrize(
    "run",
    [
        lambda sde, x: sde.reverse(_nan_below_half).sample(x, steps=10, eps=EPS),
        lambda sde, x: sde.probability_flow(_nan_below_half).sample(x, method="euler", steps=10, eps=EPS),
        lambda sde, x: sds.pc_sample(
            sde, _nan_below_half, None, x_T=x, predictor="euler_maruyama", steps=10, eps=EPS, corrector="none"
        ),
    ],
    ids=["reverse", "ode", "pc"],
)
def test_non_finite_scores_raise_with_step_and_time(run):
    # grid 1, 0.9001, ..., step k evaluates at t = 1 - k * 0.0999; the first t below 0.5 is step 6, t = 0.4006
    with pytest.raises(sds.NonFiniteError, match=r"step 6 \(t=0\.4006"):
        run(sds.VPSDE(), torch.randn(4, 2, dtype=torch.float64))


@pytest.mark.parametrize(
    "method, step",
    [("euler", 5), ("milstein", 5), ("euler_heun", 5), ("midpoint", 5), ("srk", 4), ("heun", 4),
     ("reversible_heun", 4)],
)
def test_reverse_sde_names_the_step_that_made_the_non_finite_evaluation(method, step):
    """A score that is NaN from t = T - 5 h on (10 steps of h = (T - eps) / 10). Euler-type methods and the
    midpoint rule first evaluate there at the start of step 5. Heun's second evaluation, reversible Heun's one
    evaluation per step and srk's last stage lie at the end of step 4, the time of step 5's start: the message
    named step 5 for them (the step of the time alone)."""
    sde = sds.VPSDE()
    h = (sde.T - EPS) / 10
    cut = sde.T - 5 * h + 1e-9

    def score(x, t):
        return torch.where(t[:, None] <= cut, torch.full_like(x, float("nan")), -x)

    with pytest.raises(sds.NonFiniteError, match=rf"at step {step} \(t=0\.5005"):
        sde.reverse(score).sample(torch.randn(4, 2, dtype=torch.float64), steps=10, eps=EPS, method=method)


def test_score_output_is_checked():
    sde = sds.VPSDE()
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"score_fn returned shape \(4, 1\) for x of shape \(4, 2\)"):
        sde.reverse(lambda x, t: x[:, :1]).sample(x, steps=2)
    with pytest.raises(TypeError, match="score_fn returned dtype torch.float32"):
        sde.probability_flow(lambda x, t: x.float()).sample(x, method="euler", steps=2)
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        sds.pc_sample(sde, lambda x, t: 0.0, None, x_T=x, steps=2)


class _Method:
    """A user's predictor or corrector whose `evals` is given; its step leaves x unchanged (and the score uncalled)."""

    def __init__(self, evals):
        self.evals = evals

    def step(self, sde, score, x, *args):
        return x, x


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda sde, s, x: sde.reverse(s).sample(x, steps=0), ValueError, "steps must be >= 1"),
        (lambda sde, s, x: sde.reverse(s).sample(x, eps=0.0), ValueError, "eps must be > 0"),
        (lambda sde, s, x: sde.reverse(s).sample(x, eps=1.0), ValueError, r"eps must lie in \(0, T=1.0\)"),
        (lambda sde, s, x: sde.reverse(s).sample(x, method="rk45"), ValueError, "method must be one of"),
        (lambda sde, s, x: sde.reverse(s).sample(x[0]), ValueError, "at least 2 dimensions"),
        (lambda sde, s, x: sde.reverse(s).sample(x, generator=1), TypeError, "generator must be a torch.Generator"),
        (lambda sde, s, x: sde.probability_flow(s).sample(x, method="rk45"), ValueError, "torchdiffeq method"),
        (lambda sde, s, x: sde.probability_flow(s).sample(x, steps=10), ValueError, "steps applies to fixed-step"),
        (lambda sde, s, x: sde.probability_flow(s).sample(x, method="rk4"), ValueError, "needs steps="),
        (lambda sde, s, x: sde.probability_flow(s).sample(x, rtol=-1.0), ValueError, "rtol must be > 0"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, predictor="heun"), ValueError, "predictor must be one of"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, snr=0.0), ValueError, "snr must be > 0"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, steps=10), ValueError, "DDPM chain needs beta"),
        (lambda sde, s, x: sds.pc_sample(sde, s, (3, 2), x_T=x), ValueError, "disagrees with x_T"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None), ValueError, "pass shape"),
        (lambda sde, s, x: sds.pc_sample("vp", s, (3, 2)), TypeError, "sde must be an sdescore.SDE"),
        (lambda sde, s, x: sde.reverse(s).sample(x * math.inf), ValueError, "x_T holds non-finite values"),
        (lambda sde, s, x: sde.reverse(s).sample(x.long()), TypeError, "floating dtype"),
        (lambda sde, s, x: sde.reverse(s).sample(x, 5), TypeError, "positional"),
        (lambda sde, s, x: sde.probability_flow(s).sample(x, "rk4"), TypeError, "positional"),
        (lambda sde, s, x: sde.reverse(s, probability_flow="no"), TypeError, "probability_flow must be True or False"),
        (lambda sde, s, x: sde.reverse(s).sample(x, generator=torch.Generator(), bm=object()), ValueError,
         "generator= or bm=, not both"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, denoise="no"), TypeError, "denoise must be True or False"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, predictor=5), TypeError, r"predictor must be one of .* or an object with evals, step"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, corrector=None), TypeError, "corrector must be one of"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, dtype=torch.float32), ValueError, "with x_T given"),
        (lambda sde, s, x: sds.pc_sample(sde, s, (4, 2), dtype=torch.int64), TypeError, "dtype must be a floating torch.dtype"),
        (lambda sde, s, x: sds.pc_sample(sde, s, 5), TypeError, "shape must be a sequence"),
        (lambda sde, s, x: sds.pc_sample(sde, s, (4, 2.0)), TypeError, "shape must hold integers"),
        (lambda sde, s, x: sds.pc_sample(sde, s, 5, x_T=x), TypeError, "shape must be a sequence .* got int"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, predictor=_Method(evals="1")), TypeError,
         "predictor.evals must be an integer, got str '1'"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, predictor=_Method(evals=-1)), ValueError,
         r"predictor.evals must be >= 0, got -1"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, corrector=_Method(evals=1)), TypeError,
         r"corrector.evals must be a method evals\(n_steps\) -> int"),
        (lambda sde, s, x: sds.pc_sample(sde, s, None, x_T=x, corrector=_Method(evals=lambda n: 1.0)), TypeError,
         r"corrector.evals\(n_corrector_steps\) must be an integer, got float 1.0"),
        (lambda sde, s, x: sds.adaptive_ode_sample(sde, s, x, method="rk4"), ValueError, "takes an adaptive torchdiffeq method"),
        (lambda sde, s, x: sde.probability_flow(s).sample(x, method="euler", steps=3, rtol=-1.0), ValueError, "rtol must be > 0"),
        (lambda sde, s, x: sde.probability_flow(s).sample(x.half()), TypeError,
         r"x_T has dtype torch.float16, but the adaptive method 'tsit5' needs float32 or float64"),
        (lambda sde, s, x: sde.probability_flow(s).encode(x.bfloat16(), method="dopri5"), TypeError,
         r"x0 has dtype torch.bfloat16, but the adaptive method 'dopri5' needs float32"),
        (lambda sde, s, x: sde.reverse(s).sample(x, bm=3), TypeError, "bm must be a torchsde Brownian motion"),
        (lambda sde, s, x: sde.reverse(s).sample(x, bm=torchsde.BrownianInterval(t0=0.0, t1=0.999, size=(4, 3), dtype=x.dtype)),
         ValueError, r"bm must have the shape \(B, D\) = \(4, 2\)"),
        (lambda sde, s, x: sde.reverse(s).sample(x, bm=torchsde.BrownianInterval(t0=0.0, t1=0.5, size=(4, 2), dtype=x.dtype)),
         ValueError, r"bm covers the solver times \[0.0, 0.5\], but the solve runs over \[0, T - eps\] = \[0, 0.999\]"),
    ],
)
def test_bad_sampler_arguments_are_rejected(call, error, match):
    sde = sds.VPSDE()
    with pytest.raises(error, match=match):
        call(sde, TARGET.score_fn(sde), torch.randn(4, 2, dtype=torch.float64))


def test_a_custom_methods_evaluation_count_is_checked_before_sampling():
    """A predictor's `evals` (or a corrector's evals(n)) that is not a non-negative integer raises before the first
    score evaluation, not after the whole loop."""
    sde = sds.VESDE()
    calls = []

    def score(x, t):
        calls.append(t)
        return -x

    class Predictor:
        evals = "1"

        def step(self, sde, score, x, t, h, generator):
            return x + score(x, t.to(x.dtype)), x

    with pytest.raises(TypeError, match="predictor.evals must be an integer, got str '1'"):
        sds.pc_sample(sde, score, None, x_T=torch.randn(4, 2), predictor=Predictor(), steps=100)
    assert calls == []


# ---------------------------------------------------------------------------------------------- half precision
@HALF
@pytest.mark.parametrize("name", list(HALF_SDES))
@pytest.mark.parametrize("method", PREDICTORS + ["langevin"])
def test_one_step_in_half_precision_agrees_with_float64(name, dtype, method, monkeypatch):
    """One predictor (or Langevin corrector) step from t = 1 with h = 0.04 on a half-precision state, against the
    same step on the state in float64 with the same noise z. g(1)^2 h, G_i^2 and the ancestral b^2 reach 1e5 to 7e5
    for the VE-SDEs, beyond float16's 65504: cast to the state's dtype they were inf (NonFiniteError at step 1).
    The step now rounds s (and the VP drift f), then the new state, once each: eps / 2 of one of the update's terms
    each, with the float32 arithmetic between (~1e-7) far below. The terms are |x|, |x_mean| and |x_mean - x| (plus the
    noise term |x_next - x_mean| and |x_next| for the noisy state); 2 eps times their sum leaves a margin of three over
    the largest error measured (0.56 eps, the VP reverse-diffusion step in bfloat16)."""
    from sdescore._score import CheckedScore
    from sdescore.samplers import CORRECTORS, PREDICTORS as REGISTRY

    sde = HALF_SDES[name]()
    B = 32
    alpha, std = sde.kernel(torch.ones(1, dtype=torch.float64))
    # |x| >= sqrt(v) / 2 keeps the exact score |x| / v above float16's smallest normal number: a subnormal score
    # is the network's own loss of digits (amplified by g^2 h = 1e5), which no step can restore
    n = torch.randn(B, 3, generator=torch.Generator().manual_seed(0))
    x = (torch.sqrt(alpha**2 + std**2) * n.sign() * (0.5 + n.abs())).to(dtype)
    z = torch.randn(B, 3, generator=torch.Generator().manual_seed(1)).to(dtype)  # representable in both precisions
    monkeypatch.setattr("sdescore.samplers._randn_like", lambda like, generator: z.to(like.dtype))
    t, h = torch.ones(B, dtype=torch.float64), 0.04

    def step(state):
        score = CheckedScore(gaussian_score(sde))
        if method == "langevin":
            return CORRECTORS["langevin"].step(sde, score, state, t, h, 1, 0.2, None)
        return REGISTRY[method].step(sde, score, state, t, h, None)

    got, got_mean = step(x)
    want, want_mean = step(x.double())
    assert got.dtype == got_mean.dtype == dtype
    eps, X = torch.finfo(dtype).eps, x.double()
    terms = X.abs() + want_mean.abs() + (want_mean - X).abs()
    assert bool(((got_mean.double() - want_mean).abs() <= 2 * eps * terms).all())
    terms = terms + want.abs() + (want - want_mean).abs()
    assert bool(((got.double() - want).abs() <= 2 * eps * terms).all())


@HALF
@pytest.mark.parametrize("name", list(HALF_SDES))
@pytest.mark.parametrize("predictor", PREDICTORS)
def test_pc_sample_in_half_precision_follows_the_float64_run(name, dtype, predictor, monkeypatch):
    """pc_sample(predictor + langevin, 50 steps) from a half-precision x_T stays within 8 eps max|x| of the run in
    float64 that sees the same noise (drawn in float16, exact in both). Each step rounds the state to eps / 2 of its
    size; over 50 steps these errors add like a random walk (sqrt(50) eps / 2 = 3.5 eps) and the reverse dynamics
    contract those made at high noise: 8 eps max|x| (max|x| about 3 here) leaves a margin of three over the largest
    error measured (2.6 eps max|x|, VP reverse diffusion in float16). In float16 the VE runs raised NonFiniteError at
    step 1 where g(1)^2 = 3e6 (Euler–Maruyama) or G_i^2 = 4e5 (VE(1e-3, 1000)) had been rounded to inf."""
    sde = HALF_SDES[name]()
    x_T = (sde.prior_std * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))).half()

    def run(x):
        noise = torch.Generator().manual_seed(1)
        monkeypatch.setattr(
            "sdescore.samplers._randn_like",
            lambda like, generator: torch.randn(like.shape, generator=noise, dtype=torch.float16).to(like.dtype),
        )
        return sds.pc_sample(sde, gaussian_score(sde), None, x_T=x, predictor=predictor, corrector="langevin",
                             steps=50).x

    got, want = run(x_T.to(dtype)), run(x_T.double())
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert float((got.double() - want).abs().max()) <= 8 * eps * float(want.abs().max())


def _vp_linear_step(sde, predictor, t, h):
    """(c, G^2) of a predictor's step x <- c x + G z from t to t - h on the VP-SDE with the exact score -x of N(0, I)
    data (alpha^2 + std^2 = 1): Euler–Maruyama's x + beta h x / 2 - beta h x; reverse diffusion's x - f_i - beta_i x,
    f_i = (sqrt(1 - beta_i) - 1) x, beta_i = beta(t) h; the ancestral step's mean (1 - b^2) x / a = a x, with
    a = alpha(t) / alpha(t - h), b^2 = 1 - a^2, and its variance b^2 std(t - h)^2 / std(t)^2."""
    beta = sde.beta(t)
    if predictor == "euler_maruyama":
        return 1 - beta * h / 2, beta * h
    if predictor == "reverse_diffusion":
        return 2 - torch.sqrt(1 - beta * h) - beta * h, beta * h
    (alpha_t, std_t), (alpha_s, std_s) = sde.kernel(t), sde.kernel(t - h)
    a = alpha_t / alpha_s
    return a, (1 - a**2) * std_s**2 / std_t**2


@HALF
@pytest.mark.parametrize("predictor", PREDICTORS)
def test_pc_sample_vp_in_half_precision_follows_the_float64_chain(dtype, predictor, monkeypatch):
    """pc_sample(VP-SDE, exact score of N(0, I) data, 1000 steps, no corrector) from x_T ~ N(0, I) (8192 values) in
    half precision stays within the rounding bound M of `rounding_bound` of the float64 run fed the same noise
    (drawn in float32 and rounded to the half dtype: exact in both): mean (x_half - x_64)^2 <= M, with each step's
    (c, G^2) of `_vp_linear_step` (the last step, denoised, adds no noise). Measured 0.54 M to 0.56 M in float16 and
    bfloat16 for the three predictors (3 / (8 ln 2) = 0.54 for mantissas spread log-uniformly). The Euler–Maruyama
    and reverse-diffusion steps rounded x - f h (resp. x - f_i) to the state's dtype before adding the float32 score
    term: f h ~ beta h x / 2 is below half an ulp of a bfloat16 x for t < 0.19 (for some x up to 0.39), so the
    contraction was lost there:
    2.6 M (float16) and 24 M (bfloat16), whose variance was 0.75 against the float64 run's 1.02 (bound on the
    difference, M + 2 sqrt(M var) by Cauchy-Schwarz: 0.08). The ancestral step met the state in float32 already."""
    sde = HALF_SDES["VP"]()
    steps, eps = 1000, 1e-3
    x_T = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0)).to(dtype)
    runs = []
    for x in (x_T, x_T.double()):
        noise = torch.Generator().manual_seed(1)
        monkeypatch.setattr(
            "sdescore.samplers._randn_like",
            lambda like, generator: torch.randn(like.shape, generator=noise).to(dtype).to(like.dtype),
        )
        runs.append(sds.pc_sample(sde, gaussian_score(sde), None, x_T=x, predictor=predictor, corrector="none",
                                  steps=steps, eps=eps).x)
    got, want = runs
    assert got.dtype == dtype
    grid = torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)
    c, G2 = _vp_linear_step(sde, predictor, grid[:-1], grid[:-1] - grid[1:])
    M = rounding_bound(dtype, c, torch.cat([G2[:-1], G2.new_zeros(1)]))
    assert float((got.double() - want).pow(2).mean()) <= M


@HALF
@pytest.mark.parametrize("name", list(HALF_SDES))
def test_probability_flow_velocity_in_half_precision_agrees_with_float64(name, dtype):
    """The probability-flow velocity f - g^2 s / 2 (the entry of a drift that is not linear, and of a time that
    requires grad) on a half-precision state, against float64 at the same x and t. g(1)^2 = 3e6 for VE(0.01, 378)
    exceeds float16's 65504: taken in x's dtype it was inf, and the velocity NaN. The velocity rounds s and the
    result once each (the drift f is x's own rounding): 2 eps times |f| + |g^2 s / 2| + |v| bounds it."""
    sde = HALF_SDES[name]()
    ode = sds.ProbabilityFlowODE(sde, gaussian_score(sde))
    t = torch.tensor([1.0, 0.5, 0.1, 0.02], dtype=torch.float64).repeat_interleave(8)
    alpha, std = sde.kernel(t)
    n = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    x = (torch.sqrt(alpha**2 + std**2)[:, None] * n.sign() * (0.5 + n.abs())).to(dtype)
    got = ode.velocity(x, t)
    X = x.double()
    want = ode.velocity(X, t)
    f, g = sde.f(X, t), sde.g(t)
    terms = f.abs() + (0.5 * (g * g)[:, None] * gaussian_score(sde)(X, t)).abs() + want.abs()
    assert got.dtype == dtype
    assert bool(((got.double() - want).abs() <= 2 * torch.finfo(dtype).eps * terms).all())


def test_a_reverse_sde_used_directly_by_torchsde_keeps_nothing_and_names_a_non_finite_score():
    """The object sde.reverse(score) lives across any number of torchsde.sdeint solves, where no sampler resolves
    a record: it checks each call at once and keeps nothing (a record grew by one entry per call, without bound),
    and a NaN score raises NonFiniteError naming the time instead of flowing into the solution."""
    sde = sds.VPSDE()
    rsde = sde.reverse(lambda x, t: -x)
    y0, ts = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), torch.tensor([0.0, 0.5])
    for _ in range(3):
        torchsde.sdeint(rsde, y0, ts, method="euler", dt=0.05)
    assert rsde._score.nfe == 0 and not rsde._score._when
    nan_after = sde.reverse(lambda x, t: torch.where(t[:, None] < 0.7, float("nan"), -x))
    with pytest.raises(sds.NonFiniteError, match=r"score_fn returned NaN or inf at t=0\.[67]"):
        torchsde.sdeint(nan_after, y0, ts, method="euler", dt=0.05)


def test_reverse_sde_names_a_bad_event_shape_and_a_brownian_motion_of_another_dtype():
    sde = sds.VPSDE()
    with pytest.raises(TypeError, match=r"event_shape must be a tuple of positive ints .* got 5"):
        ReverseSDE(sde, lambda x, t: -x, event_shape=5)
    rsde = ReverseSDE(sde, lambda x, t: -x, event_shape=(2, 3))
    y0, ts = torch.zeros(4, 5), torch.tensor([0.0, 0.5])
    with pytest.raises(ValueError, match=r"event_shape \(2, 3\) holds 6 values, but the flattened state has D = 5"):
        torchsde.sdeint(rsde, y0, ts, method="euler", dt=0.1)
    x_T = torch.zeros(4, 2, dtype=torch.float64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=sde.T - 1e-3, size=(4, 2), dtype=torch.float32)
    with pytest.raises(TypeError, match=r"bm must have the state's dtype torch\.float64, got torch\.float32"):
        sde.reverse(lambda x, t: -x).sample(x_T, steps=5, bm=bm)
