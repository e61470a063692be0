"""The closed forms of validation.mixtures, checked against autograd, Tweedie's formulas, Monte Carlo and quadrature."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

from sdescore import VESDE, VPSDE, SubVPSDE
from validation.mixtures import (
    DiffusedMixture,
    GaussianMixture,
    ncsn_toy,
    random_anisotropic,
    ring,
    single_gaussian,
)

f64 = torch.float64
SDES = [VESDE(sigma_min=0.01, sigma_max=50.0), VPSDE(), SubVPSDE()]
SDE_IDS = ["VE", "VP", "subVP"]


def mixture_of_kind(kind: str) -> GaussianMixture:
    """A 3-D, 3-component mixture with full, diagonal or isotropic covariances."""
    full = random_anisotropic(3, 3, seed=7)
    if kind == "full":
        return full
    if kind == "diagonal":
        return GaussianMixture(full.weights, full.means, torch.tensor([[0.5, 1.0, 0.3], [1.2, 0.2, 0.7], [0.4, 0.4, 0.9]]))
    return GaussianMixture(full.weights, full.means, torch.tensor([0.5, 1.3, 0.2]))


KINDS = ["full", "diagonal", "isotropic"]


def points_and_times(mixture: GaussianMixture, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = mixture.sample(n, gen) + torch.randn(n, mixture.dim, generator=gen, dtype=f64)
    t = 1e-3 + (1 - 1e-3) * torch.rand(n, generator=gen, dtype=f64)
    return x, t


# ---------------------------------------------------------------------- score, denoiser, eps, posterior covariance
@pytest.mark.parametrize("kind", KINDS)
def test_data_score_is_gradient_of_log_prob(kind):
    m = mixture_of_kind(kind)
    x = points_and_times(m, 16, 0)[0].requires_grad_(True)
    (grad,) = torch.autograd.grad(m.log_prob(x).sum(), x)
    torch.testing.assert_close(m.score(x), grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_diffused_score_is_gradient_of_log_prob_with_one_time_per_sample(sde, kind):
    p = mixture_of_kind(kind).diffuse(sde)
    x, t = points_and_times(p.mixture, 16, 1)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(p.log_prob(x, t).sum(), x)
    torch.testing.assert_close(p.score(x, t), grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_denoiser_and_eps_satisfy_tweedie(sde, kind):
    p = mixture_of_kind(kind).diffuse(sde)
    x, t = points_and_times(p.mixture, 32, 2)
    alpha, std = sde.kernel(t)
    s = p.score(x, t)
    torch.testing.assert_close(p.denoiser(x, t), (x + std[:, None] ** 2 * s) / alpha[:, None], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.eps(x, t), -std[:, None] * s, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_posterior_cov_is_second_order_tweedie(sde, kind):
    """Cov[x0 | x_t] = std^2 / alpha^2 (I + std^2 Hess log p_t(x_t)), the Hessian by autograd."""
    p = mixture_of_kind(kind).diffuse(sde)
    x, t = points_and_times(p.mixture, 6, 3)
    alpha, std = sde.kernel(t)
    cov = p.posterior_cov(x, t)
    eye = torch.eye(3, dtype=f64)
    for i in range(x.shape[0]):
        H = torch.autograd.functional.hessian(lambda z: p.log_prob(z[None], t[i : i + 1]).sum(), x[i])
        want = std[i] ** 2 / alpha[i] ** 2 * (eye + std[i] ** 2 * H)
        torch.testing.assert_close(cov[i], want, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(cov, cov.transpose(1, 2))
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_batched_times_equal_a_loop_over_single_time_marginals(sde):
    m = mixture_of_kind("full")
    p = m.diffuse(sde)
    x, t = points_and_times(m, 8, 4)
    lp, s = p.log_prob(x, t), p.score(x, t)
    for i in range(x.shape[0]):
        q = m.marginal(sde, float(t[i]))
        torch.testing.assert_close(q.log_prob(x[i : i + 1]), lp[i : i + 1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(q.score(x[i : i + 1]), s[i : i + 1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(p.score(x[i : i + 1], float(t[i])), s[i : i + 1], rtol=1e-12, atol=1e-12)


def _weighted_mean_and_se(weights: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-normalised importance estimate sum w h / sum w and its delta-method standard error."""
    wbar = weights.mean()
    est = (weights[:, None] * h).sum(0) / weights.sum()
    psi = weights[:, None] * (h - est) / wbar
    return est, psi.std(0) / math.sqrt(h.shape[0])


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_min=0.01, sigma_max=50.0)], ids=["VP", "VE"])
def test_denoiser_and_posterior_cov_match_monte_carlo(sde):
    """E[x0 | x_t = x] and Cov[x0 | x_t = x] by importance weighting of prior draws x0 ~ p with weights N(x; alpha x0, std^2 I).

    Null hypothesis: the closed forms are right; each coordinate's z-score has |z| < 4.5 with probability
    1 - 7e-6, so the 2 + 4 = 6 entries of one point fail together with probability < 5e-5 (seed fixed).
    """
    m = ring(n_modes=4, radius=2.0, std=0.6)
    p = m.diffuse(sde)
    gen = torch.Generator().manual_seed(5)
    x0 = m.sample(400_000, gen)
    t = torch.tensor([0.3], dtype=f64)
    alpha, std = sde.kernel(t)
    for x in (torch.tensor([[1.0, 0.5]], dtype=f64), torch.tensor([[-0.3, -1.7]], dtype=f64)):
        logw = -((x - alpha * x0) ** 2).sum(1) / (2 * std**2)
        w = torch.exp(logw - logw.max())
        D = p.denoiser(x, t)
        est, se = _weighted_mean_and_se(w, x0)
        assert bool(((est - D[0]).abs() < 4.5 * se).all()), (est, D, se)
        r = x0 - D
        est, se = _weighted_mean_and_se(w, (r[:, :, None] * r[:, None, :]).flatten(1))
        assert bool(((est - p.posterior_cov(x, t)[0].flatten()).abs() < 4.5 * se).all())


