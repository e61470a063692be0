"""log_likelihood and bits_per_dim against closed forms: Gaussian-mixture densities, Hutchinson's expectation,
discretized Gaussians, and the input checks."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch
import torchdiffeq
from hypothesis import given, settings
from hypothesis import strategies as st

import sdescore as sds
from sdescore.likelihood import (
    PROBES,
    TIME_VARIABLES,
    TRACES,
    bits_per_dim,
    dataset_bits_per_dim,
    log_likelihood,
)
from validation import GaussianMixture, random_anisotropic, ring, single_gaussian

pytestmark = pytest.mark.usefixtures("float64")

EPS = 1e-5
SDES = {
    "VE": lambda: sds.VESDE(sigma_min=0.01, sigma_max=50.0),
    "VP": lambda: sds.VPSDE(beta_min=0.1, beta_max=20.0),
    "subVP": lambda: sds.SubVPSDE(beta_min=0.1, beta_max=20.0),
}


def centered(mixture: GaussianMixture) -> GaussianMixture:
    """The mixture shifted to mean zero. A centered law differs from the VE prior N(0, sigma_max^2 I) at T only at
    second order in |mu| / sigma_max, so the prior's share of the error drops below the 2e-3 nats we test."""
    return GaussianMixture(mixture.weights, mixture.means - mixture.mean(), mixture.covs)


MIXTURES = {
    2: lambda: ring(n_modes=4, radius=1.0, std=0.25),
    8: lambda: centered(random_anisotropic(d=8, n_modes=3, seed=0, spread=1.0, min_std=0.1, max_std=0.5)),
}


def _setup(sde_name: str, d: int, n: int, seed: int = 0):
    sde, mixture = SDES[sde_name](), MIXTURES[d]()
    x = mixture.marginal(sde, EPS).sample(n, torch.Generator().manual_seed(seed))
    truth = mixture.marginal(sde, EPS).log_prob(x)
    exact_prior = mixture.marginal(sde, sde.T).log_prob
    return sde, mixture.score_fn(sde), x, truth, exact_prior


def _rms(v: torch.Tensor) -> float:
    return float(v.pow(2).mean().sqrt())


# ---------------------------------------------------------------------------------------------- against the density
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("d", [2, 8])
def test_logp_matches_the_mixture_density_at_eps(sde_name, d):
    """Mean error over x ~ p_eps below 2e-3 nats with the SDE's prior; at solver tolerance with the exact law at T.

    With the SDE's prior the error of a sample is [log pi(z) - log p_T(z)] + the solver's; its mean over x ~ p_eps is
    -KL(p_T || pi) plus the solver's. With prior_logp = log p_T only the solver's is left: the solver controls the
    RMS over the batch of its local errors relative to atol + rtol |state|, and we require the RMS error in logp
    within 10 (atol + rtol RMS|delta_logp|).
    """
    sde, score, x, truth, exact_prior = _setup(sde_name, d, n=256)
    res = log_likelihood(sde, score, x)
    err = res.logp - truth
    se = float(err.std()) / math.sqrt(err.numel())
    assert se < 5e-4  # the sample is large enough for the mean to resolve 2e-3
    assert abs(float(err.mean())) < 2e-3

    tol = 1e-5
    exact = log_likelihood(sde, score, x[:32], prior_logp=exact_prior, rtol=tol, atol=tol)
    assert _rms(exact.logp - truth[:32]) <= 10 * (tol + tol * _rms(exact.delta_logp))
    assert torch.equal(exact.logp, exact.prior_logp + exact.delta_logp)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_logp_error_is_proportional_to_the_solver_tolerance(sde_name):
    """With the exact law at T, the fitted slope of log RMS error against log tolerance (rtol = atol, 1e-4 .. 1e-7)
    is that of a tolerance-proportional solver, 1 (accepted: [0.85, 1.4]), and the error at 1e-7 is below 1e-6."""
    sde, score, x, truth, exact_prior = _setup(sde_name, 2, n=32, seed=1)
    tols = [1e-4, 1e-5, 1e-6, 1e-7]
    errs = []
    for tol in tols:
        res = log_likelihood(sde, score, x, prior_logp=exact_prior, rtol=tol, atol=tol)
        errs.append(_rms(res.logp - truth))
    slope = np.polyfit(np.log(tols), np.log(errs), 1)[0]
    assert 0.85 <= slope <= 1.4, (slope, errs)
    assert errs[-1] < 1e-6


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("time_variable", list(TIME_VARIABLES))
def test_every_time_variable_reaches_the_density(sde_name, time_variable):
    """The integration variable and frame change the steps, not the answer: each matches the closed form."""
    sde, score, x, truth, exact_prior = _setup(sde_name, 2, n=16, seed=2)
    tol = 1e-5
    res = log_likelihood(sde, score, x, prior_logp=exact_prior, rtol=tol, atol=tol, time_variable=time_variable)
    assert _rms(res.logp - truth) <= 10 * (tol + tol * _rms(res.delta_logp))


