"""Gaussian mixtures and their exact laws under any linear SDE: every quantity of score-based modelling in closed form.

For data x0 ~ sum_j w_j N(mu_j, Sigma_j) and a kernel x_t = alpha(t) x0 + std(t) z (any `sdescore.SDE.kernel`),
the law at time t is again a mixture,

    p_t = sum_j w_j N(alpha mu_j, C_j(t)),     C_j(t) = alpha^2 Sigma_j + std^2 I.

With Sigma_j = U_j diag(lam_j) U_j^T computed once, C_j(t) = U_j diag(alpha^2 lam_j + std^2) U_j^T for every t,
so the score, the denoiser and the posterior covariance cost one rotation per component and sample, with a
time of its own for each sample. Given x_t = x, the clean x0 is a mixture of Gaussian posteriors
(Bishop 2006, eq. 2.116; Efron 2011):

    r_j(x)  = w_j N(x; alpha mu_j, C_j) / p_t(x)                      (responsibilities)
    m_j(x)  = mu_j + alpha Sigma_j C_j^{-1} (x - alpha mu_j)          (posterior mean of component j)
    P_j     = Sigma_j - alpha^2 Sigma_j C_j^{-1} Sigma_j = U_j diag(std^2 lam_j / (alpha^2 lam_j + std^2)) U_j^T
    E[x0 | x]   = sum_j r_j m_j                                       (Tweedie: = (x + std^2 score) / alpha)
    Cov[x0 | x] = sum_j r_j [P_j + (m_j - E)(m_j - E)^T]             (= std^2/alpha^2 (I + std^2 Hess log p_t))

Everything is computed in the mixture's dtype (float64 by default) and returned in the dtype of x.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from sdescore._checks import check_int, check_real, value_range
from sdescore.sde import SDE

__all__ = [
    "GaussianMixture",
    "DiffusedMixture",
    "ncsn_toy",
    "ring",
    "random_anisotropic",
    "single_gaussian",
    "TARGETS",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _as_tensor(name: str, value: Any, dtype: torch.dtype, device: torch.device | None) -> Tensor:
    try:
        out = torch.as_tensor(value, dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor or a nested sequence of numbers, got {type(value).__name__}.") from err
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} holds non-finite values (NaN or inf).")
    return out


def _flat(name: str, x: Any, d: int) -> Tensor:
    """x of shape (B, *dims) with prod(dims) = d, as (B, d); a single point (d,) is not a batch."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {d}), got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}.")
    if x.ndim < 2 or math.prod(x.shape[1:]) != d or x.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (batch, *dims) with batch >= 1 and prod(dims) = {d}, the mixture's dimension; got "
            f"shape {tuple(x.shape)}."
        )
    return x.reshape(x.shape[0], d)


def _input_eps(value: Any) -> float:
    """The machine epsilon of the precision `value` arrived in: a float32 or half tensor (or numpy array) keeps its
    rounding after conversion to float64, so symmetry is judged at that precision."""
    dtype = getattr(value, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return torch.finfo(dtype).eps
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        return float(np.finfo(dtype).eps)
    return torch.finfo(torch.float64).eps


def _asymmetry(S: Tensor) -> Tensor:
    """Per matrix of S (..., d, d): max |S - S^T| over max |S| (0 for a zero matrix)."""
    scale = S.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(S.dtype).tiny)
    return (S - S.transpose(-2, -1)).abs().amax(dim=(-2, -1)) / scale


