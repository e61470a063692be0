"""The SDE classes against their closed forms: kernels, moment ODEs, discrete chains, priors, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import sdescore as sds

from _half import HALF, HALF_SDES

pytestmark = pytest.mark.usefixtures("float64")


def _t(value: float, n: int = 1) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.float64)


def test_kernel_matches_simulation_of_the_forward_sde(sde):
    """Euler–Maruyama on drift/diffusion from x_s ~ p_s(.|x0) reaches the kernel's mean and variance at t."""
    gen = torch.Generator().manual_seed(0)
    n, steps, s, t = 40_000, 400, 0.3, 0.8
    x0 = torch.full((n, 1), 0.7)
    x, _ = sde.perturb(x0, _t(s, n), generator=gen)
    h = (t - s) / steps
    for i in range(steps):
        tt = _t(s + i * h, n)
        x = x + sde.f(x, tt) * h + sde.g(tt)[:, None] * math.sqrt(h) * torch.randn(x.shape, generator=gen)
    mean, std = sde.marginal_prob(x0[:1], _t(t))
    mean, var = float(mean), float(std) ** 2
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / n)
    # 5 standard errors: the test fails by chance with probability below 1e-6 per moment.
    assert abs(float(x.mean()) - mean) < 5 * se_mean
    assert abs(float(x.var()) - var) < 5 * se_var + 5e-3 * var  # + a bound on the Euler–Maruyama bias at this step


def test_kernel_solves_the_moment_odes(sde):
    """d alpha/dt = f(t) alpha and d var/dt = 2 f(t) var + g(t)^2 for the linear drift f(x, t) = f(t) x."""
    t = torch.linspace(0.01, 1.0, 101).requires_grad_(True)
    alpha, std = sde.kernel(t)
    alpha = alpha + 0 * t  # VE's alpha is the constant 1, with no graph of its own
    var = std**2
    d_alpha, = torch.autograd.grad(alpha.sum(), t, retain_graph=True)
    d_var, = torch.autograd.grad(var.sum(), t)
    f_coef = sde.f(torch.ones(101, 1), t.detach())[:, 0]
    g2 = sde.g(t.detach()) ** 2
    torch.testing.assert_close(d_alpha, f_coef * alpha.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d_var, 2 * f_coef * var.detach() + g2, rtol=1e-10, atol=1e-12)


def test_initial_kernel_follows_the_stated_convention():
    """VE: std(0) = sigma_min (data smoothed by sigma_min, the SMLD convention); VP and sub-VP: std(0) = 0."""
    ve, vp, subvp = sds.VESDE(0.01, 50.0), sds.VPSDE(), sds.SubVPSDE()
    assert float(ve.kernel(_t(0.0))[1]) == pytest.approx(0.01, rel=1e-12)
    assert float(ve.kernel(_t(1.0))[1]) == pytest.approx(50.0, rel=1e-12)
    for s in (vp, subvp):
        alpha, std = s.kernel(_t(0.0))
        assert float(alpha) == 1.0 and float(std) == 0.0
    # sub-VP variance never exceeds VP's
    t = torch.linspace(1e-4, 1, 1000)
    assert bool((subvp.kernel(t)[1] <= vp.kernel(t)[1]).all())


