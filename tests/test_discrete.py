"""The discrete methods as special cases of the SDEs: NCSN is the VE-SDE, DDPM is the VP-SDE.

Each test checks one statement of docs/theory/discrete_special_cases.md. Statistical tests reject when a
Monte-Carlo estimate differs from its closed form by more than Z = 5 standard errors (two-sided null level
about 6e-7 per comparison, Bonferroni over the comparisons of a test is still below 1e-4); seeds are fixed.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import sdescore as sds
from sdescore.discrete import (
    DDPM_VARIANCES,
    AnnealedLangevinCorrector,
    annealed_langevin,
    ddpm_betas,
    ddpm_eps_from_continuous,
    ddpm_sample,
    ddpm_times,
    langevin,
    ncsn_from_score,
    ncsn_sigmas,
    score_from_ncsn,
    ve_sde_from_ncsn_sigmas,
)
from sdescore.losses import dsm_loss, ncsn_loss
from validation import ncsn_toy, random_anisotropic, single_gaussian

from _half import HALF, HALF_SDES, rounding_bound

Z = 5.0
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fitted_slope(ns, errors) -> float:
    return float(np.polyfit(np.log(ns), np.log(errors), 1)[0])


def ncsn_grid(L: int) -> torch.Tensor:
    """t_i = (L - 1 - i) / (L - 1): the VE time of NCSN's level i (0-based)."""
    return torch.arange(L - 1, -1, -1, dtype=F64) / (L - 1)


# ================================================================================================ NCSN = VE
def test_ncsn_sigmas_are_geometric_and_descending():
    s = ncsn_sigmas(50.0, 0.01, 232)
    assert s.dtype == F64 and s.shape == (232,)
    assert bool((s[1:] < s[:-1]).all())
    np.testing.assert_allclose(s.numpy(), np.geomspace(50.0, 0.01, 232), rtol=1e-13)
    np.testing.assert_allclose(s.numpy(), np.exp(np.linspace(np.log(50.0), np.log(0.01), 232)), rtol=1e-13)


@pytest.mark.parametrize("sigma_1, sigma_L, L", [(50.0, 0.01, 232), (1.0, 0.01, 10), (20.0, 1.0, 2)])
def test_ncsn_levels_are_the_ve_kernel_std_on_the_grid_exactly(sigma_1, sigma_L, L):
    sigmas = ncsn_sigmas(sigma_1, sigma_L, L)
    ve = ve_sde_from_ncsn_sigmas(sigmas)
    assert (ve.sigma_min, ve.sigma_max, ve.N) == (float(sigmas[-1]), float(sigmas[0]), L - 1)
    alpha, std = ve.kernel(ncsn_grid(L))
    torch.testing.assert_close(std, sigmas, rtol=1e-15, atol=0)
    assert torch.equal(alpha, torch.ones_like(alpha))
    # bit for bit for the VE-SDE of the parameters themselves
    assert torch.equal(sds.VESDE(sigma_min=sigma_L, sigma_max=sigma_1).kernel(ncsn_grid(L))[1], sigmas)


def test_ncsn_levels_match_the_ve_kernel_over_random_parameters():
    """2000 seeded (sigma_1, sigma_L, L): VESDE(sigma_L, sigma_1).sigma(t_i) is ncsn_sigmas bit for bit; the VE-SDE
    rebuilt from the levels (sigma_max = sigmas[0], a rounding of sigma_1) reproduces them within 1e-15 relative,
    not always bit for bit (its log(sigma_max / sigma_min) can differ in the last bit)."""
    g = np.random.default_rng(0)
    rebuilt_exact = 0
    for _ in range(2000):
        sigma_1 = 10 ** g.uniform(-1, 3)
        sigma_L, L = sigma_1 * 10 ** g.uniform(-5, -0.1), int(g.integers(2, 1200))
        sigmas, t = ncsn_sigmas(sigma_1, sigma_L, L), ncsn_grid(L)
        assert torch.equal(sds.VESDE(sigma_min=sigma_L, sigma_max=sigma_1).sigma(t), sigmas), (sigma_1, sigma_L, L)
        std = sds.VESDE.from_ncsn(sigmas).kernel(t)[1]
        torch.testing.assert_close(std, sigmas, rtol=1e-15, atol=0)
        rebuilt_exact += bool(torch.equal(std, sigmas))
    assert rebuilt_exact > 1900  # most are exact; the docs say "to rounding", not "bit for bit"


@pytest.mark.parametrize("L", [2, 10, 232])
def test_ve_sde_of_ncsn_levels_discretizes_to_the_smld_chain(L):
    """N = L - 1: the levels lie 1 / (L - 1) apart in t, so `discretize(x, t_i)` adds the variance between two
    consecutive levels, SMLD's step sqrt(sigma_i^2 - sigma_{i+1}^2) (Song et al. 2021, eq. 19)."""
    sigmas = ncsn_sigmas(50.0, 0.01, L)
    ve = sds.VESDE.from_ncsn(sigmas)
    assert ve.N == L - 1
    x = torch.zeros(L - 1, 2, dtype=F64)
    f, G = ve.discretize(x, ncsn_grid(L)[:-1])
    assert torch.equal(f, x)
    torch.testing.assert_close(G, torch.sqrt(sigmas[:-1] ** 2 - sigmas[1:] ** 2), rtol=1e-13, atol=0)


def _reference_sigmas_float32(sigma_1, sigma_L, L):
    # NCSN's reference code: torch.tensor(np.exp(np.linspace(np.log(sigma_begin), np.log(sigma_end), L))).float()
    return torch.tensor(np.exp(np.linspace(np.log(sigma_1), np.log(sigma_L), L))).float()


