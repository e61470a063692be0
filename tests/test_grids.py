"""Time grids: each places its nodes by its defining function of time, from T down to eps, for every SDE."""

from __future__ import annotations

import decimal
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdescore as sds
from sdescore.grids import GRIDS, KarrasGrid, check_grid, time_grid

from conftest import SDES


def _sigma(sde, t):
    alpha, std = sde.kernel(t)
    return std / alpha


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("steps", [1, 2, 17, 500])
def test_grid_runs_from_T_to_eps_strictly_decreasing_in_float64(sde, name, steps):
    eps = 1e-5 if isinstance(sde, sds.VESDE) else 1e-3
    t = time_grid(sde, steps, name, eps)
    assert t.dtype == torch.float64 and t.shape == (steps + 1,)
    assert float(t[0]) == sde.T and float(t[-1]) == eps
    assert bool((t[1:] < t[:-1]).all())


def test_uniform_and_quadratic_grids_are_affine_in_t_and_sqrt_t(sde):
    n, eps = 13, 1e-3
    t = time_grid(sde, n, "uniform", eps)
    torch.testing.assert_close(t.diff(), torch.full((n,), (eps - sde.T) / n, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    r = time_grid(sde, n, "quadratic", eps).sqrt()
    torch.testing.assert_close(
        r.diff(), torch.full((n,), (math.sqrt(eps) - math.sqrt(sde.T)) / n, dtype=torch.float64), rtol=1e-10, atol=1e-13
    )


def test_log_snr_grid_has_equal_log_snr_steps(sde):
    """lambda(t_i) = lambda(T) + i (lambda(eps) - lambda(T)) / n, read back through the SDE's own log_snr."""
    n, eps = 20, 1e-3
    lam = sde.log_snr(time_grid(sde, n, "log_snr", eps))
    h = lam.diff()
    torch.testing.assert_close(h, torch.full_like(h, float(lam[-1] - lam[0]) / n), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_grid_is_affine_in_sigma_to_the_one_over_rho(sde, rho):
    """sigma_i^(1/rho) interpolates linearly between sigma(T)^(1/rho) and sigma(eps)^(1/rho) (Karras et al. 2022, eq. 5)."""
    n, eps = 18, 1e-3
    t = time_grid(sde, n, KarrasGrid(rho), eps)
    s = _sigma(sde, t) ** (1.0 / rho)
    expected = torch.linspace(float(s[0]), float(s[-1]), n + 1, dtype=torch.float64)
    torch.testing.assert_close(s, expected, rtol=1e-8, atol=0.0)


@pytest.mark.parametrize("rho", [1e-3, 0.5, 7.0, 1e4])
def test_karras_grid_is_eq_5_to_float64_rounding_for_any_rho(rho):
    """Against eq. 5 evaluated in 60-digit decimal arithmetic on the VE-SDE (t = log(sigma / sigma_min) /
    log(sigma_max / sigma_min)): relative error below 1e-13 from rho = 1e-3, where sigma_max^(1/rho) = 50^1000
    overflows float64, to rho = 1e4, where interpolating sigma^(1/rho) = 1 + O(1e-4) between its ends loses digits."""
    n, eps = 8, 1e-3
    sde = sds.VESDE(0.01, 50.0)
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        D = decimal.Decimal
        lo, hi, r = D(0.01), D(50.0), 1 / D(rho)
        s_max, s_min = hi, lo * (hi / lo) ** D(eps)
        a, b = s_max.ln() * r, s_min.ln() * r  # log sigma^(1/rho) at the ends
        # log sigma_i; the last is sigma_min itself (at rho = 1e-3 the difference of the ends is 60 digits of e^3912)
        sigma = [(a.exp() + D(i) / n * (b.exp() - a.exp())).ln() / r for i in range(n)] + [s_min.ln()]
        exact = [float((s - lo.ln()) / (hi / lo).ln()) for s in sigma]
    torch.testing.assert_close(time_grid(sde, n, KarrasGrid(rho), eps), torch.tensor(exact, dtype=torch.float64),
                               rtol=1e-13, atol=0.0)


def test_karras_grid_collapses_onto_sigma_max_as_rho_goes_to_zero():
    """log sigma_i = log sigma_max + rho log(1 + (i/n) ((sigma_min / sigma_max)^(1/rho) - 1)) -> log sigma_max for
    i < n: no geometric limit (that is rho -> inf) but every interior node at T. At rho = 1e-6 the first step is
    still representable, log(sigma_0 / sigma_1) = -1e-6 log(1 - 1/n); at rho = 1e-300 float64 cannot separate the
    nodes and the grid says so, naming rho."""
    sde = sds.VESDE(0.01, 50.0)
    n, rho = 4, 1e-6
    t = time_grid(sde, n, KarrasGrid(rho), 1e-3)
    log_ratio = math.log(50.0 / 0.01)
    expected = [1.0 + rho * math.log1p(-i / n) / log_ratio for i in range(n)]  # sigma_min / sigma_max term ~ e^-8e6
    torch.testing.assert_close(t[:-1], torch.tensor(expected, dtype=torch.float64), rtol=0.0, atol=1e-15)
    with pytest.raises(ValueError, match=r"KarrasGrid\(rho=1e-300\) gives repeated times.*larger rho"):
        time_grid(sde, n, KarrasGrid(1e-300), 1e-3)


def test_karras_grid_concentrates_steps_at_low_noise_as_rho_grows(sde):
    """The first step from eps (in log sigma) shrinks as rho grows: the grid moves its nodes towards sigma_min."""
    n, eps = 10, 1e-3
    last = [float(torch.log(_sigma(sde, time_grid(sde, n, KarrasGrid(rho), eps)[-2:])).diff().abs()) for rho in (1, 3, 7, 20)]
    assert all(a > b for a, b in zip(last, last[1:])), last


@settings(max_examples=40, deadline=None)
@given(
    sde_name=st.sampled_from(list(SDES)),
    name=st.sampled_from(list(GRIDS)),
    steps=st.integers(1, 300),
    log_eps=st.floats(-5.0, -0.5),
)
def test_every_grid_is_valid_for_any_steps_and_eps(sde_name, name, steps, log_eps):
    sde = SDES[sde_name]()
    eps = 10.0**log_eps
    t = time_grid(sde, steps, name, eps)
    check_grid(t, sde, steps, eps)  # raises when the grid is not T > ... > eps


def test_a_user_grid_object_is_accepted_and_checked(sde):
    class Reversed:
        def __call__(self, sde, steps, eps):
            return torch.linspace(eps, sde.T, steps + 1, dtype=torch.float64)

    class Uniform:
        def __call__(self, sde, steps, eps):
            return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)

    torch.testing.assert_close(time_grid(sde, 5, Uniform(), 1e-3), time_grid(sde, 5, "uniform", 1e-3))
    with pytest.raises(ValueError, match="from T"):
        time_grid(sde, 5, Reversed(), 1e-3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 2.5}, TypeError, "steps"),
        ({"grid": "cosine"}, ValueError, "grid must be one of"),
        ({"grid": 3}, TypeError, "grid"),
        ({"eps": 0.0}, ValueError, "eps"),
        ({"eps": 1.0}, ValueError, "eps"),
    ],
)
def test_time_grid_rejects_bad_input_naming_the_argument(kwargs, error, match):
    args = {"steps": 4, "grid": "karras", "eps": 1e-3, **kwargs}
    with pytest.raises(error, match=match):
        time_grid(sds.VPSDE(), args["steps"], args["grid"], args["eps"])
    with pytest.raises(TypeError, match="sde"):
        time_grid("VP", 4)
    with pytest.raises(ValueError, match="rho"):
        KarrasGrid(rho=0.0)


def test_a_grid_class_instead_of_an_instance_is_rejected_with_the_fix():
    with pytest.raises(TypeError, match=r"got the class KarrasGrid; pass an instance, e\.g\. grid=KarrasGrid\(\)"):
        time_grid(sds.VPSDE(), 4, KarrasGrid)


@pytest.mark.parametrize("name", ["karras", "log_snr"])
def test_an_eps_whose_log_snr_is_infinite_is_rejected_naming_eps(name):
    """VP: std(eps)^2 = 1 - exp(-int beta) is 0 in float64 at eps = 1e-323, its log-SNR +inf: the grids placed in
    sigma or the log-SNR cannot end there, and say that eps is too small (not 'non-finite times')."""
    t = torch.tensor([1e-323], dtype=torch.float64)
    assert float(sds.VPSDE().log_snr(t)) == math.inf
    with pytest.raises(ValueError, match=r"eps=9\.88131e-324 is too small for VPSDE: its log-SNR at eps is inf"):
        time_grid(sds.VPSDE(), 4, name, 1e-323)
