"""Tsitouras' 5(4) pair ('tsit5'), the default method of log_likelihood: its tableau and its run in torchdiffeq."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchdiffeq

import sdescore as sds
from sdescore import _tsit5
from sdescore.flow import ADAPTIVE_METHODS
from validation import single_gaussian


def test_tsit5_is_offered_by_torchdiffeq_and_sdescore():
    assert _tsit5.register() and "tsit5" in ADAPTIVE_METHODS


# Tsitouras (2011): the embedded fourth-order weights b_hat, which TSIT5_BTILDE = b_hat - b encodes
TSITOURAS_B_HAT = (
    0.09468075576583945, 0.009183565540343254, 0.4877705284247616, 1.234297566930479, -2.7077123499835256,
    1.866628418170587, 1.0 / 66.0,
)


def test_btilde_is_the_embedded_weights_minus_the_fifth_order_ones():
    """TSIT5_BTILDE = b_hat - b with Tsitouras' b_hat (b_hat_7 = 1/66, where b_7 = 0), not b - b_hat: both are
    order-4 weights (any affine combination of b and b_hat is), so only the published values pin the sign."""
    b, btilde = np.array(_tsit5.TSIT5_B), np.array(_tsit5.TSIT5_BTILDE)
    b_hat = b + btilde
    assert np.abs(b_hat - np.array(TSITOURAS_B_HAT)).max() < 1e-15
    assert b[-1] == 0.0 and b_hat[-1] == 1.0 / 66.0


def test_the_tableau_satisfies_the_order_conditions():
    """b: order 5 (all 17 trees); b_hat = b + btilde: order 4 but not 5 (so the estimate is the h^5 term);
    the half-step weights mid: order 4 at theta = 1/2; rows sum to the nodes; first same as last."""
    a, c = _tsit5._stage_matrix()
    b, btilde = np.array(_tsit5.TSIT5_B), np.array(_tsit5.TSIT5_BTILDE)
    assert np.abs(a.sum(1) - c).max() < 1e-14
    assert np.allclose(a[-1], b) and c[-1] == 1.0
    assert np.abs(_tsit5.order_conditions(b, 1.0, order=5)).max() < 1e-13
    b_hat = b + btilde
    assert np.abs(_tsit5.order_conditions(b_hat, 1.0, order=4)).max() < 1e-13
    assert np.abs(_tsit5.order_conditions(b_hat, 1.0, order=5)).max() > 1e-4
    assert np.abs(_tsit5.order_conditions(_tsit5._MID, 0.5, order=4)).max() < 1e-13


def _rk_fixed(f, y0, t1, steps, weights):
    """Fixed-step explicit RK with the tsit5 stages and the given output weights (b or b_hat), in float64."""
    a, c = _tsit5._stage_matrix()
    h, y, t = t1 / steps, np.array(y0, dtype=float), 0.0
    for _ in range(steps):
        k = []
        for i in range(7):
            k.append(f(t + c[i] * h, y + h * sum(a[i, j] * k[j] for j in range(i))))
        y = y + h * sum(w * kk for w, kk in zip(weights, k))
        t += h
    return y


def test_the_pair_converges_at_orders_five_and_four():
    """y' = y cos t, y(0) = 1: y(2) = exp(sin 2); fitted slopes of the global error in the step count.

    Tsitouras chose the pair to make the fifth-order solution's leading error coefficients small, so between 8
    and 64 steps the h^6 terms still show and its slope comes out between 5 and 6 (5.7 here); the embedded
    solution's is 4.0."""
    f = lambda t, y: y * math.cos(t)  # noqa: E731
    exact = math.exp(math.sin(2.0))
    steps = np.array([8, 16, 32, 64])
    b, btilde = np.array(_tsit5.TSIT5_B), np.array(_tsit5.TSIT5_BTILDE)
    for weights, lo, hi in ((b, 4.8, 6.0), (b + btilde, 3.7, 4.4)):
        errors = [abs(float(_rk_fixed(f, [1.0], 2.0, int(n), weights)[0]) - exact) for n in steps]
        slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
        assert lo < slope < hi, (errors, slope)


def test_torchdiffeq_runs_it_to_the_tolerance_with_accurate_dense_output():
    """A nonlinear system with a closed form, the outputs at 21 times (20 of them interpolated through mid): the
    error falls with the tolerance and stays within a small multiple of it at the interpolated times."""
    # a rotation at angular speed 2 r^2; r^2 is conserved, so from (1, 0): (cos 2t, sin 2t)
    def f(t, y):
        return torch.stack([-2.0 * y[1], 2.0 * y[0]]) * (y[0] ** 2 + y[1] ** 2)

    t = torch.linspace(0.0, 3.0, 21, dtype=torch.float64)
    exact = torch.stack([torch.cos(2.0 * t), torch.sin(2.0 * t)], 1)
    errs = {}
    for tol in (1e-5, 1e-8):
        y = torchdiffeq.odeint(f, torch.tensor([1.0, 0.0], dtype=torch.float64), t, method="tsit5", rtol=tol, atol=tol)
        errs[tol] = float((y - exact).abs().max())
        assert errs[tol] < 100 * tol, errs
    assert errs[1e-8] < errs[1e-5] / 30, errs


def test_the_probability_flow_with_tsit5_matches_the_closed_form():
    target = single_gaussian()
    sde = sds.VPSDE()
    ode = sde.probability_flow(target.score_fn(sde))
    x_T = target.marginal(sde, sde.T).sample(256, generator=torch.Generator().manual_seed(0))
    r = ode.sample(x_T, method="tsit5", rtol=1e-8, atol=1e-8, eps=1e-3)
    assert float((r.x - target.ode_solution(sde, x_T, sde.T, 1e-3)).abs().max()) < 1e-5


@pytest.mark.parametrize("name", ["VP", "VE"])
def test_log_likelihood_with_tsit5_and_dopri5_agree_with_the_analytic_density(name):
    """The default (tsit5) and dopri5 at a tight tolerance: both at the closed form to 1e-6 nats."""
    sde = {"VP": sds.VPSDE(), "VE": sds.VESDE()}[name]
    target = single_gaussian()
    x = target.marginal(sde, 1e-3).sample(32, generator=torch.Generator().manual_seed(1))
    truth = target.marginal(sde, 1e-3).log_prob(x)
    prior = target.marginal(sde, sde.T).log_prob
    for method in ("tsit5", "dopri5"):
        r = sds.log_likelihood(sde, target.score_fn(sde), x, method=method, rtol=1e-9, atol=1e-9, eps=1e-3,
                               prior_logp=prior)
        assert float((r.logp - truth).abs().max()) < 1e-6, method
