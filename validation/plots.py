"""Figures of the checks: score fields against the analytic ones, samples against the density, error against steps.

matplotlib (Agg backend) is imported when a figure is drawn, never when sdescore or validation is imported.
Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from .mixtures import DiffusedMixture, GaussianMixture

__all__ = ["plot_score_field", "plot_samples", "plot_convergence"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    """Lay out, write as PNG and close the figure; returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _grid(lim: float, n: int) -> tuple[Tensor, Tensor, Tensor]:
    u = torch.linspace(-lim, lim, n, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    return X, Y, torch.stack([X.flatten(), Y.flatten()], 1)


def plot_score_field(
    path: str | Path,
    family: DiffusedMixture,
    times: Sequence[float],
    *,
    other: Callable[[Tensor, Tensor], Tensor] | None = None,
    other_label: str = "converted",
    lim: float = 7.0,
    title: str = "",
) -> Path:
    """Quiver of the analytic score of p_t (black) over its density, at each time; `other` (red) drawn on top."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(times), figsize=(4 * len(times), 4), squeeze=False)
    X, Y, pts = _grid(lim, 120)
    Xq, Yq, q = _grid(lim, 17)
    for ax, t in zip(axes[0], times):
        tt = torch.full((pts.shape[0],), float(t), dtype=torch.float64)
        dens = torch.exp(family.log_prob(pts, tt)).reshape(X.shape)
        ax.contourf(X.numpy(), Y.numpy(), dens.numpy(), levels=20, cmap="Blues")
        tq = torch.full((q.shape[0],), float(t), dtype=torch.float64)
        s = family.score(q, tq)
        norm = s.norm(dim=1, keepdim=True).clamp(min=1e-12)
        ax.quiver(Xq.flatten(), Yq.flatten(), (s / norm)[:, 0], (s / norm)[:, 1], color="k", scale=30, label="analytic")
        if other is not None:
            o = other(q, tq)
            ax.quiver(Xq.flatten(), Yq.flatten(), (o / norm)[:, 0], (o / norm)[:, 1], color="r", scale=30, alpha=0.6,
                      label=other_label)
        ax.set_title(f"t = {t:g}")
        ax.set_aspect("equal")
    axes[0][0].legend(loc="lower left", fontsize=7)
    fig.suptitle(title or "score field (arrows normalised by the analytic norm)")
    return _save(plt, fig, path)


def plot_samples(
    path: str | Path,
    mixture: GaussianMixture,
    samples: dict[str, Tensor],
    *,
    lim: float | None = None,
    title: str = "",
) -> Path:
    """Per sample set: a 2-D histogram under the density's contours, and the first coordinate's histogram against
    its exact marginal density."""
    if mixture.dim != 2:
        raise ValueError(f"plot_samples draws 2-D mixtures, got d = {mixture.dim}.")
    plt = _pyplot()
    if lim is None:
        spread = mixture.means.abs().max() + 3 * mixture.eigenvalues.max().sqrt()
        lim = float(spread)
    n = len(samples)
    fig, axes = plt.subplots(2, n, figsize=(3.6 * n, 7), squeeze=False)
    X, Y, pts = _grid(lim, 150)
    dens = torch.exp(mixture.log_prob(pts)).reshape(X.shape)
    u = torch.linspace(-lim, lim, 400, dtype=torch.float64)
    sd = mixture.covs[:, 0, 0].sqrt()
    marg = (mixture.weights[:, None] * torch.exp(-0.5 * ((u[None] - mixture.means[:, :1]) / sd[:, None]) ** 2)
            / (sd[:, None] * math.sqrt(2 * math.pi))).sum(0)
    for k, (label, x) in enumerate(samples.items()):
        x = x.detach().to(torch.float64).cpu().reshape(x.shape[0], -1)
        ax = axes[0][k]
        ax.hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=60, range=[[-lim, lim], [-lim, lim]], cmap="Greys")
        ax.contour(X.numpy(), Y.numpy(), dens.numpy(), levels=6, colors="tab:blue", linewidths=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_aspect("equal")
        ax = axes[1][k]
        ax.hist(x[:, 0].numpy(), bins=80, range=(-lim, lim), density=True, color="0.6")
        ax.plot(u.numpy(), marg.numpy(), color="tab:blue")
        ax.set_xlabel("x[0]")
    fig.suptitle(title or "samples (grey) against the exact density (blue)")
    return _save(plt, fig, path)


def plot_convergence(
    path: str | Path,
    series: Sequence[tuple[str, Sequence[int], Sequence[float], float, float]],
    *,
    title: str = "",
    ylabel: str = "error",
) -> Path:
    """Error against steps on log-log axes, one line per (label, steps, errors, fitted order, theoretical order)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, steps, errors, fitted, theory in series:
        line = ax.loglog(steps, errors, "o-", label=f"{label}: fitted {fitted:.2f} (theory {theory:g})")[0]
        ref = [errors[-1] * (steps[-1] / s) ** theory for s in steps]
        ax.loglog(steps, ref, ":", color=line.get_color(), alpha=0.7)
    ax.set_xlabel("steps")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title or "convergence (dotted: theoretical slope)")
    return _save(plt, fig, path)
