"""Time grids: each places its nodes by its defining function of time, from T down to eps, for every SDE."""

from __future__ import annotations

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
