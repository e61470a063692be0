"""Score-matching objectives checked against closed forms on Gaussian data.

Statistical tests compare a Monte-Carlo mean with its closed-form expectation and reject when they differ by
more than Z = 5 standard errors (two-sided null level about 6e-7 per comparison); every draw has a fixed seed.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

import sdescore as sds
from sdescore.losses import WEIGHTINGS, dsm_loss, eps_loss, ism_loss, ncsn_loss, ssm_loss

from _half import HALF, HALF_SDES

Z = 5.0
F64 = torch.float64

SDES = {
    "ve": lambda: sds.VESDE(sigma_min=0.01, sigma_max=5.0),
    "vp": lambda: sds.VPSDE(),
    "subvp": lambda: sds.SubVPSDE(),
}
# lambda(t) of each weighting, written from the definitions (Song et al. 2021 eq. 7; 2021b theorem 1).
LAMBDA = {
    "sigma2": lambda sde, t: sde.kernel(t)[1] ** 2,
    "likelihood": lambda sde, t: sde.g(t) ** 2,
    "none": lambda sde, t: torch.ones_like(t),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_mean_close(values: torch.Tensor, expected: float, what: str) -> None:
    mean, se = values.mean().item(), values.std().item() / math.sqrt(values.numel())
    assert abs(mean - expected) < Z * se, f"{what}: mean {mean:.6g} vs closed form {expected:.6g} (SE {se:.3g})"


# ------------------------------------------------------------------------------------------------ DSM
MU, S_DATA, C_WRONG = torch.tensor([1.0, -2.0], dtype=F64), 0.7, 1.3


class ScaledGaussianScore:
    """c times the exact score of p_t for data N(MU, S^2 I): s(x, t) = -c (x - alpha MU) / (alpha^2 S^2 + std^2)."""

    def __init__(self, sde, c):
        self.sde, self.c = sde, c

    def __call__(self, x, t):
        alpha, std = self.sde.kernel(t.to(F64))
        v = (alpha**2 * S_DATA**2 + std**2)[:, None]
        return -self.c * (x - alpha[:, None] * MU) / v


def expected_dsm(sde, weighting: str, eps: float, c: float) -> float:
    """(1 / (T - eps)) int_eps^T lambda(t) E||s + z/std||^2 / 2 dt for ScaledGaussianScore, by quadrature in log t.

    With x_t = alpha MU + alpha S w + std z: s + z/std = -c alpha S w / v + (1/std - c std / v) z, so
    E||s + z/std||^2 = D [(c alpha S / v)^2 + (1/std - c std / v)^2].
    """
    D = MU.numel()

    def integrand(u: float) -> float:
        t = torch.tensor([math.exp(u)], dtype=F64)
        alpha, std = sde.kernel(t)
        v = alpha**2 * S_DATA**2 + std**2
        e = D * ((c * alpha * S_DATA / v) ** 2 + (1 / std - c * std / v) ** 2)
        return float(LAMBDA[weighting](sde, t) * e / 2) * math.exp(u)

    value, err = integrate.quad(integrand, math.log(eps), math.log(sde.T), limit=400, epsabs=0.0, epsrel=1e-10)
    return value / (sde.T - eps)


@pytest.mark.parametrize("importance_sampling", [False, True])
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "none"])
@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_dsm_loss_is_unbiased_for_its_closed_form_expectation(sde_name, weighting, importance_sampling):
    sde, eps, B = SDES[sde_name](), 1e-3, 20_000
    x0 = MU + S_DATA * torch.randn(B, 2, generator=gen(1), dtype=F64)
    per_sample = dsm_loss(
        sde, ScaledGaussianScore(sde, C_WRONG), x0, weighting=weighting, eps=eps, reduce="none",
        generator=gen(2), importance_sampling=importance_sampling,
    )
    assert per_sample.shape == (B,)
    assert_mean_close(per_sample, expected_dsm(sde, weighting, eps, C_WRONG), f"{sde_name}/{weighting}/IS={importance_sampling}")


@pytest.mark.parametrize("sde_name", ["vp", "subvp"])
def test_importance_sampling_is_unbiased_and_cuts_the_variance_of_the_likelihood_loss(sde_name):
    # eps = 1e-5: g^2/std^2 ~ 1/t near 0, so the plain estimator's variance grows like 1/eps; the importance
    # weights make the integrand std^2 ||s + z/std||^2 (Song et al. 2021b, section 5.1).
    sde, eps, B = SDES[sde_name](), 1e-5, 40_000
    x0 = MU + S_DATA * torch.randn(B, 2, generator=gen(3), dtype=F64)
    score = ScaledGaussianScore(sde, C_WRONG)
    kw = dict(weighting="likelihood", eps=eps, reduce="none")
    plain = dsm_loss(sde, score, x0, generator=gen(4), **kw)
    weighted = dsm_loss(sde, score, x0, generator=gen(4), importance_sampling=True, **kw)
    assert_mean_close(weighted, expected_dsm(sde, "likelihood", eps, C_WRONG), f"{sde_name} importance-sampled")
    assert weighted.var() < 0.05 * plain.var(), (weighted.var().item(), plain.var().item())


def test_importance_sampling_is_the_plain_draw_for_the_ve_sde():
    # The VE-SDE's log-SNR is linear in t, so uniform in log-SNR is uniform in t with weight 1.
    sde = SDES["ve"]()
    x0 = torch.randn(64, 3, generator=gen(5), dtype=F64)
    score = lambda x, t: -x / (1 + t[:, None])  # noqa: E731
    for weighting in WEIGHTINGS:
        a = dsm_loss(sde, score, x0, weighting=weighting, reduce="none", generator=gen(6))
        b = dsm_loss(sde, score, x0, weighting=weighting, reduce="none", generator=gen(6), importance_sampling=True)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_log_snr_derivative_is_minus_g2_over_std2(sde_name):
    # The identity that makes uniform-in-log-SNR times the g^2/std^2 proposal of the likelihood weighting.
    sde = SDES[sde_name]()
    t = torch.linspace(1e-3, 1.0, 101, dtype=F64, requires_grad=True)
    (dlam,) = torch.autograd.grad(sde.log_snr(t).sum(), t)  # elementwise in t: the gradient of the sum is d lambda / dt
    t = t.detach()
    torch.testing.assert_close(dlam, -sde.g(t) ** 2 / sde.kernel(t)[1] ** 2, rtol=1e-9, atol=0)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_eps_loss_equals_sigma2_dsm_of_the_converted_score_value_for_value(sde_name):
    sde = SDES[sde_name]()
    x0 = torch.randn(256, 3, 2, generator=gen(7), dtype=F64)
    eps_fn = lambda x, t: torch.tanh(x) * (0.5 + t.reshape(-1, 1, 1))  # noqa: E731
    a = eps_loss(sde, eps_fn, x0, reduce="none", generator=gen(8))
    b = dsm_loss(sde, sds.score_from_eps(sde, eps_fn), x0, weighting="sigma2", reduce="none", generator=gen(8))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde_name, t_fixed", [("ve", 0.65), ("vp", 0.3)])  # std(t) about 0.6 and 0.8
def test_dsm_minimizer_over_affine_scores_is_the_score_of_the_noised_gaussian(sde_name, t_fixed):
    """Minimise dsm_loss exactly over s(x) = A x + b at a fixed t (it is quadratic: one Newton step from 0).

    The minimiser must be the exact score of p_t = N(alpha mu, alpha^2 Sigma + std^2 I): A = -C^{-1},
    b = C^{-1} alpha mu. Tolerance: Z least-squares standard errors sigma_j^2 (X^T X)^{-1} per coefficient.
    """
    sde, D, B = SDES[sde_name](), 2, 20_000
    mu = torch.tensor([1.0, -0.5], dtype=F64)
    Sigma = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64)
    x0 = mu + torch.randn(B, D, generator=gen(9), dtype=F64) @ torch.linalg.cholesky(Sigma).T
    t = torch.full((B,), t_fixed, dtype=F64)
    z = torch.randn(B, D, generator=gen(10), dtype=F64)

    def loss(theta):
        A, b = theta[: D * D].reshape(D, D), theta[D * D :]
        return dsm_loss(sde, lambda x, _: x @ A.T + b, x0, t=t, noise=z, weighting="none")

    theta0 = torch.zeros(D * D + D, dtype=F64)
    H = torch.autograd.functional.hessian(loss, theta0)
    grad = torch.func.grad(loss)(theta0)
    theta = -torch.linalg.solve(H, grad)
    A, b = theta[: D * D].reshape(D, D), theta[D * D :]

    alpha, std = (c.item() for c in sde.kernel(t[:1]))
    C = alpha**2 * Sigma + std**2 * torch.eye(D, dtype=F64)
    A_true = -torch.linalg.inv(C)
    b_true = torch.linalg.solve(C, alpha * mu)

    x_t = alpha * x0 + std * z
    X = torch.cat([x_t, torch.ones(B, 1, dtype=F64)], 1)
    resid = -z / std - (x_t @ A.T + b)
    XtX_inv = torch.linalg.inv(X.T @ X).diagonal()
    se = torch.sqrt(resid.var(0)[:, None] * XtX_inv[None, :])  # (D outputs, D + 1 coefficients)
    err = torch.cat([A - A_true, (b - b_true)[:, None]], 1).abs()
    assert (err < Z * se).all(), f"error {err} vs SE {se}"
    assert (se < 0.02 * err.new_tensor(1.0).max(A_true.abs().max())).all()  # sharp enough to see a wrong score


# ------------------------------------------------------------------------------------------------ ISM, SSM
MU_G = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
SIGMA_G = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.8, -0.2], [0.0, -0.2, 0.5]], dtype=F64)


def gaussian_data(B: int, seed: int) -> torch.Tensor:
    return MU_G + torch.randn(B, 3, generator=gen(seed), dtype=F64) @ torch.linalg.cholesky(SIGMA_G).T


def explicit_sm_minus_constant(A: torch.Tensor, b: torch.Tensor) -> float:
    """E||s - grad log p||^2 / 2 - E||grad log p||^2 / 2 for s = A x + b and p = N(mu, Sigma).

    With P = Sigma^{-1}, s - grad log p = C x + d, C = A + P, d = b - P mu, so the first term is
    (||C mu + d||^2 + tr(C Sigma C^T)) / 2; the constant is tr(P Sigma P) / 2 = tr(P) / 2.
    """
    P = torch.linalg.inv(SIGMA_G)
    C, d = A + P, b - P @ MU_G
    esm = ((C @ MU_G + d).pow(2).sum() + torch.trace(C @ SIGMA_G @ C.T)) / 2
    return float(esm - torch.trace(P) / 2)


def random_affine(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    return torch.randn(3, 3, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ism_equals_explicit_score_matching_up_to_a_constant(seed):
    A, b = random_affine(seed)
    x = gaussian_data(20_000, 100 + seed)
    values = ism_loss(lambda y: y @ A.T + b, x, reduce="none")
    assert_mean_close(values.detach(), explicit_sm_minus_constant(A, b), "ISM")


def test_ism_exact_trace_for_affine_and_nonlinear_scores():
    A, b = random_affine(3)
    x = gaussian_data(16, 4)
    exact = torch.trace(A) + 0.5 * (x @ A.T + b).pow(2).sum(1)
    torch.testing.assert_close(ism_loss(lambda y: y @ A.T + b, x, reduce="none"), exact, rtol=1e-12, atol=1e-12)

    def score(y):  # couples the dimensions, so the trace needs every diagonal entry of the Jacobian
        return torch.tanh(y @ A.T) * torch.sin(y).roll(1, dims=1) + b

    jac = torch.vmap(torch.func.jacrev(lambda v: score(v[None])[0]))(x)
    expected = jac.diagonal(dim1=1, dim2=2).sum(1) + 0.5 * score(x).pow(2).sum(1)
    torch.testing.assert_close(ism_loss(score, x, reduce="none"), expected, rtol=1e-12, atol=1e-12)


def test_ism_gradient_in_the_model_parameters_is_the_closed_form():
    # d/dA mean[tr A + ||A x + b||^2 / 2] = I + mean((A x + b) x^T), d/db = mean(A x + b): create_graph works.
    A, b = random_affine(5)
    A.requires_grad_(True), b.requires_grad_(True)
    x = gaussian_data(64, 6)
    gA, gb = torch.autograd.grad(ism_loss(lambda y: y @ A.T + b, x), (A, b))
    with torch.no_grad():
        r = x @ A.T + b
        torch.testing.assert_close(gA, torch.eye(3, dtype=F64) + r.T @ x / 64, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gb, r.mean(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduction", [True, False])
def test_ssm_equals_explicit_score_matching_up_to_a_constant_in_expectation(projection, variance_reduction):
    A, b = random_affine(7)
    x = gaussian_data(20_000, 8)
    values = ssm_loss(
        lambda y: y @ A.T + b, x, n_projections=2, projection=projection,
        variance_reduction=variance_reduction, reduce="none", generator=gen(9),
    )
    assert values.shape == (20_000,)
    assert_mean_close(values.detach(), explicit_sm_minus_constant(A, b), f"SSM {projection} VR={variance_reduction}")


def test_ssm_with_rademacher_projections_is_ism_for_a_diagonal_jacobian():
    # v_i^2 = 1, so v^T J v = tr J exactly when J is diagonal: SSM-VR equals ISM sample for sample.
    w = torch.tensor([0.5, -1.5, 2.0], dtype=F64)
    score = lambda y: torch.tanh(y) * w + y**3  # noqa: E731
    x = gaussian_data(32, 10)
    a = ssm_loss(score, x, 3, projection="rademacher", reduce="none", generator=gen(11))
    torch.testing.assert_close(a, ism_loss(score, x, reduce="none"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variance_reduction", [True, False])
def test_ssm_of_a_fixed_time_model_with_several_projections_is_the_per_sample_formula(variance_reduction):
    """The documented recipe `lambda x: model(x, t)`, t of shape (B,), with n_projections = 3.

    Each sample's value must be mean_m [v_m^T J_b v_m + (v_m^T s_b)^2 / 2] (or ||s_b||^2 / 2 with VR), with J_b the
    Jacobian of sample b at its own time t_b (from torch.func.jacrev) and v_m the m-th block of the projections
    drawn with the same generator. The score is called once, on the B rows.
    """
    B, M = 16, 3
    A, b = random_affine(12)
    t = torch.linspace(0.1, 1.0, B, dtype=F64)
    calls = []

    def model(y, tt):  # a per-sample-time network: it reshapes t by the batch of y
        calls.append(y.shape[0])
        return torch.tanh(y @ A.T) * (1 + tt.reshape(-1, 1)) + torch.sin(y).roll(1, dims=1) * tt.reshape(-1, 1) + b

    x = gaussian_data(B, 13)
    got = ssm_loss(lambda y: model(y, t), x, M, variance_reduction=variance_reduction, reduce="none", generator=gen(14))
    assert calls == [B]

    v = torch.randn(M * B, 3, generator=gen(14), dtype=F64).reshape(M, B, 3)
    jac = torch.vmap(torch.func.jacrev(lambda y, tt: model(y[None], tt[None])[0]))(x, t)  # (B, 3, 3)
    s = model(x, t)
    vJv = torch.einsum("mbi,bij,mbj->mb", v, jac, v).mean(0)
    second = 0.5 * s.pow(2).sum(1) if variance_reduction else (0.5 * (v * s).sum(2).pow(2)).mean(0)
    torch.testing.assert_close(got, vJv + second, rtol=1e-12, atol=1e-12)


def test_ssm_loss_keeps_the_graph_of_every_projection():
    # d/dA of mean_b mean_m v^T A v + ||A x + b||^2 / 2 for an affine score: mean v v^T + mean (A x + b) x^T.
    A, b = random_affine(15)
    A.requires_grad_(True)
    x = gaussian_data(32, 16)
    (gA,) = torch.autograd.grad(ssm_loss(lambda y: y @ A.T + b, x, 4, generator=gen(17)), (A,))
    v = torch.randn(4 * 32, 3, generator=gen(17), dtype=F64)
    with torch.no_grad():
        expected = v.T @ v / v.shape[0] + (x @ A.T + b).T @ x / 32
    torch.testing.assert_close(gA, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ reductions
def test_reductions_and_image_shaped_data():
    sde = sds.VPSDE()
    x0 = torch.randn(6, 1, 4, 4, generator=gen(12), dtype=F64)
    score = lambda x, t: -x  # noqa: E731
    per = dsm_loss(sde, score, x0, reduce="none", generator=gen(13))
    assert per.shape == (6,)
    torch.testing.assert_close(dsm_loss(sde, score, x0, generator=gen(13)), per.mean())
    torch.testing.assert_close(dsm_loss(sde, score, x0, reduce="sum", generator=gen(13)), per.sum())
    for loss in (ism_loss(lambda x: -x, x0, reduce="none"), ssm_loss(lambda x: -x, x0, reduce="none", generator=gen(1))):
        assert loss.shape == (6,)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_raises_clear_errors():
    sde, x0 = sds.VPSDE(), torch.randn(4, 2, dtype=F64)
    score = lambda x, t: -x  # noqa: E731
    with pytest.raises(ValueError, match="weighting must be one of"):
        dsm_loss(sde, score, x0, weighting="sigma")
    with pytest.raises(ValueError, match="reduce must be one of"):
        dsm_loss(sde, score, x0, reduce="avg")
    with pytest.raises(ValueError, match="x0 must have shape"):
        dsm_loss(sde, score, torch.randn(4, dtype=F64))
    with pytest.raises(ValueError, match="returned shape"):
        dsm_loss(sde, lambda x, t: x[:, :1], x0)
    with pytest.raises(ValueError, match="importance_sampling draws the times"):
        dsm_loss(sde, score, x0, t=torch.full((4,), 0.5, dtype=F64), importance_sampling=True)
    with pytest.raises(ValueError, match="noise must be a tensor shaped like x0"):
        dsm_loss(sde, score, x0, noise=torch.randn(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="std"):
        dsm_loss(sde, score, x0, t=torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="eps"):
        eps_loss(sde, score, x0, eps=0.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        dsm_loss(sde, score, x0, weigthing="sigma2")
    with pytest.raises(TypeError, match="score_fn must be callable"):
        ism_loss(None, x0)
    with pytest.raises(ValueError, match="n_projections must be >= 1"):
        ssm_loss(lambda x: -x, x0, 0)
    with pytest.raises(ValueError, match="projection must be one of"):
        ssm_loss(lambda x: -x, x0, projection="uniform")
    ncsn = lambda x, s: -x  # noqa: E731
    with pytest.raises(ValueError, match="labels index sigmas of length L=3"):
        ncsn_loss(ncsn, x0, [1.0, 0.5, 0.1], labels=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        ncsn_loss(ncsn, x0, [1.0, 0.5, 0.1], labels=torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        ncsn_loss(ncsn, x0, [1.0, 0.5, 0.1], labels=torch.zeros(3, dtype=torch.long))


def _integer(x, *cond):
    return x.round().long()


@pytest.mark.parametrize(
    "loss",
    [
        lambda x0: dsm_loss(sds.VPSDE(), _integer, x0),
        lambda x0: eps_loss(sds.VPSDE(), _integer, x0),
        lambda x0: ncsn_loss(_integer, x0, [1.0, 0.5, 0.1]),
        lambda x0: ism_loss(_integer, x0),
        lambda x0: ssm_loss(_integer, x0),
    ],
    ids=["dsm", "eps", "ncsn", "ism", "ssm"],
)
def test_an_integer_model_output_is_refused(loss):
    """A model returning an integer tensor: dsm, eps and ncsn returned a finite loss with no gradient to train on
    (the output entered as a constant)."""
    with pytest.raises(TypeError, match=r"returned dtype torch.int64 for x of dtype torch.float64; return a floating"):
        loss(torch.randn(4, 2, dtype=F64))


@pytest.mark.parametrize("loss", [ism_loss, ssm_loss], ids=["ism", "ssm"])
def test_score_matching_with_a_trace_refuses_inference_mode(loss):
    """Under inference mode enable_grad() has no effect: the trace term would silently be 0."""
    x = torch.randn(5, 3, dtype=F64)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=f"{loss.__name__} cannot run under torch.inference_mode"):
        loss(lambda y: -y, x)



@pytest.mark.parametrize("loss", [ism_loss, ssm_loss], ids=["ism", "ssm"])
def test_score_matching_refuses_a_score_cut_off_from_x(loss):
    """The trace term differentiates s by x: a score under torch.no_grad(), on x.detach(), constant in x, or a
    network on x.detach() (its output requires grad through its weights only) made it silently 0, the loss
    ||s||^2 / 2, which training minimises by pushing s to 0. Each is a TypeError naming score_fn, with grad on or
    under torch.no_grad(), as log_likelihood does. A score written as c + 0 * x is in x's graph: its trace is an exact
    0 and the loss exactly ||c||^2 / 2 (ssm: with variance reduction the second term is ||s||^2 / 2 whatever v)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 3).double()
    x = torch.randn(4, 3, dtype=F64, generator=gen(0))
    cut = {
        "no_grad": torch.no_grad()(lambda y: -2.0 * y),
        "detach": lambda y: -2.0 * y.detach(),
        "constant": lambda y: torch.ones_like(y),
        "network on x.detach()": lambda y: net(y.detach()),
    }
    kwargs = {"n_projections": 3, "generator": gen(1)} if loss is ssm_loss else {}
    for name, fn in cut.items():
        for grad in (True, False):
            with torch.set_grad_enabled(grad), pytest.raises(
                TypeError, match=rf"^{loss.__name__}: score_fn's output does not depend on x through autograd"
            ):
                loss(fn, x, **kwargs)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    got = loss(lambda y: c + 0.0 * y, x, reduce="none", **kwargs)
    torch.testing.assert_close(got, torch.full((4,), 0.5 * float(c @ c), dtype=F64), rtol=0, atol=0)


