"""validation.symbolic: the kernels derived from the moment ODEs, and the identities of score-based modelling, in sympy.

The quick `symbolic` check (tests/test_validation_checks.py) covers the built-in kernels against the paper's closed
forms and the torch code, and the identities for a generic linear SDE; these tests cover the rest."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from sdescore import SDE, VESDE, VPSDE, SubVPSDE
from validation import symbolic as sym
from validation.mixtures import ncsn_toy

SDES = [VESDE(sigma_min=0.01, sigma_max=50.0), VPSDE(beta_min=0.1, beta_max=20.0), SubVPSDE(beta_min=0.1, beta_max=20.0)]
IDS = ["VE", "VP", "subVP"]


def test_ve_kernel_starts_at_sigma_min_squared_from_clean_data():
    """The SMLD convention: var(0) = sigma_min^2. Started at 0 instead, the moment ODE gives sigma^2 - sigma_min^2,
    which disagrees with sdescore's VE kernel."""
    sde = VESDE(sigma_min=0.1, sigma_max=50.0)
    sch = sym.schedule(sde)
    assert sch.var0 == sp.Symbol("sigma_min", positive=True) ** 2
    from_zero = sym.derive_kernel(sch.f, sch.g, var0=0)
    assert sym.symbolically_equal(from_zero.variance, sch.variance - sch.var0)
    assert sym.kernel_error(sde, from_zero, sch.params) > 1e-3
    assert sym.kernel_error(sde, sch.derive(), sch.params) < 1e-12


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_identities_hold_for_each_builtin_schedule(sde):
    sch = sym.schedule(sde)
    kernel = sch.derive()
    for fn in (sym.fokker_planck_residual, sym.probability_flow_residual, sym.reverse_sde_residual):
        assert sym.vanishes(fn(kernel), sch.params), fn.__name__


def test_residuals_detect_wrong_drifts_and_kernels():
    """The residuals are not vacuous: a wrong variance, or the PF drift with g^2 score instead of g^2 score / 2, leave
    a non-zero residual. The wrong drift's is the one its extra term -g^2 score / 2 makes, -(g^2 / 2) p'' / p =
    -(g^2 / 2) ((x - m)^2 / V^2 - 1 / V), a polynomial in x that is not 0: shown equal to it, not merely unequal
    to the literal 0 (which sympy's != tests)."""
    x, m0, s0 = sp.Symbol("x", real=True), sp.Symbol("m0", real=True), sp.Symbol("s0", positive=True)
    f, g, a, v, rules = sym._generic()
    V = a**2 * s0**2 + v
    l = sym._log_gaussian(x, a * m0, V)
    score = sp.diff(l, x)
    wrong_pf = sym._close(sym._continuity(l, x, f * x - g**2 * score, 0), x, rules)
    extra = -(g**2 / 2) * ((x - a * m0) ** 2 / V**2 - 1 / V)
    assert sp.simplify(wrong_pf - extra) == 0
    assert sp.simplify(sp.diff(extra, x, 2) * V**2) == -(g**2)  # its x^2 coefficient, -g^2 / (2 V^2), is not 0
    sch = sym.schedule(VPSDE())
    k = sch.derive()
    doubled = sym.SymbolicKernel(f=k.f, g=k.g, var0=k.var0, alpha=k.alpha, variance=2 * k.variance)
    assert not sym.vanishes(sym.fokker_planck_residual(doubled), sch.params)


class _WrongStd:
    """Mixin: the kernel's std multiplied by 1.5 (alpha right)."""

    def kernel(self, time):
        alpha, std = super().kernel(time)
        return alpha, 1.5 * std  # marginal_prob goes through kernel


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_kernel_error_sees_a_wrong_std_even_where_the_std_vanishes(sde):
    """std(0) = 0 for VP and sub-VP: the comparison must not turn into 0/0 and drop out. The right kernel is within
    1e-12 (the closed form evaluated at 30 digits), a std 1.5 x too large is 0.5 off."""
    wrong = type("Wrong" + type(sde).__name__, (_WrongStd, type(sde)), {})(**_constants(sde))
    assert sym.kernel_error(sde) < 1e-12
    assert sym.kernel_error(wrong, sym.schedule(sde).derive(), sym.schedule(sde).params) == pytest.approx(0.5, abs=1e-9)


