"""Time grids for the fixed-step samplers: T = t_0 > t_1 > ... > t_n = eps, in float64.

A grid is an object, callable as `grid(sde, steps, eps) -> Tensor (steps + 1,)`. The spacings that matter
for score-based samplers are not uniform in t: the error of a step grows with the change of log-SNR it
spans, so good grids are dense where the log-SNR moves fast (near t = eps). Each grid here places its
nodes by one function of time and maps them back to t through the SDE (`sde.kernel`, `sde.log_snr`,
`sde.t_from_log_snr`), so it works for any SDE that answers those.

Notation: lambda(t) = log(alpha(t)^2 / std(t)^2) is the SDE's log-SNR, sigma(t) = std(t) / alpha(t) =
exp(-lambda / 2) the noise level of the scaled state x / alpha (Karras et al. 2022, section 4).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from ._checks import check_choice, check_eps, check_int, check_real
from .sde import SDE

__all__ = ["TimeGrid", "UniformGrid", "QuadraticGrid", "KarrasGrid", "LogSNRGrid", "GRIDS", "time_grid"]


class TimeGrid(Protocol):
    """A rule placing steps + 1 nodes from T down to eps: `grid(sde, steps, eps)` -> float64 tensor (steps + 1,)."""

    def __call__(self, sde: SDE, steps: int, eps: float) -> Tensor: ...


def _log_snr_at(sde: SDE, t: float) -> float:
    return float(sde.log_snr(torch.tensor([t], dtype=torch.float64)))


def eps_too_small(sde: SDE, eps: float) -> ValueError:
    """The error for an eps at which std(eps) is 0 in float64, so that the log-SNR there is infinite."""
    return ValueError(
        f"eps={eps:g} is too small for {type(sde).__name__}: its log-SNR at eps is inf in float64 (std(eps) is 0: the "
        "VP and sub-VP SDEs' underflows for eps below 5e-323), so no grid or step reaches it; expected an eps with "
        "std(eps) > 0; take a larger eps."
    )


def _log_snr_ends(sde: SDE, eps: float) -> tuple[float, float]:
    """(lambda(T), lambda(eps)), both finite: the grids placed by the log-SNR or sigma need them."""
    lam_T, lam_eps = _log_snr_at(sde, sde.T), _log_snr_at(sde, eps)
    if not math.isfinite(lam_eps):
        raise eps_too_small(sde, eps)
    if not math.isfinite(lam_T):
        raise ValueError(
            f"{type(sde).__name__}'s log-SNR at T={sde.T} is {lam_T}: the Karras and log-SNR grids need it finite; "
            "use the 'uniform' or 'quadratic' grid."
        )
    return lam_T, lam_eps


def _from_log_snr(sde: SDE, log_snr: Tensor, eps: float) -> Tensor:
    """Map log-SNR nodes back to time, pinning the end points exactly (the inverse is exact only to rounding)."""
    t = sde.t_from_log_snr(log_snr).to(torch.float64)
    t[0], t[-1] = sde.T, eps
    return t


class UniformGrid:
    """t_i = T + i (eps - T) / n: uniform in time (Song et al. 2021, the default of score_sde)."""

    def __repr__(self) -> str:
        return "UniformGrid()"

    def __call__(self, sde: SDE, steps: int, eps: float) -> Tensor:
        t = torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)
        t[-1] = eps
        return t


class QuadraticGrid:
    """t_i = (sqrt(T) + i (sqrt(eps) - sqrt(T)) / n)^2: uniform in sqrt(t), dense near eps.

    The 'time_quadratic' grid of Lu et al. (2022a), section 3.4 (and DDIM's quadratic skip, Song et al. 2021a).
    """

    def __repr__(self) -> str:
        return "QuadraticGrid()"

    def __call__(self, sde: SDE, steps: int, eps: float) -> Tensor:
        r = torch.linspace(math.sqrt(sde.T), math.sqrt(eps), steps + 1, dtype=torch.float64)
        t = r * r
        t[0], t[-1] = sde.T, eps
        return t


class KarrasGrid:
    """sigma_i = (sigma_max^(1/rho) + i/n (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then t_i = t(sigma_i).

    Karras et al. (2022), eq. 5 with rho = 7, written in the noise level sigma = std / alpha of any SDE with
    sigma_max = sigma(T), sigma_min = sigma(eps); t is recovered through lambda = -2 log sigma. Computed as

        log sigma_i = log sigma_max + rho log(1 + (i/n) ((sigma_min / sigma_max)^(1/rho) - 1)),

    the same numbers without sigma^(1/rho), which overflows float64 for small rho (sigma_max = 50, rho = 1e-3).
    Larger rho concentrates the steps near sigma_min; rho = 1 is uniform in sigma, rho -> inf uniform in log sigma
    (the geometric grid: rho log(1 - (i/n) L / rho + ...) -> -(i/n) L with L = log(sigma_max / sigma_min)). The
    limit rho -> 0 is no grid: every interior node tends to sigma_max (rho log(1 - i/n) -> 0) and the last step
    spans the whole range; where float64 can no longer tell those nodes from T the grid raises.
    """

    def __init__(self, rho: float = 7.0):
        self.rho = check_real("rho", rho, positive=True)

    def __repr__(self) -> str:
        return f"KarrasGrid(rho={self.rho})"

    def __call__(self, sde: SDE, steps: int, eps: float) -> Tensor:
        # log sigma = -lambda / 2; interpolate sigma^(1/rho) between its end values, relative to sigma_max^(1/rho).
        lam_T, lam_eps = _log_snr_ends(sde, eps)
        log_sig_max, log_sig_min = -0.5 * lam_T, -0.5 * lam_eps
        ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        log_sigma = log_sig_max + self.rho * torch.log1p(ramp * math.expm1((log_sig_min - log_sig_max) / self.rho))
        t = _from_log_snr(sde, -2.0 * log_sigma, eps)
        if steps > 1 and not bool((t[1:] < t[:-1]).all()):
            raise ValueError(
                f"KarrasGrid(rho={self.rho}) gives repeated times for steps={steps}: as rho -> 0 its interior nodes "
                "tend to sigma_max = sigma(T), and at this rho float64 no longer separates them from T (or from each "
                "other); take a larger rho (Karras et al. use 7) or fewer steps."
            )
        return t


class LogSNRGrid:
    """lambda_i = lambda(T) + i/n (lambda(eps) - lambda(T)), then t_i = t(lambda_i): uniform in log-SNR.

    The 'logSNR' grid of Lu et al. (2022a), section 3.4: every step of an exponential integrator then spans
    the same h = lambda_{i+1} - lambda_i, the variable in which its local error is O(h^{k+1}).
    """

    def __repr__(self) -> str:
        return "LogSNRGrid()"

    def __call__(self, sde: SDE, steps: int, eps: float) -> Tensor:
        lam = torch.linspace(*_log_snr_ends(sde, eps), steps + 1, dtype=torch.float64)
        return _from_log_snr(sde, lam, eps)


GRIDS: dict[str, TimeGrid] = {
    "uniform": UniformGrid(),
    "quadratic": QuadraticGrid(),
    "karras": KarrasGrid(),
    "log_snr": LogSNRGrid(),
}


def time_grid(sde: SDE, steps: int, grid: str | TimeGrid = "karras", eps: float = 1e-3) -> Tensor:
    """The descending float64 grid T = t_0 > ... > t_steps = eps of a named rule (GRIDS) or a TimeGrid object.

    Args:
        sde: the SDE, whose log-SNR places the Karras and log-SNR grids.
        steps: n >= 1, the number of intervals.
        grid: a name in GRIDS ('uniform', 'quadratic', 'karras', 'log_snr') or a callable grid(sde, steps, eps).
        eps: the final time, in (0, T).
    Returns:
        a float64 tensor of shape (steps + 1,), strictly decreasing, from T to eps.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")
    steps = check_int("steps", steps, minimum=1)
    eps = check_eps(eps, sde.T)
    if isinstance(grid, type):
        raise TypeError(
            f"grid must be a name in {sorted(GRIDS)} or a grid object, got the class {grid.__name__}; pass an "
            f"instance, e.g. grid={grid.__name__}()."
        )
    rule = check_choice("grid", grid, GRIDS)
    if not callable(rule):
        raise TypeError(f"grid must be a name in {sorted(GRIDS)} or a callable grid(sde, steps, eps), got {type(grid).__name__}.")
    return check_grid(rule(sde, steps, eps), sde, steps, eps, name=repr(rule))


def check_grid(t: object, sde: SDE, steps: int, eps: float, *, name: str = "grid") -> Tensor:
    """A float64 (steps + 1,) tensor, strictly decreasing from T to eps; what a user's grid must return."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor of shape ({steps + 1},), got {type(t).__name__}.")
    if t.shape != (steps + 1,):
        raise ValueError(f"{name} must return shape ({steps + 1},) for steps={steps}, got shape {tuple(t.shape)}.")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} returned non-finite times.")
    if abs(float(t[0]) - sde.T) > 1e-12 or abs(float(t[-1]) - eps) > 1e-12:
        raise ValueError(f"{name} must run from T={sde.T} to eps={eps}, got {float(t[0])} to {float(t[-1])}.")
    if steps > 0 and not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"{name} must be strictly decreasing; too many steps for float64, or a wrong rule.")
    return t