@pytest.mark.parametrize("loss", [ism_loss, ssm_loss], ids=["ism", "ssm"])
def test_score_matching_under_no_grad_is_the_value_without_a_graph(loss):
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(6, 3, dtype=F64, generator=gen(4))
    kwargs = {"generator": gen(5)} if loss is ssm_loss else {}
    with_graph = loss(net, x, **kwargs)
    assert with_graph.requires_grad
    kwargs = {"generator": gen(5)} if loss is ssm_loss else {}
    with torch.no_grad():
        value = loss(net, x, **kwargs)
    assert not value.requires_grad
    torch.testing.assert_close(value, with_graph.detach(), rtol=1e-14, atol=0)
    with torch.inference_mode():
        made_there = torch.randn(6, 3, dtype=F64, generator=gen(4))  # an inference tensor, used outside the mode
    kwargs = {"generator": gen(5)} if loss is ssm_loss else {}
    torch.testing.assert_close(loss(net, made_there, **kwargs), with_graph, rtol=1e-14, atol=0)


def test_a_custom_weighting_must_return_one_value_per_sample():
    # (B, 1) would broadcast the per-sample loss to (B, B): reduce='mean' then gives mean(w) mean(loss).
    sde, x0 = sds.VPSDE(), torch.randn(4, 2, dtype=F64)
    score = lambda x, t: -x  # noqa: E731
    good = dsm_loss(sde, score, x0, weighting=lambda sde, t: sde.g(t) ** 2, reduce="none", generator=gen(0))
    torch.testing.assert_close(good, dsm_loss(sde, score, x0, weighting="likelihood", reduce="none", generator=gen(0)))
    with pytest.raises(ValueError, match=r"weighting returned shape \(4, 1\) for t of shape \(4,\)"):
        dsm_loss(sde, score, x0, weighting=lambda sde, t: sde.g(t)[:, None] ** 2)
    with pytest.raises(ValueError, match=r"weighting returned float"):
        dsm_loss(sde, score, x0, weighting=lambda sde, t: 1.0)


