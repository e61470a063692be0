"""The score / eps / denoiser converters against the exact quantities of a Gaussian mixture (Tweedie's formula)."""

from __future__ import annotations

import pytest
import torch

import sdescore as sds
from validation import random_anisotropic

from _half import HALF, HALF_SDES

TARGET = random_anisotropic(d=3, n_modes=3, seed=1)


def _points(sde, n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=gen, dtype=torch.float64) * 0.99 + 0.01  # one time per sample
    x0 = TARGET.sample(n, generator=gen)
    x, _ = sde.perturb(x0, t, generator=gen)
    return x, t


def test_denoiser_from_score_is_the_posterior_mean(sde):
    exact = TARGET.score_fn(sde)
    x, t = _points(sde)
    torch.testing.assert_close(sds.denoiser_from_score(sde, exact)(x, t), exact.denoiser(x, t), rtol=1e-9, atol=1e-9)


def test_eps_from_score_is_the_posterior_noise(sde):
    exact = TARGET.score_fn(sde)
    x, t = _points(sde)
    torch.testing.assert_close(sds.eps_from_score(sde, exact)(x, t), exact.eps(x, t), rtol=1e-9, atol=1e-9)


def test_score_from_eps_and_from_denoiser_give_the_exact_score(sde):
    exact = TARGET.score_fn(sde)
    x, t = _points(sde)
    s = exact(x, t)
    torch.testing.assert_close(sds.score_from_eps(sde, exact.eps)(x, t), s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sds.score_from_denoiser(sde, exact.denoiser)(x, t), s, rtol=1e-8, atol=1e-8)


def test_tweedie_posterior_mean_by_monte_carlo():
    """E[x0 | x_t = x] estimated by self-normalised importance sampling over the prior of x0 matches the denoiser."""
    sde = sds.VPSDE()
    exact = TARGET.score_fn(sde)
    gen = torch.Generator().manual_seed(3)
    t = torch.full((1,), 0.3, dtype=torch.float64)
    x = TARGET.marginal(sde, 0.3).sample(1, generator=gen)
    x0 = TARGET.sample(400_000, generator=gen)
    alpha, std = sde.kernel(t)
    logw = -((x - alpha * x0) ** 2).sum(1) / (2 * std**2)
    w = torch.softmax(logw, 0)
    estimate = (w[:, None] * x0).sum(0)
    ess = 1 / (w**2).sum()
    spread = torch.sqrt((w[:, None] * (x0 - estimate) ** 2).sum(0))
    denoised = sds.denoiser_from_score(sde, exact)(x, t)[0]
    assert bool(((estimate - denoised).abs() <= 5 * spread / torch.sqrt(ess)).all()), (estimate, denoised, ess)


def test_converters_round_trip(sde):
    exact = TARGET.score_fn(sde)
    x, t = _points(sde)
    back = sds.score_from_eps(sde, sds.eps_from_score(sde, exact))
    torch.testing.assert_close(back(x, t), exact(x, t), rtol=1e-12, atol=1e-12)
    back = sds.score_from_denoiser(sde, sds.denoiser_from_score(sde, exact))
    torch.testing.assert_close(back(x, t), exact(x, t), rtol=1e-9, atol=1e-9)


def test_converters_reject_bad_input():
    sde = sds.VPSDE()
    x, t = torch.zeros(2, 3), torch.full((2,), 0.5)
    with pytest.raises(TypeError, match="eps_fn must be callable"):
        sds.score_from_eps(sde, 3)
    with pytest.raises(TypeError, match="sde must be an sdescore.SDE"):
        sds.denoiser_from_score("vp", lambda x, t: x)
    # the wrapped function's errors name its argument, not a private class
    with pytest.raises(ValueError, match=r"^eps_fn returned shape \(2, 1\) for x of shape \(2, 3\)"):
        sds.score_from_eps(sde, lambda x, t: x[:, :1])(x, t)
    with pytest.raises(ValueError, match=r"^denoiser_fn returned shape"):
        sds.score_from_denoiser(sde, lambda x, t: x[:1])(x, t)
    with pytest.raises(TypeError, match=r"^score_fn returned dtype torch.float64 for x of dtype torch.float32"):
        sds.eps_from_score(sde, lambda x, t: x.double())(x, t)
    with pytest.raises(TypeError, match="score_fn must return a torch.Tensor"):
        sds.denoiser_from_score(sde, lambda x, t: 0.0)(x, t)