@pytest.mark.parametrize("sigma_1, sigma_L, L", [(50.0, 0.01, 232), (1.0, 0.01, 10), (348.0, 0.01, 1000), (20.0, 1.0, 2)])
def test_float32_geometric_levels_give_their_ve_sde(sigma_1, sigma_L, L):
    candidates = {
        "ncsn_sigmas().float()": ncsn_sigmas(sigma_1, sigma_L, L).float(),
        "reference float32": _reference_sigmas_float32(sigma_1, sigma_L, L),
        "exp(linspace) in float32": torch.exp(torch.linspace(math.log(sigma_1), math.log(sigma_L), L, dtype=torch.float32)),
        "numpy float32": np.exp(np.linspace(np.log(sigma_1), np.log(sigma_L), L)).astype(np.float32),
    }
    for name, sigmas in candidates.items():
        ve = sds.VESDE.from_ncsn(sigmas)
        assert (ve.sigma_min, ve.sigma_max, ve.N) == (float(sigmas[-1]), float(sigmas[0]), L - 1), name
        # the kernel std on the grid is the float32 levels to float32 precision
        std = ve.kernel(ncsn_grid(L))[1]
        torch.testing.assert_close(std.float(), torch.as_tensor(sigmas), rtol=4e-6, atol=0, msg=name)


def test_non_geometric_levels_are_rejected_with_the_discrepancy():
    sigmas = ncsn_sigmas(50.0, 0.01, 232).float()
    bad = sigmas.clone()
    bad[100] *= 1.001  # far beyond float32 rounding
    with pytest.raises(ValueError, match=r"level 100 is .* relative deviation of 0\.001 where the levels' precision allows"):
        ve_sde_from_ncsn_sigmas(bad)
    bad64 = ncsn_sigmas(50.0, 0.01, 232)
    bad64[7] *= 1 + 1e-9  # a float32-sized error is not float64 rounding
    with pytest.raises(ValueError, match=r"level 7 is .* relative deviation of 1e-09"):
        ve_sde_from_ncsn_sigmas(bad64)
    with pytest.raises(ValueError, match=r"level 1 is 0\.5, but the geometric sequence .* has 0\.316"):
        ve_sde_from_ncsn_sigmas([1.0, 0.5, 0.1])


@HALF
def test_half_precision_levels_are_held_to_their_own_rounding(dtype):
    """Half-precision levels are accepted when they are the rounding of geometric ones, and refused 8 ulps off.

    The tolerance is 2 eps (a level's rounding, eps / 2, plus that of the geometric level built from the rounded
    ends, eps / 2 more) + 32 eps_32 (1 + max |log sigma|) <= 2 eps + 3.3e-5 here: the rounding of ncsn_sigmas, or of
    float32 exp(linspace(log ...)), lies within it; a level moved 8 ulps (>= 4 eps, as an ulp is >= eps / 2 of the
    value) lies >= 3 eps off, outside. The tolerance was 32 eps (1 + max |log sigma|) with eps the levels' own: 1.4 in
    bfloat16 and 0.18 in float16 for levels from 50 down to 0.01, so levels 8 ulps off (3 % to 6 % in bfloat16), and
    bfloat16 [50, 2, 0.16, 0.01] (level 1 a relative 0.316 off the geometric 2.925), were accepted as geometric."""
    eps = torch.finfo(dtype).eps
    for sigma_1, sigma_L, L in [(50.0, 0.01, 10), (50.0, 0.01, 100), (378.0, 0.01, 30), (1.0, 0.01, 10)]:
        levels = ncsn_sigmas(sigma_1, sigma_L, L).to(dtype)
        ve = ve_sde_from_ncsn_sigmas(levels)
        assert (ve.sigma_min, ve.sigma_max, ve.N) == (float(levels[-1]), float(levels[0]), L - 1)
        float32 = torch.exp(torch.linspace(math.log(sigma_1), math.log(sigma_L), L, dtype=torch.float32))
        ve_sde_from_ncsn_sigmas(float32.to(dtype))
        bad, k = levels.clone(), L // 2
        for _ in range(8):
            bad[k] = torch.nextafter(bad[k], bad.new_tensor(math.inf))
        assert float(bad[k]) < float(bad[k - 1])  # still descending: refused for not being geometric
        ends = [abs(math.log(float(levels[0]))), abs(math.log(float(levels[-1])))]
        rtol = 2 * eps + 32 * torch.finfo(torch.float32).eps * (1 + max(ends))
        with pytest.raises(ValueError, match=rf"level {k} is .* where the levels' precision allows {rtol:.3g};"):
            ve_sde_from_ncsn_sigmas(bad)
    with pytest.raises(ValueError, match=r"level 1 is 2\.0, .* has 2\.92.* relative deviation of 0\.316"):
        ve_sde_from_ncsn_sigmas(torch.tensor([50.0, 2.0, 0.16, 0.01]).to(dtype))


def test_numpy_scalars_are_judged_at_their_dtype_as_their_array_is():
    """A sequence of NumPy scalars carries their dtype as the array does: list(float32 array) gives the array's VE-SDE
    (it was refused, its float32 rounding, 4e-8, being judged at float64's precision), and so does a mixed sequence
    at the coarsest of its dtypes; the same values as Python floats are float64 numbers, 4e-8 off geometric: refused."""
    arr = np.exp(np.linspace(np.log(50.0), np.log(0.01), 10)).astype(np.float32)
    want = repr(ve_sde_from_ncsn_sigmas(arr))
    for sequence in (list(arr), tuple(arr), (v for v in arr), [float(arr[0])] + list(arr[1:])):
        assert repr(ve_sde_from_ncsn_sigmas(sequence)) == want
    half = arr.astype(np.float16)
    assert repr(ve_sde_from_ncsn_sigmas(list(half))) == repr(ve_sde_from_ncsn_sigmas(half))
    with pytest.raises(ValueError, match=r"deviation of 4\.\d+e-08 where the levels' precision allows 4\.\d+e-14"):
        ve_sde_from_ncsn_sigmas(arr.tolist())