def test_a_custom_projection_must_return_the_requested_shape_and_dtype():
    x = torch.randn(5, 3, dtype=F64)
    ok = lambda shape, g, dtype, device: torch.ones(shape, dtype=dtype, device=device)  # noqa: E731
    assert ssm_loss(lambda y: -y, x, 2, projection=ok, reduce="none").shape == (5,)
    # v of shape (M B, 1) would turn v^T J v into the sum of all Jacobian entries, silently
    with pytest.raises(ValueError, match=r"projection must return v of the requested shape \(10, 3\)"):
        ssm_loss(lambda y: -y, x, 2, projection=lambda shape, g, dtype, device: torch.ones(shape[0], 1, dtype=dtype))
    with pytest.raises(ValueError, match=r"projection must return v .* got shape \(5, 3\) torch.float32"):
        ssm_loss(lambda y: -y, x, projection=lambda shape, g, dtype, device: torch.ones(shape))
    with pytest.raises(ValueError, match=r"projection must return v .* got list"):
        ssm_loss(lambda y: -y, x, projection=lambda shape, g, dtype, device: [1.0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(min_value=-10, max_value=10), st.sampled_from([math.nan, math.inf])), min_size=1, max_size=6))
def test_sigmas_must_be_positive_finite_and_strictly_decreasing(values):
    x0 = torch.zeros(2, 2, dtype=F64)
    valid = all(math.isfinite(v) and v > 0 for v in values) and all(a > b for a, b in zip(values, values[1:]))
    if valid:
        assert ncsn_loss(lambda x, s: -x, x0, values, generator=gen(0)).ndim == 0
    else:
        with pytest.raises(ValueError, match="sigmas must be"):
            ncsn_loss(lambda x, s: -x, x0, values, generator=gen(0))


