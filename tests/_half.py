"""Half-precision test cases shared by the samplers' tests: the SDEs whose coefficients exceed float16's range, an
exact score of x's precision, and the bound on a half-precision linear chain's distance to its float64 run."""

from __future__ import annotations

import pytest
import torch

import sdescore as sds

F64 = torch.float64

HALF_SDES = {
    "VE(1e-3,1000)": lambda: sds.VESDE(sigma_min=1e-3, sigma_max=1000.0),  # sigma_max / sigma_min > 65504
    # NCSN++'s CIFAR-10 levels: g(1)^2 = 3e6 > 65504, 1 / sigma_max^2 subnormal in float16
    "VE(0.01,378)": lambda: sds.VESDE(sigma_min=0.01, sigma_max=378.0),
    # alpha(1) = 4.4e-5 subnormal in float16, g^2 / std^2 = 1e5 at t = 1e-5
    "VP": lambda: sds.VPSDE(beta_min=0.1, beta_max=20.0),
    "subVP": lambda: sds.SubVPSDE(beta_min=0.1, beta_max=20.0),
}
HALF = pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])


def gaussian_score(sde, seen=None):
    """The exact score -x / (alpha^2 + std^2) of N(0, I) data, computed in float64 at (x, t) as given and returned in
    x's dtype: an exact network of x's precision. `seen` collects the dtypes of the (x, t) it was called with."""
    def score(x, t):
        if seen is not None:
            seen.add((x.dtype, t.dtype))
        alpha, std = sde.kernel(t.double())
        return (-x.double() / (alpha**2 + std**2)[:, None]).to(x.dtype)
    return score


def rounding_bound(dtype, c, G2, v0=1.0):
    """A bound M on E|x_half - x_64|^2 at the end of the linear chain x <- c_k x + G_k z (k = 0..n-1) from x_0 with
    E[x_0^2] = v0, run once with each state rounded to `dtype` and once in float64, both with the same noise.

    The half-precision state is rounded from y_k = c_k x_k + G_k z_k; z_k spreads y_k over many ulps, so the
    rounding error r_k is uniform on [-ulp / 2, ulp / 2] and independent of the past, with E[r_k^2] = ulp^2 / 12
    <= eps^2 E[y_k^2] / 12 (ulp(y) <= eps |y| for a normal number; the float32 arithmetic before the rounding adds
    ~1e-14, and a last step without noise, y = c x with 1 - c <= 5e-5, rounds back to x, an error below
    eps |y| / sqrt(12) too). The difference d of the two chains obeys d <- c_k d + r_k, so
    E[d_n^2] = sum_k (prod_{j>k} c_j^2) E[r_k^2] <= eps^2 / 12 sum_k (prod_{j>k} c_j^2) E[y_k^2], with
    E[y_k^2] = v_{k+1} from v_{k+1} = c_k^2 v_k + G_k^2 (the float64 chain's second moment; the half chain's adds
    E[d^2] <= M, a relative 0.5 % at most here).
    """
    c2, G2 = torch.as_tensor(c, dtype=F64) ** 2, torch.as_tensor(G2, dtype=F64)
    y2, v = [], v0
    for c2_k, G2_k in zip(c2.tolist(), G2.tolist()):
        v = c2_k * v + G2_k
        y2.append(v)
    later = torch.cat([torch.cumprod(c2.flip(0), 0).flip(0)[1:], torch.ones(1, dtype=F64)])  # prod_{j>k} c_j^2
    return torch.finfo(dtype).eps ** 2 / 12 * float((later * torch.tensor(y2, dtype=F64)).sum())