def test_levels_whose_ratio_overflows_float64_are_refused():
    """sigma_L (sigma_1 / sigma_L)^t_i is formed from the ratio: beyond float64's range it gave [inf, inf, nan] for
    (1e200, 1e-200, 3) (and log(sigma_1) - log(sigma_L) instead of log(sigma_1 / sigma_L) still gives
    sigma_L e^{921} = inf at t = 1). A ratio within range gives the geometric levels, to the rounding of
    exp(t log ratio): about |log ratio| eps = 2e-13 relative at 1e307."""
    with pytest.raises(ValueError, match=r"sigma_1 / sigma_L must be a finite float64 .* sigma_1=1e\+200 and sigma_L="):
        ncsn_sigmas(1e200, 1e-200, 3)
    with pytest.raises(ValueError, match=r"sigma_1 / sigma_L must be a finite float64"):
        ve_sde_from_ncsn_sigmas([1e200, 1.0, 1e-200])
    wide = ncsn_sigmas(1e300, 1e-7, 3)
    np.testing.assert_allclose(wide.numpy(), [1e300, math.sqrt(1e293), 1e-7], rtol=1e-12)


def test_ncsn_loss_is_the_sigma2_dsm_loss_on_the_ve_grid_value_for_value():
    L, B = 10, 512
    sigmas = ncsn_sigmas(5.0, 0.05, L)
    ve = ve_sde_from_ncsn_sigmas(sigmas)
    x0 = torch.randn(B, 3, 2, generator=gen(0), dtype=F64)
    labels = torch.randint(0, L, (B,), generator=gen(1))
    z = torch.randn(B, 3, 2, generator=gen(2), dtype=F64)
    ncsn_fn = lambda x, sigma: -torch.tanh(x) / (0.3 + sigma.reshape(-1, 1, 1))  # noqa: E731

    a = ncsn_loss(ncsn_fn, x0, sigmas, labels, noise=z, reduce="none")
    b = dsm_loss(ve, score_from_ncsn(ve, ncsn_fn), x0, weighting="sigma2", t=ncsn_grid(L)[labels], noise=z, reduce="none")
    torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
    # ...and with drawn labels: the same generator state gives the same (label, noise) pairs.
    c = ncsn_loss(ncsn_fn, x0, sigmas, generator=gen(3), reduce="none")
    g = gen(3)
    labels = torch.randint(0, L, (B,), generator=g)
    d = ncsn_loss(ncsn_fn, x0, sigmas, labels, generator=g, reduce="none")
    assert torch.equal(c, d)


@pytest.mark.parametrize("sde", [sds.VESDE(sigma_min=0.05, sigma_max=10.0), sds.VPSDE(), sds.SubVPSDE()], ids=repr)
def test_ncsn_adapters_are_exact_for_any_gaussian_kernel(sde):
    # The exact NCSN score of the smoothed data, converted, is the exact score of p_t, and back.
    mix = random_anisotropic(d=2, n_modes=3, seed=1)
    B = 64
    x = 3 * torch.randn(B, 2, generator=gen(4), dtype=F64)
    t = torch.linspace(0.05, 1.0, B, dtype=F64)
    torch.testing.assert_close(score_from_ncsn(sde, mix.noised())(x, t), mix.score_fn(sde)(x, t), rtol=1e-9, atol=1e-12)

    alpha, std = sde.kernel(t)
    sigma = std / alpha  # levels the SDE covers on [0.05, 1]
    torch.testing.assert_close(ncsn_from_score(sde, mix.score_fn(sde))(x, sigma), mix.noised()(x, sigma), rtol=1e-9, atol=1e-12)


def test_ve_adapter_is_ncsn_at_sigma_of_t_and_inverts():
    ve = sds.VESDE(sigma_min=0.01, sigma_max=50.0)
    seen = {}

    def ncsn_fn(x, sigma):
        seen["sigma"] = sigma
        return x * sigma[:, None]

    t = torch.rand(8, generator=gen(5), dtype=F64)
    x = torch.randn(8, 2, generator=gen(6), dtype=F64)
    out = score_from_ncsn(ve, ncsn_fn)(x, t)
    assert torch.equal(seen["sigma"], ve.sigma(t)) and torch.equal(out, x * ve.sigma(t)[:, None])
    sigma = ve.sigma(t)
    back = ncsn_from_score(ve, score_from_ncsn(ve, ncsn_fn))(x, sigma)
    torch.testing.assert_close(back, ncsn_fn(x, sigma), rtol=1e-13, atol=0)


def test_annealed_langevin_follows_algorithm_1_of_song_and_ermon():
    sigmas, step_lr, T = [2.0, 0.5], 0.01, 3
    x = torch.randn(5, 2, generator=gen(7), dtype=F64)
    score = lambda y, s: -y / (1 + s[:, None] ** 2)  # noqa: E731
    out = annealed_langevin(score, sigmas, x, n_steps_each=T, step_lr=step_lr, generator=gen(8))

    g, y = gen(8), x.clone()
    for sigma in sigmas:
        alpha = step_lr * sigma**2 / sigmas[-1] ** 2
        for _ in range(T):
            z = torch.randn(y.shape, generator=g, dtype=F64)
            y = y + alpha / 2 * score(y, torch.full((5,), sigma, dtype=F64)) + math.sqrt(alpha) * z
    y = y + sigmas[-1] ** 2 * score(y, torch.full((5,), sigmas[-1], dtype=F64))  # NCSNv2's denoising step
    torch.testing.assert_close(out.x, y, rtol=1e-13, atol=1e-13)
    assert out.nfe == len(sigmas) * T + 1
    assert annealed_langevin(score, sigmas, x, T, step_lr, denoise=False, generator=gen(8)).nfe == len(sigmas) * T
    # levels given as numpy scalars (a numpy schedule's elements) are real numbers like floats
    as_numpy = annealed_langevin(score, [np.float32(v) for v in sigmas], x, n_steps_each=T, step_lr=step_lr, generator=gen(8))
    torch.testing.assert_close(as_numpy.x, out.x, rtol=1e-13, atol=1e-13)