# ---------------------------------------------------------------------------------------------- half precision
HALF_LOSSES = [("dsm", w) for w in ("sigma2", "likelihood", "none", "likelihood-is")] + [("eps", None)]
HALF_CASES = [(loss, w, name) for loss, w in HALF_LOSSES for name in HALF_SDES] + [
    ("ncsn", None, name) for name in HALF_SDES if name.startswith("VE")
]
# a float32 sum of D squares of exactly representable numbers: torch's cascade summation errs by about
# log2(D) eps32 = 2e-6 relative for D = 196608, the weights by eps32 = 1.2e-7; the reference is float64
SUM_RTOL = 1e-5


@HALF
@pytest.mark.parametrize("loss, weighting, name", HALF_CASES)
def test_losses_of_half_precision_data_are_accumulated_in_float32(loss, weighting, name, dtype):
    """dsm_loss, eps_loss and ncsn_loss of (2, 3, 256, 256) half-precision data against float64 from the same model
    output, noise and times; the loss comes back in float32. The per-sample sum of D = 196608 squares overflowed
    float16 (inf; bfloat16 kept three digits), and so did the likelihood weight g^2 / std^2 = 1e5 of the VP-SDE at
    t = 1e-5. The model returns a fixed half-precision output (half the denoising target), so both precisions see
    the same numbers and the residual std s + z = z / 2 carries no cancellation."""
    sde = HALF_SDES[name]()
    shape = (2, 3, 256, 256)
    x0 = torch.randn(shape, generator=gen(0)).to(dtype)
    z = torch.randn(shape, generator=gen(1)).to(dtype)
    t = torch.tensor([1e-5, 0.5], dtype=F64)
    view = lambda c: c.reshape(-1, 1, 1, 1)  # noqa: E731

    def fixed(out):
        return lambda x, cond: out.to(x.dtype)

    def value(precision):
        x, noise = x0.to(precision), z.to(precision)
        if loss == "ncsn":
            sigmas = sds.ncsn_sigmas(sde.sigma_max, sde.sigma_min, 10)
            labels = torch.tensor([9, 4])
            out = (-0.5 * z.double() / view(sigmas[labels])).to(dtype)
            return ncsn_loss(fixed(out), x, sigmas, labels, noise=noise, reduce="none")
        if loss == "eps":
            return eps_loss(sde, fixed((0.5 * z.double()).to(dtype)), x, t=t, noise=noise, reduce="none")
        std = view(sde.kernel(t)[1])
        out = (-0.5 * z.double() / std).to(dtype)
        if weighting == "likelihood-is":  # the times drawn from the generator, in float64 whatever the data's dtype
            std = view(sde.kernel(_is_times(sde))[1])
            out = (-0.5 * z.double() / std).to(dtype)
            return dsm_loss(sde, fixed(out), x, weighting="likelihood", importance_sampling=True, noise=noise,
                            generator=gen(2), reduce="none")
        return dsm_loss(sde, fixed(out), x, weighting=weighting, t=t, noise=noise, reduce="none")

    got, want = value(dtype), value(F64)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=SUM_RTOL, atol=0)