def test_marginal_density_integrates_to_one_in_1d_and_2d():
    sde = VPSDE()
    one = GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [0.2, 0.8])
    p1 = one.diffuse(sde)
    grid = torch.linspace(-12, 12, 20001, dtype=f64)[:, None]
    for t in (0.0, 0.05, 0.5):
        mass = torch.trapezoid(torch.exp(p1.log_prob(grid, t)), grid[:, 0])
        assert abs(float(mass) - 1) < 1e-9
    p2 = random_anisotropic(2, 3, seed=3, spread=1.0).diffuse(sde)
    u = torch.linspace(-7, 7, 801, dtype=f64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([X.flatten(), Y.flatten()], 1)
    for t in (0.01, 0.4):
        dens = torch.exp(p2.log_prob(pts, t)).reshape(801, 801)
        mass = torch.trapezoid(torch.trapezoid(dens, u, dim=1), u)
        assert abs(float(mass) - 1) < 1e-6


# ---------------------------------------------------------------------- sampling
def test_samples_have_the_mixture_mean_covariance_and_weights():
    """Sample means, component frequencies and each component's mean and covariance within 4.5 standard errors
    (two-sided null level 7e-6 per figure, 3 + 4 + 4 x (3 + 6) = 43 figures: < 3e-4 together; seed fixed).

    The SE of a sample covariance entry from n_j draws of N(mu, Sigma) is sqrt((Sigma_ii Sigma_ll + Sigma_il^2) / n_j)
    (Wishart). The per-component covariances see an error in the within-component spread (e.g. lam for sqrt(lam))
    that the total covariance, dominated by the spread of the means, hides."""
    m = random_anisotropic(3, 4, seed=2)
    n = 200_000
    x, J = m.sample(n, torch.Generator().manual_seed(0), return_components=True)
    se = torch.sqrt(torch.diagonal(m.covariance()) / n)
    assert bool(((x.mean(0) - m.mean()).abs() < 4.5 * se).all())
    freq = torch.bincount(J, minlength=4).to(f64) / n
    assert bool(((freq - m.weights).abs() < 4.5 * torch.sqrt(m.weights * (1 - m.weights) / n)).all())
    emp = torch.cov(x.T)
    assert float((emp - m.covariance()).abs().max()) < 0.05 * float(m.covariance().abs().max())  # the mixture's own
    iu = torch.triu_indices(3, 3)
    for j in range(4):
        xj, S = x[J == j], m.covs[j]
        nj = xj.shape[0]
        z_mean = (xj.mean(0) - m.means[j]) / torch.sqrt(torch.diagonal(S) / nj)
        se_cov = torch.sqrt((torch.outer(torch.diagonal(S), torch.diagonal(S)) + S**2) / nj)
        z_cov = ((torch.cov(xj.T) - S) / se_cov)[iu[0], iu[1]]
        assert float(z_mean.abs().max()) < 4.5, (j, z_mean)
        assert float(z_cov.abs().max()) < 4.5, (j, z_cov)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_marginal_is_the_kernel_applied_to_data_samples(sde):
    """p_t's mean and covariance equal those of alpha x0 + std z with x0 from the data: moments in closed form."""
    m = random_anisotropic(2, 3, seed=4)
    t = 0.37
    q = m.marginal(sde, t)
    alpha, std = (float(v) for v in sde.kernel(torch.tensor([t], dtype=f64)))
    torch.testing.assert_close(q.mean(), alpha * m.mean())
    torch.testing.assert_close(q.covariance(), alpha**2 * m.covariance() + std**2 * torch.eye(2, dtype=f64))


# ---------------------------------------------------------------------- the probability-flow ODE of a Gaussian
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_ode_solution_matches_a_tight_numerical_solve(sde):
    g = single_gaussian()
    score = g.score_fn(sde)

    def velocity(t, x):
        tt = t.to(f64).expand(x.shape[0])
        gg = sde.g(tt)[:, None]
        return sde.f(x, tt) - 0.5 * gg**2 * score(x, tt)

    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=f64) * sde.prior_std
    ts = torch.tensor([1.0, 0.05], dtype=f64)
    num = torchdiffeq.odeint(velocity, x_T, ts, method="dopri5", rtol=1e-11, atol=1e-11)[-1]
    torch.testing.assert_close(g.ode_solution(sde, x_T, 1.0, 0.05), num, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_ode_solution_pushes_p_s_onto_p_t_and_inverts(sde):
    """x(t) = m(t) + A (x(s) - m(s)) with A C(s) A^T = C(t): the flow carries N(m(s), C(s)) onto N(m(t), C(t))."""
    g = single_gaussian()
    s, t = 0.8, 0.1
    qs, qt = g.marginal(sde, s), g.marginal(sde, t)
    x = torch.randn(4, 2, dtype=f64)
    y = g.ode_solution(sde, x, s, t)
    torch.testing.assert_close(g.ode_solution(sde, y, t, s), x)
    A = g.ode_solution(sde, torch.eye(2, dtype=f64) + qs.means, s, t) - qt.means  # columns of A
    A = A.T
    torch.testing.assert_close(A @ qs.covs[0] @ A.T, qt.covs[0])


def test_ode_solution_refuses_a_mixture():
    with pytest.raises(ValueError, match="single Gaussian"):
        ncsn_toy().ode_solution(VPSDE(), torch.zeros(1, 2, dtype=f64), 1.0, 0.5)


# ---------------------------------------------------------------------- conventions and shapes
def test_noised_family_is_the_ve_family_at_sigma_of_t():
    m = ncsn_toy()
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    x, t = points_and_times(m, 8, 6)
    torch.testing.assert_close(m.noised().score(x, sde.sigma(t)), m.diffuse(sde).score(x, t))


def test_float32_input_returns_float32_and_image_shapes_are_flattened():
    m = random_anisotropic(4, 2, seed=1)
    p = m.diffuse(VPSDE())
    x = torch.randn(3, 1, 2, 2)
    t = torch.full((3,), 0.5)
    s = p(x, t)
    assert s.shape == x.shape and s.dtype == torch.float32
    torch.testing.assert_close(s, p(x.double(), t.double()).float(), rtol=0, atol=0)
    assert p.posterior_cov(x, t).shape == (3, 4, 4)


def test_named_targets_have_their_documented_shape():
    t = ncsn_toy()
    torch.testing.assert_close(t.weights, torch.tensor([0.2, 0.8], dtype=f64))
    r = ring(8, radius=3.0, std=0.1)
    assert r.n_components == 8 and torch.allclose(r.means.norm(dim=1), torch.full((8,), 3.0, dtype=f64))
    a = random_anisotropic(5, 3, seed=0)
    assert a.kind == "full" and a.dim == 5
    torch.testing.assert_close(a.covs, random_anisotropic(5, 3, seed=0).covs)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "weights, means, covs, match",
    [
        ([0.5, 0.6], [[0.0], [1.0]], [1.0, 1.0], "sum to 1"),
        ([1.5, -0.5], [[0.0], [1.0]], [1.0, 1.0], "positive"),
        ([0.5, 0.5], [0.0, 1.0], [1.0, 1.0], "means must have shape"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0, 0.0], "positive definite"),
        ([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]], "positive definite"),
        ([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]], "symmetric"),
        ([1.0], [[0.0, 0.0]], [[1.0, 1.0, 1.0]], "covs must have shape"),
        ([1.0], [[float("nan")]], [1.0], "non-finite"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(weights, means, covs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(weights, means, covs)


def test_a_full_looking_matrix_as_k_by_d_covs_is_refused_when_k_equals_d():
    """(K, d) always means diagonal; with K = d a symmetric positive definite matrix with off-diagonal entries may be
    meant as one shared full covariance, so it is refused; rows that cannot be one covariance are diagonal ones."""
    shared = [[1.0, 0.5], [0.5, 1.0]]
    with pytest.raises(ValueError, match=r"\(K, d, d\)"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0], [3.0, 3.0]], shared)
    full = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [3.0, 3.0]], torch.tensor(shared)[None].expand(2, 2, 2))
    torch.testing.assert_close(full.covs[1], torch.tensor(shared, dtype=f64))
    for rows in ([[1.0, 0.5], [0.7, 1.0]], [[1.0, 2.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]):  # not symmetric, not PD
        m = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [3.0, 3.0]], rows)
        assert m.kind == "diagonal"
        torch.testing.assert_close(m.covs, torch.diag_embed(torch.tensor(rows, dtype=f64)))