def _constants(sde):
    if isinstance(sde, VESDE):
        return {"sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max}
    return {"beta_min": sde.beta_min, "beta_max": sde.beta_max}


def test_kernel_error_of_a_nan_kernel_is_nan():
    class NaNStd(VPSDE):
        def kernel(self, time):
            alpha, std = super().kernel(time)
            return alpha, std * float("nan")

    sch = sym.schedule(VPSDE())
    assert math.isnan(sym.kernel_error(NaNStd(), sch.derive(), sch.params))


def test_dsm_target_is_the_kernel_score():
    assert sym.dsm_target_residual() == 0


def test_a_users_schedule_gets_its_closed_form_and_an_sde():
    """dx = -b t x dt + sqrt(2 b t) dw: alpha = exp(-b t^2 / 2), var = 1 - exp(-b t^2), and a working sdescore.SDE."""
    b = sp.Symbol("b", positive=True)
    t = sym.t
    kernel = sym.derive_kernel(-b * t, sp.sqrt(2 * b * t))
    assert sym.symbolically_equal(kernel.alpha, sp.exp(-b * t**2 / 2))
    assert sym.symbolically_equal(kernel.variance, 1 - sp.exp(-b * t**2))
    sde = kernel.to_sde({b: 3.0})
    assert isinstance(sde, SDE)
    times = torch.linspace(0.05, 1.0, 7, dtype=torch.float64)
    alpha, std = sde.kernel(times)
    torch.testing.assert_close(alpha, torch.exp(-1.5 * times**2))
    torch.testing.assert_close(std, torch.sqrt(1 - torch.exp(-3.0 * times**2)))
    torch.testing.assert_close(sde.g(times), torch.sqrt(6.0 * times))
    x = torch.randn(7, 2, dtype=torch.float64)
    torch.testing.assert_close(sde.f(x, times), -3.0 * times[:, None] * x)
    assert sde.drift_is_linear
    torch.testing.assert_close(sde.linear_drift(times), -3.0 * times)
    assert sym.kernel_error(sde, kernel, {b: 3.0}) < 1e-12
    exact = kernel.lambdify({b: 3.0})
    wide = kernel.to_sde({b: 3.0})  # the same schedule with its std 1.5 x too large: std(0) = 0 must not hide it
    wide.kernel = lambda time: (exact(time)[0], 1.5 * exact(time)[1])
    assert sym.kernel_error(wide, kernel, {b: 3.0}) > 0.4
    # the user's SDE plugs into the closed-form mixtures like the built-in ones
    s = ncsn_toy().score_fn(sde)(x, times)
    assert s.shape == x.shape and bool(torch.isfinite(s).all())


def test_the_vp_schedule_through_derive_kernel_reproduces_vpsde():
    sch = sym.schedule(VPSDE())
    user = sym.derive_kernel(sch.f, sch.g).to_sde(sch.params)
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    for a, b in zip(user.kernel(t), VPSDE().kernel(t)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="sdescore.SDE"):
        sym.schedule("vp")

    class Mine(SDE):
        def f(self, x, t):
            return x

        def g(self, t):
            return torch.ones_like(t)

    with pytest.raises(ValueError, match="derive_kernel"):
        sym.schedule(Mine())
    with pytest.raises(TypeError, match="sympy expression"):
        sym.derive_kernel(object(), 1)
    with pytest.raises(ValueError, match="params"):
        sym.derive_kernel(-sp.Symbol("b", positive=True), 1).lambdify()


def test_vanishes_judges_a_zero_by_its_own_rounding_not_an_absolute_threshold():
    """An identically zero expression whose terms are of size e^120 is a zero; a non-zero one of size 1e-22 is not
    (the absolute threshold 1e-20 had both wrong); and the test still sees a plain non-zero value."""
    t = sym.t
    big_zero = (sp.exp(60 * t) + 1) ** 2 - sp.exp(120 * t) - 2 * sp.exp(60 * t) - 1
    assert big_zero != 0 and sym.vanishes(big_zero)
    assert not sym.vanishes(sp.Rational(1, 10**22) * (1 + t))
    assert not sym.vanishes(big_zero + sp.Rational(1, 10**6))
    assert sym.vanishes(sp.sin(t) ** 2 + sp.cos(t) ** 2 - 1)
