"""Tsitouras' 5(4) Runge–Kutta pair, run by torchdiffeq as the method 'tsit5'.

Ch. Tsitouras (2011), "Runge–Kutta pairs of order 5(4) satisfying only the first column simplifying
assumption", Computers & Mathematics with Applications 62(2), 770–775. Like Dormand–Prince 5(4) it has seven
stages with the last one first-same-as-last, so a step costs six new evaluations. On the likelihood problems of
bench/likelihood.py, where delta_logp is a quadrature along the path and Tsitouras' error estimate is the more
conservative one for it, it reaches the same accuracy with 4–20 % fewer evaluations than dopri5
(docs/theory/likelihood.md#solver); for sampling the two are within 10 %. It is sdescore's default adaptive method
(`sdescore.flow.DEFAULT_METHOD`) because torchdiffeq runs it with sdescore's cheaper step (`sdescore._rk`).

torchdiffeq (0.2.x) has no public hook for a new tableau. Its own adaptive solvers are subclasses of
`RKAdaptiveStepsizeODESolver` that set a `_ButcherTableau`, an order and the weights `mid` of the solution at
the half step, and `odeint` looks methods up in the table `SOLVERS`; `register` does exactly that, with the step
of `sdescore._rk.fast_step`, so the step control, the interpolation, the tuple states and the `step_t` option are
torchdiffeq's own and only the arithmetic of a step is sdescore's. If a torchdiffeq
release moves these internals, `register` returns False and 'tsit5' is simply not offered (`ADAPTIVE_METHODS`
in sdescore.flow lists what is).

`mid`: the weights b(1/2) of a continuous extension of order 4 at theta = 1/2, i.e. y(t0 + h/2) =
y0 + h sum_i b_i(1/2) k_i + O(h^5). The eight order conditions of order 4 at theta = 1/2 have a one-parameter
family of solutions over the seven stages; `_MID` is its minimum-norm member, computed below from the tableau
(tests/test_tsit5.py checks the conditions and the accuracy of the dense output).
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from ._rk import fast_step

__all__ = ["TSIT5_A", "TSIT5_C", "TSIT5_B", "TSIT5_BTILDE", "order_conditions", "register"]

# nodes c_2..c_7 and the rows a_{i,1..i-1} (i = 2..7; the last row is b: FSAL)
TSIT5_C = (0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
TSIT5_A = (
    (0.161,),
    (-0.008480655492356992, 0.3354806554923570),
    (2.8971530571054944, -6.359448489975075, 4.362295432869581),
    (5.32586482843926, -11.74888356406283, 7.495539342889836, -0.09249506636175525),
    (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.07158497328140100, -0.02826905039406838),
    (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774),
)
TSIT5_B = TSIT5_A[-1] + (0.0,)
# b_hat - b: the embedded fourth-order weights minus the fifth-order ones (OrdinaryDiffEq's btilde; Tsitouras'
# b_hat ends in b_hat_7 = 1/66, where b_7 = 0). torchdiffeq's own tableaux hold b - b_hat as c_error; the error
# estimate's norm does not see the sign.
TSIT5_BTILDE = (
    -0.00178001105222577714,
    -0.0008164344596567469,
    0.007880878010261995,
    -0.1447110071732629,
    0.5823571654525552,
    -0.45808210592918697,
    1.0 / 66.0,
)


def _stage_matrix() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((7, 7))
    for i, row in enumerate(TSIT5_A):
        a[i + 1, : len(row)] = row
    return a, np.concatenate([[0.0], TSIT5_C])


def _trees(order: int) -> list[tuple[np.ndarray, int, float]]:
    """The Butcher trees up to `order` (<= 5) of the tsit5 stages: (elementary weight Phi over the stages, |t|, gamma(t))."""
    a, c = _stage_matrix()
    ac, ac2, aac = a @ c, a @ c**2, a @ (a @ c)
    trees = [(np.ones(7), 1, 1), (c, 2, 2), (c**2, 3, 3), (ac, 3, 6), (c**3, 4, 4), (c * ac, 4, 8), (ac2, 4, 12), (aac, 4, 24)]
    if order >= 5:
        trees += [
            (c**4, 5, 5), (c**2 * ac, 5, 10), (c * ac2, 5, 15), (c * aac, 5, 30), (ac * ac, 5, 20),
            (a @ c**3, 5, 20), (a @ (c * ac), 5, 40), (a @ ac2, 5, 60), (a @ aac, 5, 120),
        ]
    return [t for t in trees if t[1] <= order]


def order_conditions(weights: np.ndarray, theta: float = 1.0, order: int = 4) -> np.ndarray:
    """Residuals of the Runge–Kutta order conditions (Butcher trees up to `order` <= 5) for weights b at theta.

    sum b = theta, sum b c = theta^2/2, ..., each tree t with density gamma(t): sum b Phi(t) = theta^|t| / gamma(t).
    """
    return np.array([weights @ phi - theta**n / gamma for phi, n, gamma in _trees(order)])


def _mid() -> np.ndarray:
    """The minimum-norm weights b(1/2) that satisfy every order-4 condition at theta = 1/2."""
    trees = _trees(4)
    phis = np.array([phi for phi, _, _ in trees])
    rhs = np.array([0.5**n / gamma for _, n, gamma in trees])
    mid, *_ = np.linalg.lstsq(phis, rhs, rcond=None)
    return mid


_MID = _mid()


def register() -> bool:
    """Add 'tsit5' to torchdiffeq's solver table; True if it is (or already was) available."""
    try:
        odeint_module = importlib.import_module("torchdiffeq._impl.odeint")
        rk_common = importlib.import_module("torchdiffeq._impl.rk_common")
        solvers = odeint_module.SOLVERS
        base, tableau_type = rk_common.RKAdaptiveStepsizeODESolver, rk_common._ButcherTableau
    except (ImportError, AttributeError):
        return False
    if "tsit5" in solvers:
        return True
    f64 = dict(dtype=torch.float64)
    tableau = tableau_type(
        alpha=torch.tensor(TSIT5_C, **f64),
        beta=[torch.tensor(row, **f64) for row in TSIT5_A],
        c_sol=torch.tensor(TSIT5_B, **f64),
        c_error=torch.tensor(TSIT5_BTILDE, **f64),
    )
    tsit5 = type(
        "Tsit5Solver", (base,), {"order": 5, "tableau": tableau, "mid": torch.tensor(_MID, **f64), "__module__": __name__}
    )
    solvers["tsit5"] = fast_step(tsit5)
    return True