@pytest.mark.parametrize("d", [3, 16, 64])
def test_covariances_symmetric_to_their_precisions_rounding_are_accepted_and_the_ambiguity_still_seen(d):
    """Q diag Q^T formed in float32 differs from its transpose by a few float32 ulps (3e-8 here): accepted, at either
    mixture dtype, as the float64 product is; an asymmetry far above rounding is still refused; and a K = d matrix
    that is symmetric to float32 rounding is still seen as possibly one shared full covariance."""
    lam = torch.linspace(0.5, 2.0, d, dtype=f64)
    for seed in range(100):  # the first rotation whose float32 product is not symmetric by chance (small d can be)
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=f64))
        in_float32 = (Q.float() * lam.float()) @ Q.float().T
        if bool((in_float32 != in_float32.T).any()):
            break
    assert 0 < float((in_float32 - in_float32.T).abs().max()) < 1e-6  # rounding, not an exactly symmetric input
    for cov in ((Q * lam) @ Q.T, in_float32):
        for dtype in (f64, torch.float32):
            m = GaussianMixture([1.0], torch.zeros(1, d), cov[None], dtype=dtype)
            torch.testing.assert_close(torch.linalg.eigvalsh(m.covs[0]).to(f64), lam, rtol=1e-5, atol=1e-5)
    skewed = ((Q * lam) @ Q.T)
    skewed[0, 1] += 1e-3
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([1.0], torch.zeros(1, d), skewed[None].float())
    shared = in_float32[:3, :3] + torch.eye(3)  # K = d = 3, positive definite, symmetric to float32 rounding
    with pytest.raises(ValueError, match=r"\(K, d, d\)"):
        GaussianMixture(torch.full((3,), 1 / 3), torch.zeros(3, 3), shared)