def test_latent_is_the_closed_form_flow_of_a_gaussian(sde):
    """For Gaussian data the probability-flow map x(eps) -> x(T) is known (GaussianMixture.ode_solution)."""
    gauss = single_gaussian()
    x = gauss.marginal(sde, EPS).sample(16, torch.Generator().manual_seed(3))
    res = log_likelihood(sde, gauss.score_fn(sde), x, rtol=1e-8, atol=1e-8)
    z = gauss.ode_solution(sde, x, EPS, sde.T)
    assert torch.allclose(res.z, z, rtol=1e-5, atol=1e-5 * sde.prior_std)
    truth = gauss.marginal(sde, EPS).log_prob(x)
    exact = log_likelihood(sde, gauss.score_fn(sde), x, prior_logp=gauss.marginal(sde, sde.T).log_prob, rtol=1e-8, atol=1e-8)
    assert float((exact.logp - truth).abs().max()) < 1e-6


def test_the_default_time_variable_needs_a_quarter_fewer_evaluations_than_log_sigma_and_t_for_ve():
    """The measured reason for the default: at equal tolerance 'vp' takes fewer score evaluations than 'log_sigma'
    (rho = -lambda / 2) and than the VE-SDE's own time; see docs/theory/likelihood.md."""
    sde, score, x, _, _ = _setup("VE", 2, n=16)
    nfe = {tv: log_likelihood(sde, score, x, time_variable=tv).nfe for tv in TIME_VARIABLES}
    assert nfe["vp"] <= 0.75 * nfe["log_sigma"], nfe
    assert nfe["vp"] <= 0.75 * nfe["t"], nfe


def test_any_data_shape_gives_the_flat_result():
    sde, score, x, _, _ = _setup("VP", 8, n=8)
    flat = log_likelihood(sde, score, x)
    image = log_likelihood(sde, score, x.reshape(8, 2, 2, 2))
    assert image.z.shape == (8, 2, 2, 2)
    assert torch.allclose(image.logp, flat.logp, rtol=1e-10, atol=1e-10)


def test_float32_data_stays_float32_and_close_to_float64():
    sde, score, x, _, _ = _setup("VP", 2, n=16)
    r64 = log_likelihood(sde, score, x)
    r32 = log_likelihood(sde, score, x.float())
    assert r32.logp.dtype == torch.float32 and r32.z.dtype == torch.float32
    assert float((r32.logp.double() - r64.logp).abs().max()) < 1e-3


def test_fixed_step_methods_converge_to_the_adaptive_result():
    sde, score, x, _, _ = _setup("VP", 2, n=8)
    ref = log_likelihood(sde, score, x, rtol=1e-9, atol=1e-9)
    errs = [float((log_likelihood(sde, score, x, method="rk4", steps=n).logp - ref.logp).abs().max()) for n in (25, 50)]
    assert errs[1] < errs[0] / 8  # fourth order: 16x per halving, 8x accepted
    assert errs[1] < 1e-3


# ---------------------------------------------------------------------------------------------- the ODE's bookkeeping
class _Recorder:
    """A score that records the times it is called at and keeps weak references to its outputs."""

    def __init__(self, score):
        self.score, self.times, self.outputs = score, [], []

    def __call__(self, x, t):
        self.times.append(t.detach().clone())
        s = self.score(x, t)
        self.outputs.append(weakref.ref(s))
        return s


@pytest.mark.parametrize("time_variable", list(TIME_VARIABLES))
def test_score_is_evaluated_only_inside_eps_to_T_and_nfe_counts_the_calls(sde, time_variable, monkeypatch):
    """The score sees times in [eps, T] only, and the solver itself never steps past the end of the integration:
    its stages (the step_t option) stay inside [tau(eps), tau(T)], up to the initial-step probe, whose time the
    function clamps. The solver's own times are read from the function torchdiffeq calls, before the clamp."""
    taus, stage_taus = [], []
    real_odeint = torchdiffeq.odeint

    def recording_odeint(func, y0, t, **kwargs):
        def recorded(tau, state):
            stage_taus.append(float(tau))
            return func(tau, state)
        taus.append(t)
        return real_odeint(recorded, y0, t, **kwargs)

    monkeypatch.setattr(torchdiffeq, "odeint", recording_odeint)
    mixture = MIXTURES[2]()
    rec = _Recorder(mixture.score_fn(sde))
    x = mixture.marginal(sde, EPS).sample(4, torch.Generator().manual_seed(0))
    res = log_likelihood(sde, rec, x, time_variable=time_variable, rtol=1e-3, atol=1e-3)
    t = torch.cat(rec.times)
    assert float(t.min()) >= EPS and float(t.max()) <= sde.T
    assert res.nfe == len(rec.times)
    (ends,) = taus
    lo, hi = float(ends.min()), float(ends.max())
    # every evaluation after the first two (the initial state and the initial-step probe) is a stage of a step
    inside = [tau for tau in stage_taus[2:] if lo - 1e-12 * max(1.0, abs(lo)) <= tau <= hi + 1e-12 * max(1.0, abs(hi))]
    assert len(inside) == len(stage_taus) - 2, (lo, hi, [tau for tau in stage_taus[2:] if tau not in inside])