class GaussianMixture:
    """p(x) = sum_j w_j N(x; mu_j, Sigma_j) in any dimension d, with its log-density, score and sampler.

    Args:
        weights: (K,) positive, summing to 1 (to 1e-6; renormalized exactly).
        means: (K, d).
        covs: (K, d, d) full symmetric positive definite covariances, (K, d) diagonal ones (row j is the diagonal of
            Sigma_j), or (K,) isotropic variances (Sigma_j = covs[j] I). The diagonal and isotropic forms skip the
            rotations. When K = d, a (K, d) array that is symmetric positive definite with off-diagonal entries
            could be one shared full covariance as well as K diagonals: it is refused as ambiguous; pass
            `cov.expand(K, d, d)` for the shared covariance, or `torch.diag_embed(covs)` for the diagonals.
        dtype: float64 by default: results are compared with closed forms.
    """

    def __init__(self, weights: Any, means: Any, covs: Any, *, dtype: torch.dtype = torch.float64, device=None):
        if dtype not in (torch.float64, torch.float32):
            raise TypeError(f"dtype must be torch.float64 or torch.float32, got {dtype}.")
        w = _as_tensor("weights", weights, dtype, device)
        mu = _as_tensor("means", means, dtype, device)
        S = _as_tensor("covs", covs, dtype, device)
        if w.ndim != 1 or w.shape[0] == 0:
            raise ValueError(f"weights must have shape (K,), K >= 1, got shape {tuple(w.shape)}.")
        K = w.shape[0]
        if bool((w <= 0).any()):
            raise ValueError(f"weights must be positive, got {w.tolist()}.")
        if abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got sum {float(w.sum()):.8g}; divide them by their sum.")
        if mu.ndim != 2 or mu.shape[0] != K:
            raise ValueError(f"means must have shape (K, d) = ({K}, d) for K = {K} weights, got shape {tuple(mu.shape)}.")
        d = mu.shape[1]
        if d == 0:
            raise ValueError("means must have at least one coordinate, got shape (K, 0).")
        # symmetric up to the rounding of a product such as Q diag Q^T in the precision covs came in (a few d ulps
        # of the largest entry), and never stricter than 1e-10 of it
        sym_tol = max(4.0 * d * _input_eps(covs), 1e-10)
        if S.shape == (K, d, d):
            asym = _asymmetry(S)
            if bool((asym > sym_tol).any()):
                j = int(asym.argmax())
                gap = float((S[j] - S[j].T).abs().max())
                raise ValueError(
                    f"covs must be symmetric; covs[{j}] differs from its transpose by up to {gap:.3g} "
                    f"({float(asym[j]):.3g} of its largest entry, more than rounding: {sym_tol:.3g})."
                )
            lam, U = torch.linalg.eigh(0.5 * (S + S.transpose(1, 2)))
            self.kind = "full"
        elif S.shape == (K, d):
            if (K == d and K > 1 and float(_asymmetry(S)) <= sym_tol and bool((S - torch.diag(torch.diagonal(S))).any())
                    and float(torch.linalg.eigvalsh(S).min()) > 0):
                raise ValueError(
                    f"covs of shape ({K}, {d}) with K = d = {d} is read as {K} diagonal covariances (row j the diagonal "
                    "of Sigma_j), but this one is also a symmetric positive definite matrix with non-zero off-diagonal "
                    "entries, so it may be meant as one full covariance: for one covariance shared by all components "
                    "pass it as shape (K, d, d), e.g. cov[None].expand(K, d, d); for diagonal covariances "
                    "whose rows happen to form such a matrix, pass torch.diag_embed(covs) (shape (K, d, d))."
                )
            lam, U = S.clone(), None
            self.kind = "diagonal"
        elif S.shape == (K,):
            lam, U = S[:, None].expand(K, d).clone(), None
            self.kind = "isotropic"
        else:
            raise ValueError(
                f"covs must have shape (K, d, d) (full), (K, d) (diagonal) or (K,) (isotropic) with K = {K}, d = {d}; "
                f"got shape {tuple(S.shape)}."
            )
        if bool((lam <= 0).any()):
            raise ValueError(f"covs must be positive definite; smallest eigenvalue {float(lam.min()):.3g}.")
        self._set(w / w.sum(), mu, lam, U)

    @classmethod
    def _from_eig(cls, weights: Tensor, means: Tensor, lam: Tensor, U: Tensor | None, kind: str) -> "GaussianMixture":
        self = cls.__new__(cls)
        self.kind = kind
        self._set(weights, means, lam, U)
        return self

    def _set(self, w: Tensor, mu: Tensor, lam: Tensor, U: Tensor | None) -> None:
        self.weights = w
        self.means = mu
        self.eigenvalues = lam  # (K, d): Sigma_j = U_j diag(lam_j) U_j^T
        self.eigenvectors = U  # (K, d, d) or None (axis-aligned)
        self.log_weights = torch.log(w)
        # Isotropic components keep one eigenvalue each, (K, 1), broadcast over the d coordinates.
        self._lam = lam[:, :1] if self.kind == "isotropic" else lam

    # ------------------------------------------------------------------ description
    @property
    def n_components(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def covs(self) -> Tensor:
        """The covariances Sigma_j as a (K, d, d) tensor."""
        if self.eigenvectors is None:
            return torch.diag_embed(self.eigenvalues)
        U = self.eigenvectors
        return U @ torch.diag_embed(self.eigenvalues) @ U.transpose(1, 2)

    def mean(self) -> Tensor:
        """E[x] = sum_j w_j mu_j, shape (d,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x] = sum_j w_j [Sigma_j + (mu_j - m)(mu_j - m)^T], shape (d, d)."""
        dm = self.means - self.mean()
        return torch.einsum("k,kde->de", self.weights, self.covs + dm[:, :, None] * dm[:, None, :])

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, d={self.dim}, covs={self.kind}, dtype={self.dtype})"

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "GaussianMixture":
        """The same mixture with its parameters in another dtype or on another device."""
        U = None if self.eigenvectors is None else self.eigenvectors.to(dtype=dtype, device=device)
        conv = lambda v: v.to(dtype=dtype, device=device)  # noqa: E731
        return GaussianMixture._from_eig(conv(self.weights), conv(self.means), conv(self.eigenvalues), U, self.kind)

    # ------------------------------------------------------------------ core: all components at per-sample (alpha, std)
    def _params(self, device: torch.device):
        if self.means.device == device:
            return self.log_weights, self.means, self._lam, self.eigenvectors
        U = None if self.eigenvectors is None else self.eigenvectors.to(device)
        return self.log_weights.to(device), self.means.to(device), self._lam.to(device), U

    def _components(self, x: Tensor, alpha: Tensor | None, std: Tensor | None):
        """For x (B, d) and per-sample kernel coefficients (B,): the rotated residuals y_j = U_j^T (x - alpha mu_j),
        the eigenvalues v_j = alpha^2 lam_j + std^2 of C_j ((B, K, d), or (B, K, 1) when isotropic) and log w_j N(x; alpha mu_j, C_j) (B, K)."""
        logw, mu, lam, U = self._params(x.device)
        if alpha is None:
            diff = x[:, None, :] - mu
            var = lam.expand(x.shape[0], *lam.shape)
        else:
            a = alpha[:, None, None]
            diff = x[:, None, :] - a * mu
            var = a * a * lam + (std * std)[:, None, None]
        y = diff if U is None else torch.einsum("kde,bkd->bke", U, diff)
        logdet = torch.log(var).sum(-1) * (self.dim // var.shape[-1])
        logN = -0.5 * ((y * y / var).sum(-1) + logdet + self.dim * _LOG_2PI)
        return y, var, logN + logw

    def _rotate(self, v: Tensor) -> Tensor:
        """U_j v_j for v of shape (B, K, d)."""
        U = self.eigenvectors
        if U is None:
            return v
        return torch.einsum("kde,bke->bkd", U.to(v.device), v)

    def _in(self, name: str, x: Tensor) -> Tensor:
        return _flat(name, x, self.dim).to(self.dtype)

    # ------------------------------------------------------------------ density, score, samples
    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = logsumexp_j [log w_j + log N(x; mu_j, Sigma_j)]; x: (B, d) -> (B,) in x's dtype."""
        z = self._in("x", x)
        return torch.logsumexp(self._components(z, None, None)[2], dim=-1).to(x.dtype)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities r_j(x) = w_j N(x; mu_j, Sigma_j) / p(x); x: (B, d) -> (B, K)."""
        z = self._in("x", x)
        return torch.softmax(self._components(z, None, None)[2], dim=-1).to(x.dtype)

    def classify(self, x: Tensor) -> Tensor:
        """The most probable component of each sample, argmax_j r_j(x); x: (B, d) -> (B,) long."""
        z = self._in("x", x)
        return self._components(z, None, None)[2].argmax(-1)

    def score(self, x: Tensor) -> Tensor:
        """grad log p(x) = -sum_j r_j(x) Sigma_j^{-1} (x - mu_j); x: (B, *dims) -> shaped like x."""
        z = self._in("x", x)
        y, var, logp = self._components(z, None, None)
        r = torch.softmax(logp, dim=-1)
        s = -(r[:, :, None] * self._rotate(y / var)).sum(1)
        return s.to(x.dtype).reshape(x.shape)

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, return_components: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """n draws x = mu_J + U_J diag(sqrt(lam_J)) z with J ~ Categorical(w); (n, d) in the mixture's dtype.

        With return_components=True also returns J (n,) long.
        """
        n = check_int("n", n, minimum=1)
        dev = self.means.device
        J = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=self.dtype, device=dev)
        v = torch.sqrt(self.eigenvalues[J]) * z
        if self.eigenvectors is not None:
            v = torch.einsum("nde,ne->nd", self.eigenvectors[J], v)
        x = self.means[J] + v
        return (x, J) if return_components else x

    # ------------------------------------------------------------------ under an SDE
    def marginal(self, sde: SDE, t: float) -> "GaussianMixture":
        """The law p_t at one time t in [0, T]: sum_j w_j N(alpha(t) mu_j, alpha(t)^2 Sigma_j + std(t)^2 I), as a GaussianMixture."""
        _check_sde(sde)
        t = check_real("t", t, nonnegative=True)
        _check_times(torch.tensor([t], dtype=torch.float64), sde)
        alpha, std = sde.kernel(torch.tensor([t], dtype=torch.float64))
        a, s = float(alpha), float(std)
        return GaussianMixture._from_eig(
            self.weights, a * self.means, a * a * self.eigenvalues + s * s, self.eigenvectors, self.kind
        )

    def diffuse(self, sde: SDE) -> "DiffusedMixture":
        """The family of laws p_t under `sde`, for all t at once: exact score(x, t), denoiser, eps, posterior_cov."""
        return DiffusedMixture(self, sde)

    def score_fn(self, sde: SDE) -> "DiffusedMixture":
        """The exact score of p_t under `sde`, callable as score_fn(x, t) with t of shape (B,) (same as `diffuse`)."""
        return DiffusedMixture(self, sde)

    def noised(self) -> "DiffusedMixture":
        """The laws p * N(0, sigma^2 I) indexed by the noise level sigma: callable as score(x, sigma) (NCSN's convention)."""
        return DiffusedMixture(self, None)

    # ------------------------------------------------------------------ single Gaussian: the ODE in closed form
    def ode_solution(self, sde: SDE, x: Tensor, t_from: float, t_to: float) -> Tensor:
        """Exact probability-flow ODE flow from t_from to t_to for Gaussian data (K = 1).

        For x0 ~ N(mu, Sigma) = N(mu, U diag(lam) U^T), p_t = N(m(t), C(t)) with m = alpha mu and
        C = U diag(c) U^T, c(t) = alpha^2 lam + std^2. The PF-ODE dx/dt = f x - g^2/2 score = f x + g^2/2 C^{-1} (x - m)
        (Song et al. 2021, eq. 13) is linear; since dm/dt = f m and each eigenvalue obeys the moment ODE
        dc/dt = 2 f c + g^2, the residual y = U^T (x - m) obeys dy/dt = (f + g^2 / (2c)) y = (dc/dt) / (2c) y, so

            x(t) = m(t) + U diag(sqrt(c(t) / c(s))) U^T (x(s) - m(s)),    A(t, s) = C(t)^{1/2} C(s)^{-1/2}.

        Args:
            x: (B, d) states at t_from. Returns the states at t_to, shaped and typed like x.
        """
        if self.n_components != 1:
            raise ValueError(
                f"ode_solution needs a single Gaussian (K = 1), this mixture has K = {self.n_components}; "
                "the probability-flow ODE of a mixture has no closed form."
            )
        _check_sde(sde)
        s_ = check_real("t_from", t_from, nonnegative=True)
        t_ = check_real("t_to", t_to, nonnegative=True)
        _check_times(torch.tensor([s_], dtype=torch.float64), sde, name="t_from")
        _check_times(torch.tensor([t_], dtype=torch.float64), sde, name="t_to")
        z = self._in("x", x)
        alpha, std = sde.kernel(torch.tensor([s_, t_], dtype=torch.float64, device=z.device))
        alpha, std = alpha.to(self.dtype), std.to(self.dtype)
        lam = self.eigenvalues[0].to(z.device)
        c = alpha[:, None] ** 2 * lam + std[:, None] ** 2  # (2, d)
        mu = self.means[0].to(z.device)
        diff = z - alpha[0] * mu
        U = None if self.eigenvectors is None else self.eigenvectors[0].to(z.device)
        y = diff if U is None else diff @ U
        y = y * torch.sqrt(c[1] / c[0])
        out = alpha[1] * mu + (y if U is None else y @ U.T)
        return out.to(x.dtype).reshape(x.shape)


def _check_sde(sde: Any) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be an sdescore.SDE, got {type(sde).__name__}.")


def _check_times(t: Tensor, sde: SDE | None, rounding: float = 0.0, name: str = "t") -> None:
    """Times in [0, T] (or noise levels sigma >= 0 when sde is None); the ends of [0, T] may be passed by 4 ulps
    (relative to T) of the dtype the times came in (`rounding`): the rounding of a time computed near 0 or T."""
    if t.numel() == 0:
        return
    lo, hi = (float(v) for v in value_range(t))
    slack = 0.0 if sde is None else 4 * rounding * sde.T
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -slack:
        what = "a noise level sigma" if sde is None else "a time"
        raise ValueError(f"{name} must be {what} >= 0 (finite), got values in [{lo}, {hi}].")
    if sde is not None and hi > sde.T + slack:
        raise ValueError(f"{name} must lie in [0, T={sde.T}], the SDE's time range, got values in [{lo}, {hi}].")


class DiffusedMixture:
    """The laws p_t of a Gaussian mixture diffused by a linear SDE, every quantity exact and batched over time.

    All methods take x of shape (B, *dims) and t of shape (B,) (one time per sample; a float or a 0-d tensor is
    broadcast; t in [0, T], else a ValueError) and compute in the mixture's dtype. The object is callable as score_fn(x, t), so it plugs into
    every sampler of sdescore. With sde=None (`GaussianMixture.noised()`) the time argument is the noise level
    sigma >= 0 of p * N(0, sigma^2 I) (alpha = 1, std = sigma): NCSN's score_fn(x, sigma).
    """

    def __init__(self, mixture: GaussianMixture, sde: SDE | None):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}.")
        if sde is not None:
            _check_sde(sde)
        self.mixture = mixture
        self.sde = sde

    def __repr__(self) -> str:
        return f"DiffusedMixture({self.mixture!r}, {self.sde!r})"

    # ------------------------------------------------------------------ time and kernel
    def _time(self, t: Any, B: int, device: torch.device) -> Tensor:
        if isinstance(t, bool) or not isinstance(t, (Tensor, float, int)):
            raise TypeError(f"t must be a tensor of shape ({B},) or a number, got {type(t).__name__}.")
        given = t.dtype if isinstance(t, Tensor) and t.is_floating_point() else torch.float64
        t = torch.as_tensor(t, dtype=torch.float64, device=device)
        if t.ndim == 0 or t.shape == (1,):
            t = t.reshape(1).expand(B)
        elif t.shape != (B,):
            raise ValueError(f"t must have shape ({B},), one time per sample, got shape {tuple(t.shape)}.")
        _check_times(t, self.sde, torch.finfo(given).eps)
        # a time that passed an end of [0, T] by its rounding is taken at that end: the kernel beyond it is no law
        # (the VP-SDE's std^2 < 0 just below t = 0: NaN; the sub-VP's std < 0: eps of the wrong sign)
        return t if self.sde is None else t.clamp(0.0, self.sde.T)

    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, std) of the kernel at t (B,), in the mixture's dtype."""
        if self.sde is None:
            return torch.ones_like(t, dtype=self.mixture.dtype), t.to(self.mixture.dtype)
        alpha, std = self.sde.kernel(t.to(torch.float64))
        return alpha.to(self.mixture.dtype), std.to(self.mixture.dtype)

    def _prepare(self, x: Tensor, t: Any):
        z = self.mixture._in("x", x)
        alpha, std = self.kernel(self._time(t, z.shape[0], z.device))
        y, var, logp = self.mixture._components(z, alpha, std)
        return z, alpha, std, y, var, logp

    def marginal(self, t: float) -> GaussianMixture:
        """p_t at one time t as a GaussianMixture."""
        if self.sde is None:
            s = check_real("t", t, nonnegative=True)
            m = self.mixture
            return GaussianMixture._from_eig(m.weights, m.means, m.eigenvalues + s * s, m.eigenvectors, m.kind)
        return self.mixture.marginal(self.sde, t)

    # ------------------------------------------------------------------ exact quantities
    def log_prob(self, x: Tensor, t: Any) -> Tensor:
        """log p_t(x), shape (B,)."""
        logp = self._prepare(x, t)[5]
        return torch.logsumexp(logp, dim=-1).to(x.dtype)

    def responsibilities(self, x: Tensor, t: Any) -> Tensor:
        """r_j(x, t) = P(component j | x_t = x), shape (B, K)."""
        return torch.softmax(self._prepare(x, t)[5], dim=-1).to(x.dtype)

    def score(self, x: Tensor, t: Any) -> Tensor:
        """grad_x log p_t(x) = -sum_j r_j C_j^{-1} (x - alpha mu_j), shaped like x."""
        _, _, _, y, var, logp = self._prepare(x, t)
        r = torch.softmax(logp, dim=-1)
        s = -(r[:, :, None] * self.mixture._rotate(y / var)).sum(1)
        return s.to(x.dtype).reshape(x.shape)

    __call__ = score

    def _posterior(self, x: Tensor, t: Any):
        _, alpha, std, y, var, logp = self._prepare(x, t)
        m = self.mixture
        lam = m._params(y.device)[2]
        r = torch.softmax(logp, dim=-1)
        # m_j = mu_j + alpha U_j diag(lam_j / v_j) y_j: no division by alpha, exact as alpha -> 0.
        mj = m._params(y.device)[1] + alpha[:, None, None] * m._rotate(lam * y / var)
        return r, mj, alpha, std, var, lam

    def denoiser(self, x: Tensor, t: Any) -> Tensor:
        """E[x0 | x_t = x] = sum_j r_j m_j (Tweedie: (x + std^2 score) / alpha), shaped like x."""
        r, mj, *_ = self._posterior(x, t)
        return (r[:, :, None] * mj).sum(1).to(x.dtype).reshape(x.shape)

    def eps(self, x: Tensor, t: Any) -> Tensor:
        """E[z | x_t = x] = (x - alpha E[x0 | x]) / std = -std score(x, t), shaped like x.

        Computed as -std score: the difference x - alpha E[x0 | x] cancels catastrophically where std is small."""
        _, _, std, y, var, logp = self._prepare(x, t)
        r = torch.softmax(logp, dim=-1)
        e = std[:, None] * (r[:, :, None] * self.mixture._rotate(y / var)).sum(1)
        return e.to(x.dtype).reshape(x.shape)

    def posterior_cov(self, x: Tensor, t: Any) -> Tensor:
        """Cov[x0 | x_t = x] = sum_j r_j [P_j + (m_j - E)(m_j - E)^T], shape (B, d, d).

        P_j = U_j diag(std^2 lam_j / v_j) U_j^T; equals (std^2 / alpha^2)(I + std^2 Hess log p_t(x)), the
        second-order Tweedie formula.
        """
        r, mj, alpha, std, var, lam = self._posterior(x, t)
        D = (r[:, :, None] * mj).sum(1)
        pj = ((std * std)[:, None, None] * lam / var).expand(*var.shape[:2], self.mixture.dim)  # (B, K, d)
        U = self.mixture.eigenvectors
        if U is None:
            P = torch.diag_embed((r[:, :, None] * pj).sum(1))
        else:
            U = U.to(pj.device)
            P = torch.einsum("bk,kde,bke,kfe->bdf", r, U, pj, U)
        dm = mj - D[:, None, :]
        P = P + torch.einsum("bk,bkd,bke->bde", r, dm, dm)
        return P.to(x.dtype)

    def sample(self, n: int, t: float, generator: torch.Generator | None = None) -> Tensor:
        """n draws from p_t, shape (n, d), in the mixture's dtype."""
        return self.marginal(t).sample(n, generator)

    def score_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        return self.score

    def denoiser_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        return self.denoiser

    def eps_fn(self) -> Callable[[Tensor, Tensor], Tensor]:
        return self.eps