def test_single_gaussian_names_cov_and_the_shapes_it_takes():
    with pytest.raises(ValueError, match=r"cov must be a scalar, \(2,\) or \(2, 2\) .* got shape \(3,\)"):
        single_gaussian((0.0, 0.0), (1.0, 2.0, 3.0))


def test_an_empty_batch_is_refused_naming_x():
    m = ring()
    for call in (m.log_prob, m.score, lambda x: m.diffuse(VPSDE()).score(x, 0.5)):
        with pytest.raises(ValueError, match=r"x must have shape \(batch, \*dims\) with batch >= 1"):
            call(torch.empty(0, 2, dtype=f64))


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_times_outside_zero_to_T_are_refused_naming_t(sde):
    m = ncsn_toy()
    p = m.diffuse(sde)
    x = torch.zeros(2, 2, dtype=f64)
    for bad in (-0.1, sde.T + 0.5, torch.tensor([0.5, -1e-3], dtype=f64), float("nan")):
        with pytest.raises(ValueError, match=r"^t must"):
            p.score(x, bad)
        with pytest.raises(ValueError, match=r"^t must"):
            p.log_prob(x, bad)
    with pytest.raises(ValueError, match=r"^t must lie in \[0, T"):
        m.marginal(sde, sde.T + 0.5)
    with pytest.raises(ValueError, match="t_to"):
        single_gaussian().ode_solution(sde, x, sde.T, sde.T + 0.5)
    p.score(x, torch.tensor([0.0, sde.T], dtype=torch.float32))  # the ends of [0, T] are fine, in float32 too


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_times_past_an_end_by_their_rounding_are_taken_at_that_end(sde, dtype):
    """A time that passes 0 or T by the 4 ulps of its dtype that the check allows (the rounding of a time computed
    near an end) is evaluated at that end, exactly: before, the VP-SDE's std^2 < 0 just below t = 0 made every
    quantity NaN, the sub-VP's std < 0 flipped eps's sign, and bfloat16's T + 0.03 read the VE-SDE's sigma past
    sigma_max."""
    p = ring().diffuse(sde)
    x = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=f64)
    slack = 3 * torch.finfo(dtype).eps * sde.T
    for end, past in ((0.0, -slack), (sde.T, sde.T + slack)):
        t_past = torch.full((2,), past, dtype=torch.float64).to(dtype)
        t_end = torch.full((2,), end, dtype=f64)
        for method in (p.score, p.eps, p.denoiser, p.log_prob):
            if method is not p.eps or end > 0:  # eps = -std score is 0 / 0 where std(0) = 0
                torch.testing.assert_close(method(x, t_past), method(x, t_end), rtol=0, atol=0, equal_nan=False)