def test_log_snr_inverts(sde):
    t = torch.linspace(1e-3, 1.0, 257)
    lam = sde.log_snr(t)
    alpha, std = sde.kernel(t)
    torch.testing.assert_close(lam, torch.log(alpha**2 / std**2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease in t"


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_log_snr_inverts_to_relative_precision_down_to_tiny_times(sde, dtype, rtol):
    """t -> lambda(t) -> t to the dtype's precision relative to t, for t from 1e-8 to T (the sub-VP inverse once
    lost every digit below t ~ 1e-7 in float32 to cancellation in -log(alpha^2)), and finite and positive at
    extreme lambda (VP, sub-VP).

    The VE-SDE's lambda is affine in t, lambda = -2 (log sigma_min + t log(sigma_max / sigma_min)), so lambda's own
    rounding (machine epsilon times |lambda|) bounds its inverse's error in absolute terms, not relative to t.
    """
    t = torch.logspace(-8, 0, 33, dtype=dtype)
    lam = sde.log_snr(t)
    back = sde.t_from_log_snr(lam)
    assert back.dtype == dtype
    if isinstance(sde, sds.VESDE):
        bound = 4 * torch.finfo(dtype).eps * float(lam.abs().max()) / (2 * math.log(sde.sigma_max / sde.sigma_min))
        assert float((back - t).abs().max()) < bound
    else:
        assert float(((back - t) / t).abs().max()) < rtol
        extreme = sde.t_from_log_snr(torch.tensor([-30.0, 100.0, 700.0], dtype=torch.float64))
        assert bool(torch.isfinite(extreme).all()) and bool((extreme[1:] > 0).all()), extreme


def test_ve_discretize_is_the_smld_chain():
    sde = sds.VESDE(0.01, 50.0, N=100)
    t = torch.linspace(0.01, 1, 100)
    f_i, G_i = sde.discretize(torch.ones(100, 3), t)
    assert bool((f_i == 0).all())
    torch.testing.assert_close(G_i**2 + sde.sigma(t - 0.01) ** 2, sde.sigma(t) ** 2, rtol=1e-12, atol=0)


def test_vp_discretize_is_the_ddpm_chain():
    """x + f_i + G_i z = sqrt(1 - beta_i) x + sqrt(beta_i) z with beta_i = beta(t_i) / N (Ho et al. 2020, eq. 2)."""
    N = 1000
    sde = sds.VPSDE(0.1, 20.0, N=N)
    t = torch.linspace(0, 1, 50)
    x = torch.randn(50, 4)
    f_i, G_i = sde.discretize(x, t)
    beta_i = (0.1 + t * 19.9) / N
    torch.testing.assert_close(x + f_i, torch.sqrt(1 - beta_i)[:, None] * x, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(G_i, torch.sqrt(beta_i), rtol=1e-12, atol=0)


def test_default_discretize_is_euler_maruyama():
    sde = sds.SubVPSDE(N=200)
    t = torch.linspace(0.1, 1, 7)
    x = torch.randn(7, 2)
    f_i, G_i = sde.discretize(x, t)
    torch.testing.assert_close(f_i, sde.f(x, t) / 200)
    torch.testing.assert_close(G_i, sde.g(t) / math.sqrt(200))


def test_prior_logp_is_the_gaussian_density(sde):
    z = sde.prior_sampling((5, 3, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = stats.norm(scale=sde.prior_std).logpdf(z.numpy()).reshape(5, -1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), torch.from_numpy(expected), rtol=1e-12, atol=1e-12)


def test_prior_logp_of_half_precision_is_computed_in_float32(sde):
    """A sum of 3072 squares at the VE prior's scale overflows float16; the density comes back in float32."""
    z = sde.prior_sampling((3, 3, 32, 32), generator=torch.Generator().manual_seed(1)).half()
    for half in (z, z.bfloat16()):
        got = sde.prior_logp(half)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, sde.prior_logp(half.float()), rtol=0, atol=0)


@pytest.mark.parametrize("make", [sds.VPSDE, sds.SubVPSDE])
def test_t_from_log_snr_is_zero_at_time_zero_without_beta_min(make):
    sde = make(beta_min=0.0)
    t = torch.tensor([0.0, 1e-6, 0.5, 1.0], dtype=torch.float64)
    back = sde.t_from_log_snr(sde.log_snr(t))
    torch.testing.assert_close(back, t, rtol=1e-9, atol=0)


def test_prior_sampling_has_the_prior_std(sde):
    z = sde.prior_sampling((200_000, 1), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # the sample std's standard error is std / sqrt(2n); 5 of them
    assert abs(float(z.std()) / sde.prior_std - 1) < 5 / math.sqrt(2 * 200_000)


def test_perturb_applies_the_given_noise(sde):
    x0 = torch.randn(4, 2, 3)
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    noise = torch.randn(4, 2, 3)
    xt, z = sde.perturb(x0, t, noise)
    alpha, std = sde.kernel(t)
    assert z is noise
    torch.testing.assert_close(xt, alpha[:, None, None] * x0 + std[:, None, None] * noise)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sds.VESDE(sigma_min=1.0, sigma_max=1.0), "sigma_min must be < sigma_max"),
        (lambda: sds.VESDE(sigma_min=-1.0), "sigma_min must be > 0"),
        (lambda: sds.VESDE(sigma_max=float("nan")), "sigma_max must be finite"),
        # sigma_min (sigma_max / sigma_min)^t overflowed: sigma(t) was inf (log(ratio) = inf) on the way to 1e200
        (lambda: sds.VESDE(sigma_min=1e-200, sigma_max=1e200), r"sigma_max / sigma_min must be a finite float64 .* "
         r"sigma_min=1e-200 and sigma_max=1e\+200, whose ratio overflows"),
        (lambda: sds.VPSDE(beta_min=-0.1), "beta_min must be >= 0"),
        (lambda: sds.SubVPSDE(beta_min=2.0, beta_max=1.0), "beta_min <= beta_max"),
        (lambda: sds.VPSDE(N=0), "N must be >= 1"),
    ],
)
def test_invalid_parameters_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_ve_sde_of_a_ratio_near_float64s_limit_is_finite_and_geometric():
    """sigma_max / sigma_min = 1e307 is finite: sigma(t) = sigma_min 1e307^t reaches sigma_max without overflow, to
    the rounding of exp(t log ratio) (about |log ratio| eps = 2e-13 relative), and g(t) = sigma(t) sqrt(2 log ratio)
    stays finite."""
    sde = sds.VESDE(sigma_min=1e-7, sigma_max=1e300)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(sde.sigma(t).numpy(), [1e-7, math.sqrt(1e293), 1e300], rtol=1e-12)
    assert bool(torch.isfinite(sde.g(t)).all())


@pytest.mark.parametrize("bad", [True, 2.5, "10"])
def test_N_must_be_an_integer(bad):
    with pytest.raises(TypeError, match="N must be an integer"):
        sds.VESDE(N=bad)


def test_times_are_checked(sde):
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0.0, 1.0\]"):
        sde.drift(x, torch.tensor([0.1, 0.5, 1.5]))
    with pytest.raises(ValueError, match=r"t must lie in"):
        sde.marginal_prob(x, torch.tensor([-0.1, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"must have shape \(3,\)"):
        sde.marginal_prob(x, torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"must have shape \(B,\)"):
        sde.diffusion(torch.tensor(0.5))
    with pytest.raises(TypeError, match="floating dtype"):
        sde.drift(x, torch.tensor([0, 1, 1]))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        sde.drift(x, 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        sde.drift(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="noise must be a tensor shaped like x0"):
        sde.perturb(x, torch.full((3,), 0.5), torch.zeros(3, 3))


def test_perturb_discretize_and_prior_sampling_check_their_arguments(sde):
    x = torch.zeros(3, 2)
    t = torch.full((3,), 0.5)
    with pytest.raises(TypeError, match="noise must have x0's dtype and device"):
        sde.perturb(x, t, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="noise must have x0's dtype and device"):
        sde.perturb(x, t, torch.zeros(3, 2, dtype=torch.float32 if x.dtype == torch.float64 else torch.float64))
    with pytest.raises(ValueError, match="noise holds non-finite values"):
        sde.perturb(x, t, torch.full_like(x, float("nan")))
    with pytest.raises(TypeError, match="noise must be a torch.Tensor"):
        sde.perturb(x, t, [[0.0, 0.0]] * 3)
    for dt in (-0.1, 0.0, float("nan")):
        with pytest.raises(ValueError, match="dt must be"):
            sde.discretize(x, t, dt=dt)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        sde.prior_sampling((3, 2), dtype=torch.int64)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        sde.prior_sampling((3, 2), generator=3)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        sde.perturb(x, t, generator=3)
    assert sde.prior_sampling(np.array([3, 2])).shape == (3, 2)


def test_times_that_require_grad_are_checked_without_a_warning(sde):
    import warnings

    x = torch.zeros(3, 2)
    t = torch.full((3,), 0.5, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, std = sde.marginal_prob(x, t)
    assert std.requires_grad


def test_linear_drift_is_the_coefficient_of_the_drift(sde):
    """The built-in drifts are linear, f(x, t) = a(t) x, and say so; the solvers may form f from a(t) alone."""
    t = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)
    x = torch.randn(9, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert sde.drift_is_linear
    torch.testing.assert_close(sde.linear_drift(t)[:, None, None] * x, sde.f(x, t), rtol=1e-15, atol=0.0)


def test_a_subclass_that_redefines_the_drift_alone_is_not_read_through_linear_drift():
    """Overriding f without linear_drift must not leave a stale a(t) in the solvers' way (drift_is_linear False);
    a class that is not linear says nothing (None), and overriding both is linear again."""

    class Nonlinear(sds.VPSDE):
        def f(self, x, t):
            return -torch.sinh(x)

    class Relinearized(Nonlinear):
        def linear_drift(self, t):
            return -torch.ones_like(t)

        def f(self, x, t):
            return -x

    class Bare(sds.SDE):
        def f(self, x, t):
            return -x

        def g(self, t):
            return torch.ones_like(t)

    assert not Nonlinear().drift_is_linear and not Bare().drift_is_linear
    assert Bare().linear_drift(_t(0.5)) is None
    assert Relinearized().drift_is_linear
    # and the probability-flow function reads the redefined f: v = -sinh(x) - g^2 s / 2, not the VP's -beta x / 2
    sde = Nonlinear()
    x = torch.linspace(-2.0, 2.0, 12, dtype=torch.float64).reshape(6, 2)

    def score(y, t):
        return -y

    v = sde.probability_flow(score).func(score, 0.0, 1.0)(torch.tensor(0.3, dtype=torch.float64), x)
    torch.testing.assert_close(v, -torch.sinh(x) + 0.5 * sde.g(_t(0.3)) ** 2 * x, rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------------------------- half precision
HALF_TIMES = [1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.999, 1.0]


def _rounding_tolerance(dtype: torch.dtype) -> dict:
    """A value computed in float32 and rounded once to dtype is off by half an ulp, eps / 2 relative (plus float32's
    own ~1e-6, far below); rtol = eps leaves a factor two. Below the smallest normal number (6.1e-5 in float16: the
    VP kernel's alpha(1) = 4.4e-5) the spacing is absolute, tiny * eps, and atol is that spacing."""
    info = torch.finfo(dtype)
    return dict(rtol=info.eps, atol=info.tiny * info.eps)


@HALF
@pytest.mark.parametrize("name", list(HALF_SDES))
def test_public_verbs_at_half_precision_times_give_the_float64_coefficients_rounded(name, dtype):
    """diffusion, marginal_prob and perturb at a half-precision t equal the float64 coefficients at the same (rounded)
    t, rounded to t's dtype: they widen t to float32 (the symbols compute in t's dtype). In float16,
    exp(t log(sigma_max / sigma_min)) overflowed for VE(1e-3, 1000) where sigma(t) fits (inf at t = 0.9 for
    250.85), and the VP kernel lost its digits among float16's subnormals at small t."""
    sde = HALF_SDES[name]()
    t = torch.tensor(HALF_TIMES, dtype=dtype)
    t64 = t.double()  # the same times: the rounding of t itself is the caller's
    tol = _rounding_tolerance(dtype)
    alpha64, std64 = sde.kernel(t64)
    g = sde.diffusion(t)
    assert g.dtype == dtype
    torch.testing.assert_close(g.double(), sde.g(t64), **tol)
    x0 = torch.ones(len(HALF_TIMES), 2, dtype=dtype)
    mean, std = sde.marginal_prob(x0, t)
    assert mean.dtype == std.dtype == dtype
    torch.testing.assert_close(mean.double(), alpha64[:, None].expand(-1, 2), **tol)
    torch.testing.assert_close(std.double(), std64, **tol)
    # perturb with float32 data: x_t = alpha x0 + std z, its std in t's dtype
    xt, z = sde.perturb(x0.float(), t, generator=torch.Generator().manual_seed(0))
    want = alpha64[:, None] + std64[:, None] * z.double()
    torch.testing.assert_close(xt.double(), want, rtol=2 * tol["rtol"], atol=1e-6)


def test_vp_discretize_drift_keeps_its_digits_in_float32():
    """f_i = (sqrt(1 - beta_i) - 1) x, about -beta_i x / 2 = -5e-5 x at DDPM's first step: formed as sqrt(1 - beta_i)
    rounded to float32 minus 1, it erred by float32's spacing below 1 (6e-8), 1e-3 of its value. Formed without
    cancellation it is float32's rounding of the float64 drift: rtol = 2 eps32 (coefficient and product)."""
    sde = sds.VPSDE(0.1, 20.0, N=1000)
    t = torch.tensor([0.0, 1e-3, 0.01, 0.5, 1.0])
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    f32, G32 = sde.discretize(x.float(), t.float())
    f64, G64 = sde.discretize(x, t)
    torch.testing.assert_close(f32.double(), f64, rtol=2 * torch.finfo(torch.float32).eps, atol=0)
    torch.testing.assert_close(G32.double(), G64, rtol=torch.finfo(torch.float32).eps, atol=0)


def test_public_verbs_refuse_a_coefficient_beyond_the_range_of_a_half_precision_t():
    """sigma(1) = 1e5 has no float16 value: marginal_prob and diffusion raise, naming t's dtype, instead of inf."""
    sde = sds.VESDE(sigma_min=0.01, sigma_max=1e5)
    t = torch.tensor([0.5, 1.0], dtype=torch.float16)
    with pytest.raises(ValueError, match=r"std\(t\) exceeds the range of t's dtype torch.float16.*pass t in float32"):
        sde.marginal_prob(torch.zeros(2, 3), t)
    with pytest.raises(ValueError, match=r"g\(t\) exceeds the range of t's dtype torch.float16"):
        sde.diffusion(t)
    with pytest.raises(ValueError, match=r"std\(t\) exceeds"):
        sde.perturb(torch.zeros(2, 3), t)
    # where it fits, and in float32, the same call is fine
    torch.testing.assert_close(
        sde.marginal_prob(torch.zeros(2, 3), t.float())[1], torch.tensor([0.01 * 1e7**0.5, 1e5], dtype=torch.float32)
    )