def test_no_graph_survives_and_no_grad_mode_is_honoured():
    """Outputs carry no graph, the score's outputs are freed, and the call works inside torch.no_grad()."""
    sde, _, x, _, _ = _setup("VP", 2, n=4)
    rec = _Recorder(MIXTURES[2]().score_fn(sde))
    with torch.no_grad():
        res = log_likelihood(sde, rec, x.requires_grad_(True), trace="hutchinson", generator=torch.Generator().manual_seed(0))
    gc.collect()
    assert all(ref() is None for ref in rec.outputs)
    for v in (res.logp, res.prior_logp, res.delta_logp, res.z):
        assert v.grad_fn is None and not v.requires_grad


def test_generic_sde_without_a_kernel_falls_back_to_its_own_time():
    """An SDE given only by f and g integrates in t and gives the same likelihood as the VP-SDE it copies."""

    class BareVP(sds.SDE):
        def __init__(self):
            super().__init__()
            self.vp = sds.VPSDE()

        def f(self, x, t):
            return self.vp.f(x, t)

        def g(self, t):
            return self.vp.g(t)

        @property
        def prior_std(self):
            return 1.0

    bare, vp = BareVP(), sds.VPSDE()
    mixture = MIXTURES[2]()
    x = mixture.marginal(vp, EPS).sample(8, torch.Generator().manual_seed(0))
    score = mixture.score_fn(vp)
    auto = log_likelihood(bare, score, x)
    as_t = log_likelihood(vp, score, x, time_variable="t")
    assert torch.allclose(auto.logp, as_t.logp, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="time_variable='t'"):
        log_likelihood(bare, score, x, time_variable="vp")


class _BisectVP(sds.VPSDE):
    """t_from_log_snr inverted by bisection under torch.no_grad(): exact values, no autograd graph."""

    def t_from_log_snr(self, lam):
        with torch.no_grad():
            lo, hi = torch.zeros_like(lam), torch.full_like(lam, self.T)
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                above = self.log_snr(mid) > lam  # log_snr decreases in t
                lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
            return 0.5 * (lo + hi)


class _TabulatedVP(sds.VPSDE):
    """kernel values exact but detached, as from a table: d log alpha / dt invisible to autograd."""

    def kernel(self, t):
        alpha, std = super().kernel(t.detach())
        return alpha.detach(), std.detach()


class _FlatGraphVP(sds.VPSDE):
    """t_from_log_snr with a graph whose derivative is 0: only central differences can tell."""

    def t_from_log_snr(self, lam):
        return super().t_from_log_snr(lam).detach() + 0.0 * lam


@pytest.mark.parametrize(
    "sde_class, culprit",
    [(_BisectVP, "t_from_log_snr"), (_TabulatedVP, "kernel"), (_FlatGraphVP, "t_from_log_snr")],
    ids=["bisection", "table", "zero-derivative graph"],
)
def test_a_log_snr_clock_autograd_cannot_differentiate_falls_back_to_t_or_raises(sde_class, culprit):
    """The old clock turned a derivative autograd could not see into 0 (dt/dtau = 0, or d log alpha / dt = 0 for a
    non-constant alpha): the default time variable was silently wrong by 8-11 nats. Now the default integrates in t
    (f and g are the VP-SDE's, so the result equals time_variable='t' on the VP-SDE to the last bit, and the
    exact density to the solver's tolerance); an explicit log-SNR clock raises a ValueError naming the method."""
    sde, vp = sde_class(), sds.VPSDE()
    mixture = MIXTURES[2]()
    x = mixture.marginal(vp, EPS).sample(8, torch.Generator().manual_seed(0))
    truth = mixture.marginal(vp, EPS).log_prob(x)
    prior = mixture.marginal(vp, vp.T).log_prob
    score = mixture.score_fn(vp)
    auto = log_likelihood(sde, score, x, prior_logp=prior)
    as_t = log_likelihood(vp, score, x, prior_logp=prior, time_variable="t")
    torch.testing.assert_close(auto.logp, as_t.logp, rtol=0, atol=0)
    assert auto.nfe == as_t.nfe
    assert float((auto.logp - truth).abs().max()) < 1e-3  # the solver's error at the default tolerances
    for name in ("vp", "log_sigma"):
        with pytest.raises(ValueError, match=rf"{sde_class.__name__}\.{culprit}.*time_variable='t'"):
            log_likelihood(sde, score, x, time_variable=name)