def test_negative_noise_levels_are_refused():
    """With sde=None the time is the noise level sigma: sigma < 0 would flip the sign of eps."""
    p = ncsn_toy().noised()
    x = torch.ones(1, 2, dtype=f64)
    for method in (p.score, p.eps, p.denoiser, p.log_prob):
        with pytest.raises(ValueError, match="noise level sigma >= 0"):
            method(x, -0.5)
    with pytest.raises(ValueError, match=r"^t must be >= 0, got -0.5"):
        p.marginal(-0.5)
    assert bool(torch.isfinite(p.eps(x, 50.0)).all())  # any sigma >= 0 is a valid noise level


def test_bad_points_and_times_raise():
    p = ncsn_toy().diffuse(VPSDE())
    with pytest.raises(ValueError, match="prod\\(dims\\) = 2"):
        p.score(torch.zeros(4, 3, dtype=f64), torch.zeros(4, dtype=f64))
    with pytest.raises(ValueError, match="one time per sample"):
        p.score(torch.zeros(4, 2, dtype=f64), torch.zeros(3, dtype=f64))
    with pytest.raises(TypeError, match="floating"):
        p.score(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=f64))
    with pytest.raises(TypeError, match="sdescore.SDE"):
        DiffusedMixture(ncsn_toy(), "vp")


# ---------------------------------------------------------------------- properties over random mixtures
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 5),
    K=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    t=st.floats(1e-3, 1.0),
    which=st.sampled_from(SDE_IDS),
)
def test_random_mixtures_score_is_the_gradient_and_posterior_cov_is_positive(d, K, seed, t, which):
    m = random_anisotropic(d, K, seed=seed)
    sde = SDES[SDE_IDS.index(which)]
    p = m.diffuse(sde)
    x = m.marginal(sde, t).sample(5, torch.Generator().manual_seed(seed)).requires_grad_(True)
    (grad,) = torch.autograd.grad(p.log_prob(x, t).sum(), x)
    torch.testing.assert_close(p.score(x, t), grad, rtol=1e-8, atol=1e-8)
    cov = p.posterior_cov(x.detach(), t)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())


@settings(max_examples=40, deadline=None)
@given(weights=st.lists(st.floats(-1.0, 2.0, allow_nan=False), min_size=1, max_size=4))
def test_weights_that_are_not_a_probability_vector_are_refused(weights):
    K = len(weights)
    valid = all(w > 0 for w in weights) and abs(sum(weights) - 1) <= 1e-6
    build = lambda: GaussianMixture(weights, torch.zeros(K, 2), torch.ones(K))  # noqa: E731
    if valid:
        assert build().n_components == K
    else:
        with pytest.raises(ValueError, match="weights"):
            build()