@pytest.mark.parametrize("convert", [sds.score_from_eps, sds.eps_from_score, sds.score_from_denoiser, sds.denoiser_from_score])
def test_converters_check_the_type_and_shape_of_t(convert):
    sde, x = sds.VPSDE(), torch.zeros(3, 2)
    f = convert(sde, lambda x, t: x)
    with pytest.raises(ValueError, match=r"t must have shape \(3,\), one per sample .* got shape \(\)"):
        f(x, torch.tensor(0.5))  # a 0-d time: was an IndexError from inside the kernel
    with pytest.raises(ValueError, match=r"t must have shape \(3,\).* got shape \(3, 1\)"):
        f(x, torch.full((3, 1), 0.5))
    with pytest.raises(TypeError, match="t must be a floating tensor of shape \\(3,\\).* got float"):
        f(x, 0.5)
    with pytest.raises(TypeError, match="t must be a floating tensor .* got dtype torch.int64"):
        f(x, torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be a floating tensor of shape \(B, \*dims\), got shape \(3,\)"):
        f(torch.zeros(3), torch.full((3,), 0.5))  # a shape: ValueError, as for every other shape (was TypeError)
    with pytest.raises(TypeError, match=r"x must be a floating tensor of shape \(B, \*dims\), got dtype torch.int64"):
        f(torch.zeros(3, 2, dtype=torch.long), torch.full((3,), 0.5))
    with pytest.raises(TypeError, match=r"x must be a floating tensor of shape \(B, \*dims\), got list"):
        f([[0.0, 0.0]] * 3, torch.full((3,), 0.5))
    assert f(x, torch.full((3,), 0.5)).shape == x.shape


def test_converters_take_a_network_running_under_autocast():
    """train(bf16=True) runs the loss under autocast, where the library's networks return bfloat16: the converters
    return x's dtype (CPU autocast here, the same rule as CUDA's), and refuse a wrong dtype outside autocast."""
    sde = sds.VPSDE()
    net = sds.ScoreMLP(2)
    x, t = torch.randn(8, 2), torch.rand(8) * 0.9 + 0.05
    for convert in (sds.score_from_eps, sds.score_from_denoiser, sds.eps_from_score, sds.denoiser_from_score):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = convert(sde, net)(x, t)
        assert out.dtype == x.dtype
        with pytest.raises(TypeError, match="returned dtype torch.bfloat16"):
            convert(sde, lambda x, t: net(x, t).bfloat16())(x, t)


# ---------------------------------------------------------------------------------------------- half precision


def _gaussian_data(sde, dtype):
    """x_t of N(0, I) data at times from 1e-4 to 1, rounded to dtype (x and t as a sampler passes them), and the exact
    float64 quantities of p_t = N(0, v I), v = alpha^2 + std^2: score -x / v, eps std x / v, denoiser alpha x / v, and
    NCSN's score -y / (1 + sigma^2) of the data smoothed at level sigma. The functions read their inputs as given
    (after rounding), compute in float64 and round to the input's dtype, as an exact network of that precision would."""
    t = torch.tensor([1e-4, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0], dtype=torch.float64)
    z = torch.randn(t.shape[0], 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha, std = sde.kernel(t)
    x = (torch.sqrt(alpha**2 + std**2)[:, None] * z).to(dtype)  # a draw of p_t
    t = t.to(dtype)

    def exact(name):
        def f(x, t):
            alpha, std = sde.kernel(t.double())
            a, s, v = alpha[:, None], std[:, None], (alpha**2 + std**2)[:, None]
            X = x.double()
            return {"score": -X / v, "eps": s * X / v, "denoiser": a * X / v}[name].to(x.dtype)
        return f

    def ncsn(y, sigma):
        return (-y.double() / (1 + sigma.double()[:, None] ** 2)).to(y.dtype)

    return x, t, exact, ncsn


@HALF
@pytest.mark.parametrize("name", list(HALF_SDES))
@pytest.mark.parametrize(
    "convert", ["score_from_eps", "eps_from_score", "score_from_denoiser", "denoiser_from_score", "score_from_ncsn"]
)
def test_converters_in_half_precision_agree_with_float64(name, dtype, convert):
    """Each converter at half-precision (x, t) against its formula in float64 at the same (x, t), from the same
    network output. The error bound is the standard one of a rounded sum: the network's output and the converter's
    result are each rounded once to dtype (eps / 2 relative), the float32 arithmetic in between adds ~1e-7; so
    |error| <= eps (sum of the formula's terms in absolute value), plus float16's subnormal spacing tiny * eps. Where
    the formula cancels (the denoiser's x + std^2 s at high noise) the bound grows with the terms, as it must. The
    kernel computed in x's dtype overflowed (std(1) = 1000 from exp(13.8 t) in float16: inf) or lost the result among
    the subnormals (1 / std^2 = 7e-6 for sigma_max = 378: a score of 0)."""
    sde = HALF_SDES[name]()
    x, t, exact, ncsn = _gaussian_data(sde, dtype)
    alpha, std = (c[:, None] for c in sde.kernel(t.double()))
    X = x.double()
    if convert == "score_from_ncsn":
        got = sds.score_from_ncsn(sde, ncsn)(x, t)
        # the model sees x / alpha and sigma = std / alpha rounded to x's dtype; the reference does too
        sigma = (std / alpha)[:, 0].to(dtype)
        out = ncsn((X / alpha).to(dtype), sigma).double()
        want, terms = out / alpha, 2 * (out / alpha).abs()  # two roundings of the input, two of the output
    else:
        fn = exact({"score_from_eps": "eps", "eps_from_score": "score", "score_from_denoiser": "denoiser",
                    "denoiser_from_score": "score"}[convert])
        got = getattr(sds, convert)(sde, fn)(x, t)
        out = fn(x, t).double()
        want, terms = {
            "score_from_eps": (-out / std, (out / std).abs()),
            "eps_from_score": (-std * out, (std * out).abs()),
            "score_from_denoiser": ((alpha * out - X) / std**2, ((alpha * out).abs() + X.abs()) / std**2),
            "denoiser_from_score": ((X + std**2 * out) / alpha, (X.abs() + (std**2 * out).abs()) / alpha),
        }[convert]
    assert got.dtype == dtype
    info = torch.finfo(dtype)
    err = (got.double() - want).abs()
    bound = info.eps * terms + info.tiny * info.eps
    # where the bound exceeds the dtype's range the result has no digit to check: the sub-VP denoiser at t = 1e-4
    # and 1e-3 (std = 1e-5, 1.1e-4) amplifies its own float16 rounding by 1 / std^2 = 1e10, 8e7
    keep = bound < info.max
    assert int(keep.all(1).sum()) >= 8  # all times but the two smallest at most
    assert bool((err[keep] <= bound[keep]).all()), (err / bound)[keep].max()