def test_nonfinite_score_raises_naming_the_time():
    """The score turns NaN for t > 0.52: the error names the first evaluation past that time, its index and t.
    An adaptive solver's step is not counted (rejected steps and the initial-step probe evaluate too), so none is
    named; rk4 on 10 steps of the 'vp' clock (tau = t for this VP-SDE) names its step, 5 (t = 0.5 + 0.1 / 3)."""
    sde = sds.VPSDE()

    def bad(x, t):
        return torch.where(t[:, None] > 0.52, torch.full_like(x, float("nan")), -x)

    for method, steps in (("tsit5", None), ("dopri5", None), ("rk4", 10)):
        rec = _Recorder(bad)
        with pytest.raises(sds.NonFiniteError) as info:
            log_likelihood(sde, rec, torch.zeros(2, 2), method=method, steps=steps)
        times = [float(t[0]) for t in rec.times]
        k = next(i for i, t in enumerate(times) if t > 0.52)
        message = str(info.value)
        assert f"(t={times[k]:.6g}, score evaluation {k})" in message, (method, message)
        if steps is None:
            assert "in the solve" in message and "at step" not in message, message
        else:
            assert message.startswith("log_likelihood: non-finite values appeared at step 5 (t=0.533"), message


@pytest.mark.parametrize("method, steps", [("tsit5", None), ("dopri5", None), ("rk4", 10)])
def test_a_nan_divergence_with_finite_scores_is_the_same_nonfinite_error_for_every_method(method, steps):
    """torch.where's classic pitfall: the score is -x everywhere but the unselected branch sqrt(-|x|) has a NaN
    gradient, so delta_logp turns NaN while every score is finite. torchdiffeq's step (dopri5) raises an
    AssertionError, sdescore's (tsit5) sees the NaN in its error ratio, a fixed-step method integrates it to the
    end: the same NonFiniteError in every case, naming delta_logp and the gradient, no AssertionError."""

    def score(x, t):
        return torch.where(x > 1e9, torch.sqrt(-x.abs()), -x)

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(sds.NonFiniteError, match=r"^log_likelihood: delta_logp .* non-finite although every score "
                                                 r"was finite; check score_fn's gradient"):
        log_likelihood(sds.VPSDE(), score, x, method=method, steps=steps)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_a_score_cut_off_from_autograd_is_refused_not_silently_wrong(sde_name):
    """The divergence differentiates v = f - g^2 s / 2 by autograd. A score under torch.no_grad() or computed from
    x.detach() leaves only f in the graph: VP and sub-VP would return div f alone, wrong by the whole score term,
    and VE (f = 0) would meet autograd's own error. Each is a TypeError naming score_fn and the cause, for both
    traces (a network on x.detach() too, whose output requires grad through its parameters); torch.inference_mode()
    is refused at entry, and torch.no_grad() around the call still works."""
    sde, score, x, truth, prior = _setup(sde_name, 2, n=4)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(x.dtype)
    cut = {
        "no_grad": torch.no_grad()(score),
        "detach": lambda x, t: score(x.detach(), t),
        "constant": lambda x, t: torch.zeros_like(x),
        # requires grad through its parameters, although x was detached: only autograd's graph shows the cut
        "network on x.detach()": lambda x, t: net(torch.cat([x.detach(), t[:, None]], 1)),
    }
    for name, fn in cut.items():
        for trace in ("exact", "hutchinson"):
            with pytest.raises(TypeError, match=r"score_fn's output does not depend on x through autograd"):
                log_likelihood(sde, fn, x, trace=trace, rtol=1e-3, atol=1e-3)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"inference_mode.*torch\.no_grad\(\) instead"):
            log_likelihood(sde, score, x)
        x_inference = x.clone()
    with torch.no_grad():
        res = log_likelihood(sde, score, x_inference, prior_logp=prior, rtol=1e-7, atol=1e-7)
    assert float((res.logp - truth).abs().max()) < 1e-4


# ---------------------------------------------------------------------------------------------- Hutchinson
@pytest.mark.parametrize("probe", list(PROBES))
def test_hutchinson_estimator_is_unbiased_with_the_known_variance(probe):
    """For v = A x, eps^T A eps has mean tr A and variance sum_{i != j} (A_ij^2 + A_ij A_ji) (Rademacher) or
    sum_{ij} (A_ij^2 + A_ij A_ji) (Gaussian). n = 20000 draws: the mean within 4 standard errors (null level 6e-5),
    the sample variance within 10% (its relative standard error is about 2%); K probes divide the variance by K."""
    gen = torch.Generator().manual_seed(0)
    d, n = 5, 20_000
    A = torch.randn(d, d, generator=gen)
    x = torch.randn(n, d, generator=gen).requires_grad_(True)
    est = TRACES["hutchinson"]
    sym = A * A + A * A.T
    var = float(sym.sum() - (sym.diagonal().sum() if probe == "rademacher" else 0.0))
    for K in (1, 4):
        probes = est.draw(x, PROBES[probe], K, gen)
        values = est.divergence(x @ A.T, x, probes)
        assert abs(float(values.mean()) - float(A.trace())) < 4 * math.sqrt(var / K / n)
        assert abs(float(values.var()) / (var / K) - 1) < 0.1
    exact = TRACES["exact"].divergence(x @ A.T, x, None)
    assert torch.allclose(exact, A.trace().expand(n))