def test_annealed_langevin_is_the_corrector_only_pc_sampler():
    """annealed_langevin == pc_sample(predictor='none', corrector=AnnealedLangevinCorrector) sample for sample.

    Without a predictor, pc_sample runs its corrector at all points of linspace(T, eps, steps + 1), eps included.
    The VE-SDE with sigma_max = sigma_1 and sigma_min = sigma_L r (r the levels' ratio), steps = L - 1 and
    eps = 1 / L puts those points exactly on NCSN's levels sigma_1..sigma_L.
    """
    L, sigma_1, sigma_L, T, step_lr = 6, 3.0, 0.2, 4, 0.05
    sigmas = ncsn_sigmas(sigma_1, sigma_L, L)
    r = (sigma_L / sigma_1) ** (1 / (L - 1))
    ve, eps = sds.VESDE(sigma_min=sigma_L * r, sigma_max=sigma_1), 1 / L
    torch.testing.assert_close(ve.sigma(torch.linspace(1.0, eps, L, dtype=F64)), sigmas, rtol=1e-14, atol=0)

    ncsn_fn = single_gaussian().noised()
    x = torch.randn(32, 2, generator=gen(9), dtype=F64)
    a = annealed_langevin(ncsn_fn, sigmas, x, n_steps_each=T, step_lr=step_lr, denoise=False, generator=gen(10))
    b = sds.pc_sample(
        ve, score_from_ncsn(ve, ncsn_fn), None, x_T=x, predictor="none",
        corrector=AnnealedLangevinCorrector(sigma_min=sigma_L, step_lr=step_lr), n_corrector_steps=T,
        steps=L - 1, eps=eps, generator=gen(10),
    )
    torch.testing.assert_close(a.x, b.x, rtol=1e-12, atol=1e-12)
    assert a.nfe == b.nfe == L * T


def test_langevin_reaches_the_exact_stationary_law_of_its_discretization():
    """For the target N(mu, v I), x <- x + (a/2) s + sqrt(a) z is an AR(1) chain with stationary law
    N(mu, v / (1 - a / (4 v)) I); from x = 0 it contracts by 1 - a / (2v) per step."""
    mu, v, a, B = torch.tensor([1.0, -2.0], dtype=F64), 0.5, 0.4, 20_000
    out = langevin(lambda y: -(y - mu) / v, torch.zeros(B, 2, dtype=F64), step_size=a, n_steps=300, generator=gen(11))
    assert out.nfe == 300
    var = v / (1 - a / (4 * v))
    se_mean, se_var = math.sqrt(var / B), var * math.sqrt(2 / (B - 1))
    assert ((out.x.mean(0) - mu).abs() < Z * se_mean).all()
    assert ((out.x.var(0) - var).abs() < Z * se_var).all()
    assert ((out.x.var(0) - v).abs() > 2 * Z * se_var).all()  # the check sees the discretization bias


def test_plain_langevin_ignores_mixture_weights_and_annealed_langevin_recovers_them():
    """Song & Ermon (2019), section 3.2 and figure 3: 0.2 N((-5,-5), I) + 0.8 N((5,5), I), uniform start on [-8, 8]^2.

    Plain Langevin with the exact score cannot cross between the modes and keeps the initial even split.
    Annealed Langevin (sigma 20 -> 1, L = 10, T = 100, step_lr 0.1) recovers the weight 0.8 up to its
    finite-step bias, measured 0.018 +- 0.004 with 10^4 samples; allowance 0.03 plus Z binomial standard errors.
    """
    mix, B = ncsn_toy(), 2000
    x = 16 * torch.rand(B, 2, generator=gen(12), dtype=F64) - 8
    se = math.sqrt(0.8 * 0.2 / B)

    plain = langevin(mix.score, x, step_size=0.1, n_steps=1000, generator=gen(13)).x
    frac_plain = (mix.classify(plain) == 1).double().mean().item()
    assert abs(frac_plain - 0.5) < Z * math.sqrt(0.25 / B) + 0.02, frac_plain
    assert abs(frac_plain - 0.8) > 0.2

    annealed = annealed_langevin(mix.noised(), ncsn_sigmas(20.0, 1.0, 10), x, n_steps_each=100, step_lr=0.1, generator=gen(14)).x
    frac = (mix.classify(annealed) == 1).double().mean().item()
    assert abs(frac - 0.8) < 0.03 + Z * se, frac


# ================================================================================================ DDPM = VP
def test_ddpm_betas_are_ho_et_al_schedule():
    np.testing.assert_allclose(ddpm_betas().numpy(), np.linspace(1e-4, 0.02, 1000), rtol=1e-13, atol=0)


@pytest.mark.parametrize("N", [25, 1000])
def test_ddpm_forward_step_is_the_vp_discretize_step(N):
    betas = ddpm_betas(0.1, 20.0, N)
    vp = sds.VPSDE(0.1, 20.0, N)
    x = torch.randn(N, 3, generator=gen(15), dtype=F64)
    z = torch.randn(N, 3, generator=gen(16), dtype=F64)
    t = torch.arange(N, dtype=F64) / (N - 1)  # step i uses beta(t_i) / N
    f, G = vp.discretize(x, t)
    torch.testing.assert_close(G**2, betas, rtol=1e-14, atol=0)
    ddpm = torch.sqrt(1 - betas)[:, None] * x + torch.sqrt(betas)[:, None] * z
    torch.testing.assert_close(x + f + G[:, None] * z, ddpm, rtol=1e-14, atol=1e-15)


def test_ddpm_marginals_converge_to_the_vp_kernel_at_first_order():
    """max_i |alpha_bar_i - alpha((i + 1) / N)^2| over the chain, for N = 100..3200: fitted slope -1."""
    ns, errors = [100, 200, 400, 800, 1600, 3200], []
    for N in ns:
        alpha_bar = torch.cumprod(1 - ddpm_betas(0.1, 20.0, N), 0)
        alpha, _ = sds.VPSDE(0.1, 20.0, N).kernel(torch.arange(1, N + 1, dtype=F64) / N)
        errors.append((alpha_bar - alpha**2).abs().max().item())
    slope = fitted_slope(ns, errors)
    assert abs(slope + 1) < 0.05, (slope, errors)
    assert errors[-1] < 1e-3