# ---------------------------------------------------------------------- named targets
def ncsn_toy(*, dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """p = 1/5 N((-5, -5), I) + 4/5 N((5, 5), I), the 2-D example of Song & Ermon (2019), section 3.2.

    Its modes are so far apart that plain Langevin dynamics started uniformly ignores the weights;
    annealed Langevin recovers them.
    """
    return GaussianMixture([0.2, 0.8], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], dtype=dtype)


def ring(n_modes: int = 8, radius: float = 4.0, std: float = 0.5, *, dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """n_modes equal-weight isotropic Gaussians of standard deviation `std` evenly spaced on a circle in 2-D."""
    n_modes = check_int("n_modes", n_modes, minimum=1)
    radius = check_real("radius", radius, nonnegative=True)
    std = check_real("std", std, positive=True)
    angle = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return GaussianMixture(torch.full((n_modes,), 1.0 / n_modes), means, torch.full((n_modes,), std * std), dtype=dtype)


def random_anisotropic(
    d: int = 4,
    n_modes: int = 3,
    seed: int = 0,
    *,
    spread: float = 3.0,
    min_std: float = 0.2,
    max_std: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> GaussianMixture:
    """A random mixture in d dimensions with full, rotated, anisotropic covariances (reproducible from `seed`).

    Means ~ N(0, spread^2 I); each covariance Q diag(s^2) Q^T with Q a Haar-random rotation and s log-uniform
    in [min_std, max_std]; weights proportional to 1 + U(0, 1).
    """
    d = check_int("d", d, minimum=1)
    n_modes = check_int("n_modes", n_modes, minimum=1)
    seed = check_int("seed", seed)
    spread = check_real("spread", spread, nonnegative=True)
    min_std = check_real("min_std", min_std, positive=True)
    max_std = check_real("max_std", max_std, positive=True)
    if min_std > max_std:
        raise ValueError(f"min_std must be <= max_std, got {min_std} > {max_std}.")
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    w = 1.0 + torch.rand(n_modes, generator=gen, dtype=f64)
    means = spread * torch.randn(n_modes, d, generator=gen, dtype=f64)
    Q, R = torch.linalg.qr(torch.randn(n_modes, d, d, generator=gen, dtype=f64))
    Q = Q * torch.sign(torch.diagonal(R, dim1=1, dim2=2))[:, None, :]  # Haar measure (Mezzadri 2007)
    log_s = math.log(min_std) + (math.log(max_std) - math.log(min_std)) * torch.rand(n_modes, d, generator=gen, dtype=f64)
    covs = Q @ torch.diag_embed(torch.exp(2 * log_s)) @ Q.transpose(1, 2)
    return GaussianMixture(w / w.sum(), means, 0.5 * (covs + covs.transpose(1, 2)), dtype=dtype)


def single_gaussian(
    mean: Sequence[float] | Tensor = (1.0, -0.5),
    cov: Sequence[Sequence[float]] | Tensor = ((1.0, 0.6), (0.6, 0.5)),
    *,
    dtype: torch.dtype = torch.float64,
) -> GaussianMixture:
    """N(mean, cov) as a one-component mixture; cov (d, d), (d,) diagonal or a scalar variance.

    The probability-flow ODE of a Gaussian has a closed-form flow: `ode_solution`.
    """
    mu = _as_tensor("mean", mean, dtype, None)
    if mu.ndim != 1:
        raise ValueError(f"mean must have shape (d,), got shape {tuple(mu.shape)}.")
    S = _as_tensor("cov", cov, dtype, None)
    d = mu.shape[0]
    if S.shape not in ((), (d,), (d, d)):
        raise ValueError(f"cov must be a scalar, ({d},) or ({d}, {d}) for a mean of dimension {d}, got shape {tuple(S.shape)}.")
    return GaussianMixture([1.0], mu[None], S.reshape(1) if S.ndim == 0 else S[None], dtype=dtype)


TARGETS: dict[str, Callable[..., GaussianMixture]] = {
    "ncsn_toy": ncsn_toy,
    "ring": ring,
    "random_anisotropic": random_anisotropic,
    "single_gaussian": single_gaussian,
}