def test_hutchinson_log_likelihood_averages_to_the_exact_one():
    """One point, n = 4000 independent probe draws along its trajectory: the mean of the Hutchinson delta_logp is
    the exact-trace delta_logp within 4 standard errors (null level 6e-5) plus the two solves' tolerance."""
    sde, score, x, _, _ = _setup("VP", 2, n=1)
    n, tol = 4000, 1e-7
    exact = log_likelihood(sde, score, x, rtol=tol, atol=tol)
    hutch = log_likelihood(
        sde, score, x.expand(n, 2), trace="hutchinson", rtol=tol, atol=tol, generator=torch.Generator().manual_seed(0)
    )
    se = float(hutch.delta_logp.std()) / math.sqrt(n)
    assert se > 0  # the probes do vary the estimate
    assert abs(float(hutch.delta_logp.mean() - exact.delta_logp)) < 4 * se + 100 * tol
    assert torch.allclose(hutch.z, exact.z.expand(n, 2), rtol=1e-6, atol=1e-6)


def test_probes_are_reproducible_from_the_generator():
    sde, score, x, _, _ = _setup("VP", 2, n=4)
    a, b = (
        log_likelihood(sde, score, x, trace="hutchinson", probe="gaussian", n_probes=2, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    )
    assert torch.equal(a.logp, b.logp)


# ---------------------------------------------------------------------------------------------- bits/dim
def _discrete_gaussian(sde, mean, std, n_bins, low, high):
    """The model: a Gaussian N(mean, diag std^2) in the model's space; returns its score, its law at eps, and the exact
    discrete log-likelihood log P(k) = sum_i log[Phi(b_i) - Phi(a_i)] over the bins [a_i, b_i] of the law at eps."""
    gauss = single_gaussian(mean=mean, cov=torch.tensor(std) ** 2)
    law = gauss.marginal(sde, EPS)
    m, s = law.means[0], law.covs[0].diagonal().sqrt()
    h = (high - low) / n_bins

    def log_p_discrete(k):
        a, b = (low + h * k - m) / s, (low + h * (k + 1) - m) / s
        return torch.log(torch.special.ndtr(b) - torch.special.ndtr(a)).sum(1)

    def expected_dequantized(k):
        """E_u[log p(low + h (k + u))] + D log h in closed form: per dimension -log(2 pi s^2)/2 - ((c - m)^2 + h^2/12) / (2 s^2) + log h."""
        c = low + h * (k + 0.5)
        return (-0.5 * torch.log(2 * math.pi * s * s) - ((c - m) ** 2 + h * h / 12) / (2 * s * s) + math.log(h)).sum(1)

    return gauss.score_fn(sde), law, log_p_discrete, expected_dequantized


def _bits(logp, D):
    return -logp / (D * math.log(2))


def test_bits_per_dim_of_a_broad_discretized_gaussian_matches_its_discrete_likelihood():
    """Gaussian of std 0.3 against bins of width 2/256: the dequantization gap log P(k) - E_u log p is below 1e-4
    bits/dim in closed form. The mean of K = 64 draws matches the closed-form E_u bound, and so the exact discrete
    bits/dim, within 4 of its standard errors (null level 6e-5 per image) plus the solver's tolerance."""
    sde, n_bins, D, K = sds.VPSDE(), 256, 2, 64
    score, law, log_p_discrete, expected = _discrete_gaussian(sde, [0.1, -0.2], [0.3, 0.25], n_bins, -1.0, 1.0)
    y = law.sample(6, torch.Generator().manual_seed(0))
    k = ((y + 1) / 2 * n_bins).floor().long()
    res = bits_per_dim(sde, score, k, n_dequant=K, generator=torch.Generator().manual_seed(1), rtol=1e-7, atol=1e-7)
    exact_bpd = _bits(log_p_discrete(k), D)
    bound_bpd = _bits(expected(k), D)
    gap = bound_bpd - exact_bpd
    assert bool((gap > 0).all()) and float(gap.max()) < 1e-4
    se = res.draws.std(dim=1) / math.sqrt(K)
    assert bool(((res.bpd - bound_bpd).abs() < 4 * se + 1e-5).all())
    assert bool(((res.bpd - exact_bpd).abs() < 4 * se + gap + 1e-5).all())
    assert bool((res.bpd_iw <= res.bpd).all())


def test_bits_per_dim_with_16_levels_on_0_1_matches_the_closed_form_dequantization_bound():
    """n_bins and data_range enter through the bin width h = (high - low) / n_bins. With 16 levels on [0, 1)
    (h = 1/16) the mean of K = 64 draws matches the closed-form E_u[log p(h (k + u))] + D log h within 4 of its
    standard errors (null level 6e-5 per image) plus the solver's tolerance; a Jacobian written for 256 levels
    would be log2(256 / 16) = 4 bits/dim off, and 4 standard errors stay below a quarter of that."""
    sde, n_bins, D, K = sds.VPSDE(), 16, 2, 64
    score, law, log_p_discrete, expected = _discrete_gaussian(sde, [0.5, 0.45], [0.2, 0.15], n_bins, 0.0, 1.0)
    y = law.sample(6, torch.Generator().manual_seed(0))
    k = (y * n_bins).floor().long().clamp(0, n_bins - 1)
    res = bits_per_dim(sde, score, k, n_bins=n_bins, data_range=(0.0, 1.0), n_dequant=K,
                       generator=torch.Generator().manual_seed(1), rtol=1e-7, atol=1e-7)
    se = res.draws.std(dim=1) / math.sqrt(K)
    assert float(4 * se.max()) < 1.0
    assert bool(((res.bpd - _bits(expected(k), D)).abs() < 4 * se + 1e-5).all())
    assert bool((res.bpd >= _bits(log_p_discrete(k), D) - 4 * se).all())  # a bound on the discrete bits/dim


def test_importance_weighting_converges_to_the_discrete_likelihood_of_a_narrow_gaussian():
    """Gaussian of std half a bin: the dequantization bound is loose by 0.4 to 1.4 bits/dim (closed form); with
    K = 512 draws the mean bpd sits on that bound while the importance-weighted bound reaches the exact discrete
    bits/dim within 4 delta-method standard errors of log(mean_k p_k) (null level 6e-5 per image)."""
    sde, n_bins, D, K = sds.VPSDE(), 256, 2, 512
    h = 2.0 / n_bins
    score, law, log_p_discrete, expected = _discrete_gaussian(sde, [0.3 * h, -0.2 * h], [0.5 * h, 0.5 * h], n_bins, -1, 1)
    k = torch.tensor([[127, 128], [129, 126], [130, 127]])
    res = bits_per_dim(sde, score, k, n_dequant=K, generator=torch.Generator().manual_seed(0), rtol=1e-7, atol=1e-7)
    exact_bpd = _bits(log_p_discrete(k), D)
    bound_bpd = _bits(expected(k), D)
    assert bool((bound_bpd - exact_bpd > 0.4).all())
    se_bound = res.draws.std(dim=1) / math.sqrt(K)
    assert bool(((res.bpd - bound_bpd).abs() < 4 * se_bound + 1e-4).all())
    w = torch.exp(-(res.draws - res.draws.min(dim=1, keepdim=True).values) * D * math.log(2))  # p_k / max_k p_k
    se_iw = w.std(dim=1) / w.mean(dim=1) / math.sqrt(K) / (D * math.log(2))
    assert bool((se_iw < 0.1).all())  # so the 0.4 bits/dim between bound and truth are resolved
    assert bool(((res.bpd_iw - exact_bpd).abs() < 4 * se_iw + 1e-4).all())


def test_bits_per_dim_is_invariant_under_the_affine_map_to_the_model_space():
    """The same discrete law modelled on [-1, 1) and on [0, 1): the change-of-variables term makes the bits/dim equal
    (score_sde's offset is 7 in the first case and 8 in the second)."""
    sde, n_bins = sds.VESDE(sigma_min=0.001), 256
    k = torch.tensor([[100, 140, 128], [90, 128, 160]])
    a = single_gaussian(mean=[0.0, 0.1, -0.1], cov=torch.tensor([0.3, 0.4, 0.2]) ** 2)
    b = single_gaussian(mean=[0.5, 0.55, 0.45], cov=(torch.tensor([0.3, 0.4, 0.2]) / 2) ** 2)
    kw = dict(n_dequant=4, rtol=1e-8, atol=1e-8)
    # the exact laws at T as priors: the VE prior N(0, 50^2 I) would add a different mismatch in each space
    on_pm1 = bits_per_dim(sde, a.score_fn(sde), k, data_range=(-1, 1), generator=torch.Generator().manual_seed(0),
                          prior_logp=a.marginal(sde, sde.T).log_prob, **kw)
    on_01 = bits_per_dim(sde, b.score_fn(sde), k, data_range=(0, 1), generator=torch.Generator().manual_seed(0),
                         prior_logp=b.marginal(sde, sde.T).log_prob, **kw)
    # the VE kernel adds sigma(eps)^2 ~ 1e-6 to both variances, which the rescaling does not map onto each other
    assert torch.allclose(on_pm1.draws, on_01.draws, rtol=0, atol=1e-4)
    # and the offset spelled out: bpd = -logp / (D ln 2) + log2(256 / 2)
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(k.shape, generator=gen)
    y = -1 + 2 * (k + u) / n_bins
    direct = log_likelihood(sde, a.score_fn(sde), y, rtol=1e-8, atol=1e-8)
    one = bits_per_dim(sde, a.score_fn(sde), k, generator=torch.Generator().manual_seed(0), rtol=1e-8, atol=1e-8)
    assert torch.allclose(one.bpd, _bits(direct.logp, 3) + 7, rtol=0, atol=1e-9)


def test_per_channel_data_range_uses_each_channels_jacobian():
    """data_range with per-dimension (low, high): the Jacobian term is sum_i log|high_i - low_i| - D log n_bins."""
    sde, k = sds.VPSDE(), torch.tensor([[10, 200], [128, 64]])
    gauss = single_gaussian(mean=[0.0, 0.0], cov=[0.5, 0.5])
    low, high = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])
    res = bits_per_dim(sde, gauss.score_fn(sde), k, data_range=(low, high), generator=torch.Generator().manual_seed(0))
    u = torch.rand(k.shape, generator=torch.Generator().manual_seed(0))
    y = low + (high - low) * (k + u) / 256
    logp = log_likelihood(sde, gauss.score_fn(sde), y).logp
    assert torch.allclose(res.bpd, _bits(logp + math.log(2) + math.log(4) - 2 * math.log(256), 2), atol=1e-9)