def test_ddpm_times_put_the_vp_kernel_on_the_chain_marginals():
    N = 1000
    betas = ddpm_betas(0.1, 20.0, N)
    vp = sds.VPSDE()
    t = ddpm_times(vp, betas)
    alpha_bar = torch.cumprod(1 - betas, 0)
    inside = t < vp.T  # the last few chain marginals lie a hair past T and are clamped to it
    assert inside.sum() > 0.99 * N
    alpha, std = vp.kernel(t[inside])
    torch.testing.assert_close(alpha**2, alpha_bar[inside], rtol=1e-12, atol=0)
    torch.testing.assert_close(std**2, 1 - alpha_bar[inside], rtol=1e-10, atol=0)
    assert (t - torch.arange(1, N + 1, dtype=F64) / N).abs().max() < 5.0 / N


@pytest.mark.parametrize("sde", [sds.VPSDE(), sds.VESDE(sigma_min=0.01, sigma_max=50.0)], ids=repr)
def test_ddpm_eps_from_continuous_is_the_exact_discrete_eps(sde):
    """For data N(mu, Sigma) the chain's x_i = sqrt(abar) x0 + sqrt(1 - abar) z has E[z | x_i = x] =
    sqrt(1 - abar) C^{-1} (x - sqrt(abar) mu), C = abar Sigma + (1 - abar) I; the adapter of the exact continuous
    eps must give it at every step whose time lies inside (0, T) (all of them for VP; VE covers part of the SNRs)."""
    mix, N, B = single_gaussian(), 1000, 1000
    betas = ddpm_betas()
    abar = torch.cumprod(1 - betas, 0)
    i = torch.arange(N).repeat_interleave(B // N)
    x = 2 * torch.randn(B, 2, generator=gen(24), dtype=F64)
    got = ddpm_eps_from_continuous(sde, mix.score_fn(sde).eps, betas)(x, i)
    a = abar[i][:, None, None]
    C = a * mix.covariance() + (1 - a) * torch.eye(2, dtype=F64)
    want = torch.sqrt(1 - abar[i])[:, None] * torch.linalg.solve(C, x - torch.sqrt(abar[i])[:, None] * mix.mean())
    inside = (ddpm_times(sde, betas)[i] > 0) & (ddpm_times(sde, betas)[i] < sde.T)
    assert inside.float().mean() > (0.99 if isinstance(sde, sds.VPSDE) else 0.5)
    torch.testing.assert_close(got[inside], want[inside], rtol=1e-8, atol=1e-10)


def test_ddpm_ancestral_mean_equals_the_reverse_diffusion_step_to_second_order():
    """One DDPM step, mean (x + beta s) / sqrt(1 - beta), vs the VP reverse-diffusion predictor's x - f_i + G_i^2 s
    at the same beta = beta(t) / N: they agree to O(beta^2) = O(1 / N^2) (Song et al. 2021, appendix E).

    The DDPM step is a one-step chain [beta] (no noise at i = 0) with eps = -sqrt(1 - abar_0) s = -sqrt(beta) s.
    Fitted slope -2 in N."""
    x = torch.randn(64, 2, generator=gen(17), dtype=F64)
    score = lambda y, t: -0.7 * y + 0.3  # noqa: E731
    ns, errors = [100, 200, 400, 800, 1600], []
    for N in ns:
        vp, t = sds.VPSDE(0.1, 20.0, N), torch.full((64,), 0.5, dtype=F64)
        beta = float(vp.beta(t[:1])) / N
        ddpm = ddpm_sample(lambda y, i: -math.sqrt(beta) * score(y, None), [beta], x).x
        torch.testing.assert_close(ddpm, (x + beta * score(x, None)) / math.sqrt(1 - beta), rtol=1e-14, atol=1e-14)
        _, x_mean = sds.PREDICTORS["reverse_diffusion"].step(vp, score, x, t, 1.0 / N, None)
        errors.append((ddpm - x_mean).abs().max().item())
    slope = fitted_slope(ns, errors)
    assert abs(slope + 2) < 0.1, (slope, errors)


def _record_states(eps_fn):
    states = {}

    def recording(y, i):
        states[int(i[0])] = y.clone()
        return eps_fn(y, i)

    return recording, states


@pytest.mark.parametrize("use_adapter", [False, True])
def test_ddpm_sample_with_beta_variance_is_exact_for_standard_normal_data(use_adapter):
    """Data N(0, I): every marginal of the chain is N(0, I), eps(x, i) = sqrt(1 - abar_i) x, and the reverse step
    x <- sqrt(1 - beta_i) x + sqrt(beta_i) z is exact at any N. Checked at every step of a coarse chain (N = 30),
    and for the output N(0, (1 - beta_0) I) (the last step adds no noise)."""
    N, B = 30, 20_000
    betas = ddpm_betas(0.1, 20.0, N)
    abar = torch.cumprod(1 - betas, 0)
    if use_adapter:
        vp = sds.VPSDE(0.1, 20.0, N)
        eps_fn = ddpm_eps_from_continuous(vp, lambda y, t: vp.kernel(t.to(F64))[1].to(y.dtype)[:, None] * y, betas)
    else:
        eps_fn = lambda y, i: torch.sqrt(1 - abar[i])[:, None] * y  # noqa: E731
    recording, states = _record_states(eps_fn)
    out = ddpm_sample(recording, betas, torch.randn(B, 2, generator=gen(18), dtype=F64), generator=gen(19))
    assert out.nfe == N and sorted(states) == list(range(N))
    se = math.sqrt(2 / (B - 1))
    for i, y in states.items():
        assert (y.var(0) - 1).abs().max() < Z * se, (i, y.var(0))
        assert y.mean(0).abs().max() < Z / math.sqrt(B)
    assert (out.x.var(0) - (1 - betas[0])).abs().max() < Z * se * (1 - betas[0])


def test_ddpm_sample_with_beta_tilde_samples_the_exact_posterior_of_a_point_mass():
    """Data = a point mass at mu: eps is (x - sqrt(abar) mu) / sqrt(1 - abar), the DDPM mean is the posterior mean of
    q(x_{i-1} | x_i, x0 = mu) and beta-tilde its variance (Ho et al. 2020, eq. 6-7), so every state is exactly
    N(sqrt(abar_i) mu, (1 - abar_i) I) and the output is mu."""
    N, B = 30, 20_000
    mu = torch.tensor([2.0, -1.0], dtype=F64)
    betas = ddpm_betas(0.1, 20.0, N)
    abar = torch.cumprod(1 - betas, 0)
    eps_fn = lambda y, i: (y - torch.sqrt(abar[i])[:, None] * mu) / torch.sqrt(1 - abar[i])[:, None]  # noqa: E731
    recording, states = _record_states(eps_fn)
    x_T = math.sqrt(abar[-1]) * mu + math.sqrt(1 - abar[-1]) * torch.randn(B, 2, generator=gen(20), dtype=F64)
    out = ddpm_sample(recording, betas, x_T, variance="beta_tilde", generator=gen(21))
    for i, y in states.items():
        var = 1 - abar[i].item()
        assert (y.var(0) / var - 1).abs().max() < Z * math.sqrt(2 / (B - 1)), (i, y.var(0), var)
        assert (y.mean(0) - math.sqrt(abar[i]) * mu).abs().max() < Z * math.sqrt(var / B)
    torch.testing.assert_close(out.x, mu.expand(B, 2), rtol=0, atol=1e-12)


def test_ddpm_variances():
    betas = ddpm_betas(0.1, 20.0, 50)
    log_abar = torch.cumsum(torch.log1p(-betas), 0)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    torch.testing.assert_close(DDPM_VARIANCES["beta"](betas, log_abar), betas)
    torch.testing.assert_close(DDPM_VARIANCES["beta_tilde"](betas, log_abar), (1 - abar_prev) / (1 - abar) * betas, rtol=1e-12, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("variance", ["beta", "beta_tilde"])
def test_ddpm_sample_with_a_continuous_vp_model_recovers_gaussian_data(variance):
    """N = 1000, exact continuous eps of N(mu, Sigma) data through `ddpm_eps_from_continuous`: the output's mean and
    covariance match the data within Z standard errors plus 0.02 (the O(1/N) bias, measured below 0.01)."""
    mix, B, N = single_gaussian(), 20_000, 1000
    vp, betas = sds.VPSDE(), ddpm_betas(0.1, 20.0, N)
    eps_fn = ddpm_eps_from_continuous(vp, mix.score_fn(vp).eps, betas)
    out = ddpm_sample(eps_fn, betas, torch.randn(B, 2, generator=gen(22), dtype=F64), variance=variance, generator=gen(23))
    cov, cov_hat = mix.covariance(), torch.cov(out.x.T)
    se_cov = torch.sqrt((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / B)
    assert ((out.x.mean(0) - mix.mean()).abs() < Z * torch.sqrt(cov.diagonal() / B) + 0.02).all()
    assert ((cov_hat - cov).abs() < Z * se_cov + 0.02).all()


# ================================================================================================ bad input
def test_bad_input_raises_clear_errors():
    x = torch.zeros(4, 2, dtype=F64)
    ncsn_fn = lambda y, s: -y  # noqa: E731
    with pytest.raises(ValueError, match="sigma_1 > sigma_L"):
        ncsn_sigmas(0.01, 1.0, 10)
    with pytest.raises(ValueError, match="sigma_L must be > 0"):
        ncsn_sigmas(1.0, 0.0, 10)
    with pytest.raises(ValueError, match="L must be >= 2"):
        ncsn_sigmas(1.0, 0.1, 1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        annealed_langevin(ncsn_fn, [0.1, 1.0], x)
    with pytest.raises(ValueError, match="finite and > 0"):
        annealed_langevin(ncsn_fn, [1.0, -0.1], x)
    with pytest.raises(ValueError, match="step_lr must be > 0"):
        annealed_langevin(ncsn_fn, [1.0, 0.1], x, step_lr=0.0)
    with pytest.raises(ValueError, match="n_steps_each must be >= 1"):
        annealed_langevin(ncsn_fn, [1.0, 0.1], x, n_steps_each=0)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        langevin(lambda y: -y, x, step_size=-0.1, n_steps=10)
    with pytest.raises(ValueError, match="x must have shape"):
        langevin(lambda y: -y, torch.zeros(4, dtype=F64), step_size=0.1, n_steps=10)
    with pytest.raises(ValueError, match="returned shape"):
        langevin(lambda y: y[:, :1], x, step_size=0.1, n_steps=1)
    with pytest.raises(sds.NonFiniteError, match="step 0"):
        langevin(lambda y: y / 0.0 * 0.0, x, step_size=0.1, n_steps=3)
    with pytest.raises(ValueError, match="geometric"):
        ve_sde_from_ncsn_sigmas([1.0, 0.5, 0.1])
    with pytest.raises(ValueError, match="at least 2 levels"):
        ve_sde_from_ncsn_sigmas([1.0])
    with pytest.raises(ValueError, match="sigma_min must be > 0"):
        AnnealedLangevinCorrector(sigma_min=0.0)
    with pytest.raises(ValueError, match="beta_max / N < 1"):
        ddpm_betas(0.1, 20.0, 10)
    with pytest.raises(ValueError, match=r"every beta_i must lie in \(0, 1\)"):
        ddpm_sample(lambda y, i: y, [0.5, 1.0], x)
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm_sample(lambda y, i: y, [0.1, 0.2], x, variance="sigma")
    with pytest.raises(TypeError, match="unexpected keyword"):
        annealed_langevin(ncsn_fn, [1.0, 0.1], x, n_steps=3)


def test_ddpm_eps_from_continuous_checks_the_step_index():
    N = 1000
    eps_fn = ddpm_eps_from_continuous(sds.VPSDE(), lambda y, t: 0 * y + t[:, None], ddpm_betas())  # returns t_i
    x = torch.ones(3, 2, dtype=F64)
    ok = eps_fn(x, torch.tensor([0, 500, N - 1]))
    torch.testing.assert_close(ok[:, 0], ddpm_times(sds.VPSDE(), ddpm_betas())[[0, 500, N - 1]], rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match=r"i .* must lie in \[0, 999\] .* got values in \[-1000, 0\]"):
        eps_fn(x, torch.tensor([-1, -1000, 0]))  # was: wrapped around to the noisiest steps
    with pytest.raises(ValueError, match=r"must lie in \[0, 999\] .* got values in \[0, 1000\]"):
        eps_fn(x, torch.tensor([0, 1, N]))  # was: a raw IndexError
    with pytest.raises(TypeError, match=r"i must be an integer tensor of shape \(3,\).* got dtype torch.float32"):
        eps_fn(x, torch.tensor([0.9, 1.7, 2.2]))  # was: truncated to steps 0, 1, 2
    with pytest.raises(TypeError, match="i must be an integer tensor .* got int"):
        eps_fn(x, 3)
    with pytest.raises(TypeError, match="i must be an integer tensor .* got dtype torch.bool"):
        eps_fn(x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"i must have shape \(3,\)"):
        eps_fn(x, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="eps_fn returned shape"):
        ddpm_eps_from_continuous(sds.VPSDE(), lambda y, t: y[:, :1], ddpm_betas())(x, torch.zeros(3, dtype=torch.long))


def test_ncsn_from_score_takes_the_ve_sdes_own_end_levels_exactly():
    """sigma = sigma_max and sigma_min, as given to VESDE, are inside its range in float64 and float32, although the
    kernel computes sigma(T) = sigma_min exp(log(sigma_max / sigma_min)) with rounding (VESDE(1e-5, 90) once refused
    sigma = 90)."""
    for sigma_min in (1e-5, 1e-3, 0.05):
        for sigma_max in (1.0, 7.0, 90.0, 378.0, 997.0):
            times = []
            f = ncsn_from_score(sds.VESDE(sigma_min=sigma_min, sigma_max=sigma_max), lambda y, t: times.append(t) or -y)
            for dtype in (F64, torch.float32):
                times.clear()
                assert f(torch.zeros(2, 2, dtype=dtype), torch.tensor([sigma_max, sigma_min], dtype=dtype)).shape == (2, 2)
                # the levels' times: T and 0, to the dtype's rounding
                torch.testing.assert_close(times[0].double(), torch.tensor([1.0, 0.0], dtype=F64), rtol=0,
                                           atol=4 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("sde", [sds.VESDE(sigma_min=0.01, sigma_max=50.0), sds.VPSDE()], ids=repr)
def test_ncsn_from_score_rejects_levels_outside_the_sde(sde):
    f = ncsn_from_score(sde, lambda y, t: -y)
    x = torch.zeros(3, 2, dtype=F64)
    alpha, std = sde.kernel(torch.tensor([0.0, 1.0], dtype=F64))
    low, high = (std / alpha).tolist()
    inside = torch.tensor([max(low, 1e-3), 1.0, high], dtype=F64)
    assert f(x, inside).shape == x.shape
    assert f(x.float(), inside.float()).shape == x.shape  # the top level rounded to float32 is still inside
    for sigma in ([2 * high, 1.0, 1.0], [0.0, 1.0, 1.0], [math.nan, 1.0, 1.0]) + (([low / 2, 1.0, 1.0],) if low > 0 else ()):
        # was: evaluated the score at t < 0, t > T or t = +-inf
        with pytest.raises(ValueError, match=r"sigma must lie in the SDE's range .* \[" + re.escape(f"{low!r}, {high!r}")):
            f(x, torch.tensor(sigma, dtype=F64))
    with pytest.raises(ValueError, match=r"sigma must have shape \(3,\)"):
        f(x, torch.tensor(1.0, dtype=F64))


# ---------------------------------------------------------------------------------------------- half precision


@HALF
@pytest.mark.parametrize("name", list(HALF_SDES))
def test_ncsn_from_score_in_half_precision_agrees_with_float64(name, dtype):
    """ncsn(x, sigma) = alpha score(alpha x, t) for half-precision x and sigma, against the same formula in float64
    from the same (exact, N(0, I)) score at the time the score is given (t in x's dtype, the interface). The score's
    input alpha x, its output and the result are each rounded once (eps / 2 relative each; the score is linear in x),
    the float32 product in between adds ~1e-7: |error| <= 2 eps |ncsn| plus float16's subnormal spacing."""
    sde = HALF_SDES[name]()
    t_levels = torch.tensor([1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0], dtype=F64)
    alpha, std = sde.kernel(t_levels)
    sigma = (std / alpha).to(dtype)
    x = torch.randn(9, 3, generator=gen(0), dtype=F64).mul(torch.sqrt(1 + sigma.double() ** 2)[:, None]).to(dtype)

    def score(y, t):  # exact score of N(0, I) data under the kernel, at the times as given
        a, s = sde.kernel(t.double())
        return (-y.double() / (a**2 + s**2)[:, None]).to(y.dtype)

    got = ncsn_from_score(sde, score)(x, sigma)
    t = sde.t_from_log_snr(-2.0 * torch.log(sigma.double())).clamp(0.0, sde.T)
    a = sde.kernel(t)[0][:, None]
    a_s, s_s = sde.kernel(t.to(dtype).double())
    want = a * (-(a * x.double()) / (a_s**2 + s_s**2)[:, None])
    assert got.dtype == dtype
    info = torch.finfo(dtype)
    assert bool(((got.double() - want).abs() <= 2 * info.eps * want.abs() + info.tiny * info.eps).all())


@HALF
def test_annealed_langevin_corrector_in_half_precision_agrees_with_float64(dtype, monkeypatch):
    """One step x + (alpha / 2) s + sqrt(alpha) z with alpha = step_lr std^2 / sigma_min^2 = 1e6 at t = 1 for
    VE(1e-3, 1000) (beyond float16's 65504: the step was inf), against the same step in float64 with the same z.
    s, the float32 step and the result are each rounded once: |error| <= eps (|x| + |alpha s / 2| + |sqrt(alpha) z|)."""
    sde = sds.VESDE(sigma_min=1e-3, sigma_max=1000.0)
    corrector = AnnealedLangevinCorrector(sigma_min=1e-3, step_lr=1e-6)  # alpha(1) = 1e6 = sigma(1)^2
    x = (1000 * torch.randn(8, 3, generator=gen(0))).to(dtype)
    z = torch.randn(8, 3, generator=gen(1)).to(dtype)  # the same draw for both precisions
    monkeypatch.setattr("sdescore.discrete._randn_like", lambda like, generator: z.to(like.dtype))
    score = lambda y, t: (-y.double() / (1 + sde.sigma(t.double()) ** 2)[:, None]).to(y.dtype)  # noqa: E731
    t = torch.ones(8, dtype=F64)
    got, got_mean = corrector.step(sde, score, x, t, 0.01, 1, 0.16, None)
    want, want_mean = corrector.step(sde, score, x.double(), t, 0.01, 1, 0.16, None)
    assert got.dtype == got_mean.dtype == dtype
    eps = torch.finfo(dtype).eps
    X = x.double()
    drift = (want_mean - X).abs()
    assert bool(((got_mean.double() - want_mean).abs() <= eps * (X.abs() + drift)).all())
    assert bool(((got.double() - want).abs() <= eps * (X.abs() + drift + 1000 * z.double().abs())).all())


def test_ddpm_betas_refuse_beta_min_zero_and_say_why():
    """beta_0 = beta_min / N = 0 is a first step without noise: alpha_bar_0 = 1, and DDPM's sampler would divide by
    sqrt(1 - alpha_bar_0) = 0. The VP-SDE takes beta_min = 0 (its kernel has std(t) > 0 for t > 0); the chain cannot."""
    with pytest.raises(ValueError, match=r"beta_min must be > 0, got 0.0: beta_0 = beta_min / N .* first step"):
        ddpm_betas(0.0, 20.0, 1000)
    with pytest.raises(ValueError, match=r"beta_min must be > 0, got -0.1"):
        ddpm_betas(-0.1, 20.0, 1000)
    sds.VPSDE(beta_min=0.0, beta_max=20.0)
    with pytest.raises(ValueError, match=r"every beta_i must lie in \(0, 1\)"):
        ddpm_sample(lambda y, i: y, [0.0, 0.1], torch.zeros(2, 2))


# ------------------------------------------------------------------------- half-precision chains, step by step


def _share_noise(monkeypatch, dtype):
    """Every z the samplers of sdescore.discrete draw, from a fresh seeded stream, rounded to `dtype`: exact in the
    half-precision run and in the float64 run alike, so the two chains see the same noise."""
    noise = torch.Generator().manual_seed(1)
    monkeypatch.setattr(
        "sdescore.discrete._randn_like",
        lambda like, generator: torch.randn(like.shape, generator=noise).to(dtype).to(like.dtype),
    )


@HALF
def test_langevin_in_half_precision_follows_the_float64_chain(dtype, monkeypatch):
    """langevin(-y, a = 1e-3, 3000 steps) from x0 ~ N(0, I) (8192 values) in half precision stays within the rounding
    bound M of `rounding_bound` of the float64 chain fed the same noise: mean (x_half - x_64)^2 <= M, with
    c = 1 - a / 2 and G^2 = a at each step (the second moment stays near 1 / (1 - a / 4), the chain's stationary one).
    Measured 0.56 M (float16) and 0.54 M (bfloat16): for mantissas spread log-uniformly E[ulp^2] = 3 / (8 ln 2)
    eps^2 y^2 = 0.54 eps^2 y^2, the bound's eps^2 y^2 at the top of a binade (sampling error about 2 %). The drift
    a y / 2 lies below half an ulp of y in bfloat16 and about it in float16: rounded alone, before the noise was
    added, it was lost and the chain drifted like a random walk: 585 M and the variance 0.71 against the float64
    chain's 0.99 in float16, 296 M and the variance 3.94 in bfloat16 (mean d^2 <= M bounds the variance difference
    by M + 2 sqrt(M var), Cauchy-Schwarz: 0.017 in float16, 0.14 in bfloat16)."""
    a, n, B = 1e-3, 3000, 4096
    x0 = torch.randn(B, 2, generator=gen(0)).to(dtype)
    runs = []
    for x in (x0, x0.double()):
        _share_noise(monkeypatch, dtype)
        runs.append(langevin(lambda y: -y, x, step_size=a, n_steps=n).x)
    got, want = runs
    assert got.dtype == dtype
    M = rounding_bound(dtype, [1 - a / 2] * n, [a] * n)
    assert float((got.double() - want).pow(2).mean()) <= M


@HALF
def test_ddpm_sample_in_half_precision_follows_the_float64_chain(dtype, monkeypatch):
    """ddpm_sample (Ho et al.'s 1000 betas, variance 'beta') with the exact eps of N(0, I) data from x_T ~ N(0, I)
    (8192 values) in half precision stays within the rounding bound M of `rounding_bound` of the float64 chain fed
    the same noise: the step is x <- sqrt(1 - beta_i) x + sqrt(beta_i) z, so c_i = sqrt(1 - beta_i), G_i^2 = beta_i
    (0 at i = 0) and E[y^2] = 1 (eps's own rounding adds a relative beta_i^2 <= 4e-4 to E[r^2]). Measured 0.56 M
    (float16) and 0.55 M (bfloat16), as for `langevin`. Rounded after each operation, the step lost its contraction
    x - beta_i x where beta_i x is below half an ulp of x (bfloat16: beta_i below 0.002 to 0.004, the first 90 to 190
    steps): 4.1 M in float16 and 24.7 M in bfloat16, whose output variance was 0.948 against the float64 chain's
    1.020 (bound on the difference by Cauchy-Schwarz: M + 2 sqrt(M var) = 0.077)."""
    betas = ddpm_betas()
    abar = torch.cumprod(1 - betas, 0)
    eps_fn = lambda y, i: (torch.sqrt(1 - abar[i])[:, None] * y.double()).to(y.dtype)  # noqa: E731
    x_T = torch.randn(4096, 2, generator=gen(0)).to(dtype)
    runs = []
    for x in (x_T, x_T.double()):
        _share_noise(monkeypatch, dtype)
        runs.append(ddpm_sample(eps_fn, betas, x).x)
    got, want = runs
    assert got.dtype == dtype
    beta = betas.flip(0)  # steps i = N - 1, ..., 0; the last adds no noise
    M = rounding_bound(dtype, torch.sqrt(1 - beta), torch.cat([beta[:-1], beta.new_zeros(1)]))
    assert float((got.double() - want).pow(2).mean()) <= M
