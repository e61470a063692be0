"""Figures as PNG files: image sample grids, 2-D sample scatter plots and loss curves (matplotlib, Agg canvas).

Figures are drawn on matplotlib.figure.Figure with the Agg canvas directly, so nothing touches pyplot's
global state or needs a display. matplotlib (the optional dependency `train`) is imported when a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int
from .data import float_to_images

__all__ = ["image_grid", "save_image_grid", "plot_samples_2d", "plot_loss_curve"]


def _figure(figsize: tuple[float, float], dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _as_uint8_images(images: object) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1 and C in (1, 3), got {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        return images.detach().cpu()
    if images.is_floating_point():
        return float_to_images(images.detach().cpu())
    raise TypeError(f"images must be uint8 (0..255) or floating in [-1, 1], got {images.dtype}.")


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile images into one uint8 array (rows * (H + p) + p, cols * (W + p) + p, C), padding p white pixels.

    Args:
        images: (N, C, H, W), uint8 in 0..255 or floating in [-1, 1] (mapped by float_to_images), C in (1, 3).
        nrow: images per row (default ceil(sqrt(N))).
        padding: pixels between images.
    """
    u = _as_uint8_images(images).permute(0, 2, 3, 1).numpy()
    N, H, W, C = u.shape
    ncol = math.ceil(math.sqrt(N)) if nrow is None else check_int("nrow", nrow, minimum=1)
    nrows = math.ceil(N / ncol)
    p = check_int("padding", padding, minimum=0)
    grid = np.full((nrows * (H + p) + p, ncol * (W + p) + p, C), 255, dtype=np.uint8)
    for i in range(N):
        r, c = divmod(i, ncol)
        grid[p + r * (H + p) : p + r * (H + p) + H, p + c * (W + p) : p + c * (W + p) + W] = u[i]
    return grid


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None, padding: int = 1, scale: int = 4) -> Path:
    """Save a grid of images as a PNG file, each pixel enlarged to scale x scale (nearest neighbour).

    Args:
        images: (N, C, H, W), uint8 in 0..255 or floating in [-1, 1], C in (1, 3).
        path: the PNG file to write; its directory is created if missing.
        nrow: images per row (default ceil(sqrt(N))).
        padding: pixels between images.
        scale: integer enlargement so that 8x8 digits remain visible.
    Returns the path written.
    """
    grid = image_grid(images, nrow, padding)
    s = check_int("scale", scale, minimum=1)
    grid = grid.repeat(s, axis=0).repeat(s, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, _ = grid.shape
    fig = _figure((w / 100, h / 100))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    if grid.shape[2] == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_samples_2d(
    samples: Tensor, path: str | Path, reference: Tensor | None = None, title: str | None = None, limit: float | None = None
) -> Path:
    """Scatter plot of 2-D samples (N, 2), optionally over reference samples (M, 2) drawn in grey.

    Args:
        samples: (N, 2) points, e.g. the output of a sampler.
        path: the PNG file to write.
        reference: (M, 2) points from the data distribution, or None.
        title: figure title.
        limit: show [-limit, limit]^2 (default: fit the points).
    """
    pts = []
    for name, x in (("samples", samples), ("reference", reference)):
        if x is None:
            continue
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor of shape (N, 2), got {got}.")
        pts.append(x.detach().double().cpu().numpy())
    fig = _figure((5, 5))
    ax = fig.add_subplot()
    if reference is not None:
        ax.scatter(pts[1][:, 0], pts[1][:, 1], s=2, c="0.7", label="data")
    ax.scatter(pts[0][:, 0], pts[0][:, 1], s=2, c="C0", label="samples")
    if limit is not None:
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", markerscale=4)
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_loss_curve(losses: Sequence[float], path: str | Path, smooth: int = 50, log_scale: bool = True, title: str | None = None) -> Path:
    """Plot a per-step loss history and its moving average over `smooth` steps.

    Args:
        losses: one loss per step (e.g. TrainResult.losses).
        path: the PNG file to write.
        smooth: window of the moving average (1: none).
        log_scale: logarithmic loss axis (needs positive losses).
        title: figure title.
    """
    y = np.asarray(list(losses), dtype=np.float64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"losses must be a non-empty sequence of numbers, got {y.size} values of shape {y.shape}.")
    smooth = check_int("smooth", smooth, minimum=1)
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    steps = np.arange(1, y.size + 1)
    ax.plot(steps, y, color="C0", alpha=0.3, lw=0.8, label="loss")
    w = min(smooth, y.size)
    if w > 1:
        avg = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], avg, color="C0", lw=1.5, label=f"mean of {w} steps")
    if log_scale and (y > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path