def _is_times(sde):
    """The times dsm_loss(importance_sampling=True) draws first from gen(2), for a batch of two."""
    from sdescore.losses import _draw_times

    return _draw_times(sde, 2, 1e-5, gen(2), torch.device("cpu"), True)[0]


@HALF
def test_ssm_and_ism_of_half_precision_data_are_accumulated_in_float32(dtype):
    """For s(x) = -x: ssm's v^T (ds/dx) v = -||v||^2 and ||s||^2 / 2 over D = 196608 overflowed float16, and ism's
    trace, -D accumulated one diagonal entry at a time, stopped at -256 in bfloat16 (its integers are spaced by 2
    beyond 256). Both against float64 on the same numbers, to the float32 sum's rtol; the loss is float32."""
    x = torch.randn(2, 3, 256, 256, generator=gen(0)).to(dtype)
    v = torch.randn(2, 3, 256, 256, generator=gen(1)).to(dtype)
    projection = lambda shape, generator, dt, device: v.to(dt)  # noqa: E731
    got = ssm_loss(lambda y: -y, x, projection=projection, variance_reduction=False, reduce="none")
    want = ssm_loss(lambda y: -y, x.double(), projection=projection, variance_reduction=False, reduce="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=SUM_RTOL, atol=0)
    got = ssm_loss(lambda y: -y, x, projection=projection, reduce="none")
    want = ssm_loss(lambda y: -y, x.double(), projection=projection, reduce="none")
    torch.testing.assert_close(got.double(), want, rtol=SUM_RTOL, atol=0)

    y = torch.randn(2, 300, generator=gen(2)).to(dtype)
    got, want = ism_loss(lambda u: -u, y, reduce="none"), ism_loss(lambda u: -u, y.double(), reduce="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=SUM_RTOL, atol=0)
    torch.testing.assert_close(want, -300 + 0.5 * (y.double() ** 2).sum(1), rtol=1e-12, atol=0)