def test_dataset_bits_per_dim_is_the_mean_over_batches_with_its_standard_error(capsys):
    sde = sds.VPSDE()
    gauss = single_gaussian(mean=[0.0, 0.0, 0.0], cov=[0.3, 0.3, 0.3])
    k = torch.randint(100, 156, (7, 3), generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(k, torch.zeros(7)), batch_size=3)
    res = dataset_bits_per_dim(sde, gauss.score_fn(sde), loader, n_dequant=2, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    per = [bits_per_dim(sde, gauss.score_fn(sde), k[i : i + 3], n_dequant=2, generator=gen) for i in (0, 3, 6)]
    bpd = torch.cat([p.bpd for p in per])
    assert res.n == 7 and res.nfe == sum(p.nfe for p in per)
    assert res.bpd == pytest.approx(float(bpd.mean()), abs=1e-12)
    assert res.stderr == pytest.approx(float(bpd.std()) / math.sqrt(7), abs=1e-12)
    assert res.bpd_iw == pytest.approx(float(torch.cat([p.bpd_iw for p in per]).mean()), abs=1e-12)
    assert "bits/dim" in capsys.readouterr().err
    dataset_bits_per_dim(sde, gauss.score_fn(sde), [k[:2]], progress=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------- bad input
def _score(x, t):
    return -x


BAD_LIKELIHOOD = [
    (dict(x=torch.zeros(2, 2, dtype=torch.long)), TypeError, "floating dtype"),
    (dict(x=torch.tensor([[0.0, float("nan")]])), ValueError, "non-finite"),
    (dict(x=torch.zeros(2)), ValueError, "batch"),
    (dict(trace="trace"), ValueError, "trace must be one of"),
    (dict(probe="uniform"), ValueError, "probe must be one of"),
    (dict(n_probes=0), ValueError, "n_probes"),
    (dict(n_probes=3), ValueError, "n_probes applies to trace='hutchinson'"),
    (dict(method="rk45"), ValueError, "method must be"),
    (dict(steps=10), ValueError, "steps applies"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(rtol=-1.0), ValueError, "rtol"),
    (dict(time_variable="sigma"), ValueError, "time_variable must be one of"),
    (dict(prior_logp=3), TypeError, "prior_logp must be callable"),
    (dict(prior_logp=lambda z: z), ValueError, "one log-density per sample"),
    (dict(prior_logp=lambda z: torch.full(z.shape[:1], float("nan"))), ValueError, "prior_logp returned non-finite"),
    (dict(x=torch.zeros(2, 0)), ValueError, "empty data dimensions"),
    (dict(generator=0), TypeError, "generator"),
    (dict(score_fn=1), TypeError, "score_fn"),
    (dict(sde="VP"), TypeError, "sde must be"),
    (dict(tolerance=1e-3), TypeError, "tolerance"),
    (dict(x=torch.zeros(2, 2, dtype=torch.bfloat16)), TypeError, r"x has dtype torch.bfloat16, but an exact log-likelihood"),
    (dict(x=torch.zeros(2, 2, dtype=torch.float16)), TypeError, r"x has dtype torch.float16, but an exact log-likelihood"),
    # a class instead of an instance: its methods are unbound, the old error was "draw() missing 1 required argument"
    (dict(trace=sds.likelihood.ExactTrace), TypeError, r"trace must be .* got the class ExactTrace itself; pass an "
     r"instance, trace=ExactTrace\(\)"),
    (dict(probe=sds.likelihood.GaussianProbe, trace="hutchinson"), TypeError, r"probe must be .* got the class "
     r"GaussianProbe itself; pass an instance, probe=GaussianProbe\(\)"),
    (dict(time_variable=sds.likelihood.SDETime), TypeError, r"time_variable must be .* got the class SDETime itself; "
     r"pass an instance, time_variable=SDETime\(\)"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_LIKELIHOOD, ids=[m for *_, m in BAD_LIKELIHOOD])
def test_log_likelihood_rejects_bad_input(kwargs, error, match):
    args = dict(sde=sds.VPSDE(), score_fn=_score, x=torch.zeros(2, 2))
    for key in ("sde", "score_fn", "x"):
        if key in kwargs:
            args[key] = kwargs.pop(key)
    with pytest.raises(error, match=match):
        log_likelihood(args["sde"], args["score_fn"], args["x"], **kwargs)


BAD_BPD = [
    (dict(x_int=torch.rand(2, 3)), TypeError, "integer bin indices"),
    (dict(x_int=torch.zeros(2, 3, dtype=torch.bool)), TypeError, "integer bin indices"),
    (dict(x_int=torch.full((2, 3), 256)), ValueError, r"\[0, 256\)"),
    (dict(x_int=torch.full((2, 3), -1)), ValueError, r"\[0, 256\)"),
    (dict(x_int=torch.full((2, 3), 4), n_bins=4), ValueError, r"\[0, 4\)"),
    (dict(x_int=[[1, 2]]), TypeError, "torch.Tensor"),
    (dict(x_int=torch.zeros(3, dtype=torch.long)), ValueError, "shape"),
    (dict(n_bins=1), ValueError, "n_bins"),
    (dict(n_dequant=0), ValueError, "n_dequant"),
    (dict(data_range=(1.0, 1.0)), ValueError, "low != high"),
    (dict(data_range=(0.0, float("inf"))), ValueError, "finite"),
    (dict(data_range=(-1.0, 0.0, 1.0)), TypeError, "pair"),
    (dict(data_range=(torch.zeros(4), 1.0)), ValueError, "broadcast"),
    (dict(dtype=torch.long), TypeError, "dtype"),
    (dict(dtype=torch.bfloat16), TypeError, "dtype must be float32 or float64"),
    (dict(generator="seed"), TypeError, "generator"),
    (dict(n_dequantization=2), TypeError, "n_dequantization"),
    (dict(trace="none"), ValueError, "trace must be one of"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_BPD, ids=[m for *_, m in BAD_BPD])
def test_bits_per_dim_rejects_bad_input(kwargs, error, match):
    x_int = kwargs.pop("x_int", torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(error, match=match):
        bits_per_dim(sds.VPSDE(), _score, x_int, **kwargs)


def test_bits_per_dim_takes_numpy_scalars_and_unsigned_wide_integers():
    """data_range as numpy scalars (numbers.Real) and uint16 / uint32 data, for which torch has few kernels, give
    the same result as Python floats and int64 data."""
    k = torch.tensor([[3, 200], [128, 17]])
    ref = bits_per_dim(sds.VPSDE(), _score, k, generator=torch.Generator().manual_seed(0), rtol=1e-4, atol=1e-4)
    for x_int, data_range in ((k, (np.float32(-1), np.int64(1))), (k.to(torch.uint16), (-1.0, 1.0)),
                              (k.to(torch.uint32), (-1, 1))):
        res = bits_per_dim(sds.VPSDE(), _score, x_int, data_range=data_range, generator=torch.Generator().manual_seed(0),
                           rtol=1e-4, atol=1e-4)
        assert torch.equal(res.draws, ref.draws)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 300), st.integers(-1000, 1000))
def test_integers_outside_the_bins_are_rejected_and_inside_accepted_up_to_the_ode(n_bins, value):
    """Validation happens before any score evaluation: out-of-range values raise, in-range ones reach the score."""

    class Reached(Exception):
        pass

    def score(x, t):
        raise Reached

    x_int = torch.full((1, 2), value)
    if 0 <= value < n_bins:
        with pytest.raises(Reached):
            bits_per_dim(sds.VPSDE(), score, x_int, n_bins=n_bins)
    else:
        with pytest.raises(ValueError, match="n_bins"):
            bits_per_dim(sds.VPSDE(), score, x_int, n_bins=n_bins)


def test_dataset_bits_per_dim_rejects_bad_loaders():
    with pytest.raises(TypeError, match="iterable of batches"):
        dataset_bits_per_dim(sds.VPSDE(), _score, torch.zeros(2, 3, dtype=torch.long), progress=False)
    with pytest.raises(TypeError, match="each batch"):
        dataset_bits_per_dim(sds.VPSDE(), _score, [{"image": torch.zeros(2, 3)}], progress=False)
    with pytest.raises(ValueError, match="no batches"):
        dataset_bits_per_dim(sds.VPSDE(), _score, [], progress=False)
