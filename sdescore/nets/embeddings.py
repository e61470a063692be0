"""Embeddings of the conditioning scalar (a time t or a noise level sigma) for score networks.

Both embeddings map a batch of scalars (B,) to features (B, dim). Whether a network conditions on t,
on sigma or on log(sigma) is the caller's choice: `log_input=True` embeds log of the input, which is
how NCSN++ conditions on sigma (Song et al. 2021, appendix H.1); pass the input the network should see.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_int, check_real

__all__ = ["GaussianFourierProjection", "SinusoidalEmbedding", "check_conditioning", "check_input_dtype"]


def check_conditioning(t: object, batch: int | None = None, name: str = "t") -> Tensor:
    """A floating tensor of shape (batch,): one time or noise level per sample (batch=None: any B)."""
    want = "(B,)" if batch is None else f"({batch},)"
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {want}, got {type(t).__name__}.")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}; pass {name}.float().")
    if t.ndim != 1 or (batch is not None and t.shape[0] != batch):
        raise ValueError(
            f"{name} must have shape {want}, one value per sample, got shape {tuple(t.shape)}; "
            f"for one value shared by the batch use torch.full((B,), value)."
        )
    return t


def check_input_dtype(x: Tensor, weight: Tensor) -> Tensor:
    """x floating and in the dtype of the network's parameters (weight), or a TypeError that says which to convert."""
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}; pass x.to({weight.dtype}).")
    if x.dtype != weight.dtype:
        raise TypeError(
            f"x has dtype {x.dtype} but the network's parameters are {weight.dtype}; "
            f"convert one of them, e.g. model.to({x.dtype}) or x.to({weight.dtype})."
        )
    return x


def _log_positive(t: Tensor) -> Tensor:
    # One host synchronisation per call, skipped inside torch.compile where it would break the graph.
    if not torch.compiler.is_compiling() and not bool((t > 0).all()):
        raise ValueError(
            f"t must be > 0 with log_input=True (it is a noise level sigma), got min {float(t.min())}."
        )
    return torch.log(t)


def _even_dim(dim: object) -> int:
    dim = check_int("dim", dim, minimum=2)
    if dim % 2:
        raise ValueError(f"dim must be even (half sine, half cosine features), got {dim}.")
    return dim


class GaussianFourierProjection(nn.Module):
    """Random Fourier features gamma(t) = [sin(2 pi W t), cos(2 pi W t)] with fixed W ~ N(0, scale^2).

    Tancik et al. (2020); used for the noise level in NCSN++ (Song et al. 2021, appendix H.1, scale 16).
    W is a buffer (saved in the state dict, never trained).

    Args:
        dim: number of output features (even); W has dim / 2 entries.
        scale: standard deviation of W; larger values resolve finer changes of the input.
        log_input: embed log(t) instead of t (for noise levels sigma > 0).
        generator: torch.Generator that draws W, for reproducible construction.
    Shapes: forward maps t (B,) to (B, dim).
    """

    def __init__(self, dim: int, scale: float = 16.0, *, log_input: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        self.dim = _even_dim(dim)
        self.scale = check_real("scale", scale, positive=True)
        self.log_input = bool(log_input)
        self.register_buffer("W", torch.randn(self.dim // 2, generator=generator) * self.scale)

    def forward(self, t: Tensor) -> Tensor:
        t = check_conditioning(t)
        if self.log_input:
            t = _log_positive(t)
        proj = 2 * math.pi * t.to(self.W.dtype)[:, None] * self.W[None, :]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}, log_input={self.log_input}"


class SinusoidalEmbedding(nn.Module):
    """Transformer positional embedding [sin(s t w_k), cos(s t w_k)] with w_k = max_period^(-k / (dim/2 - 1)).

    Vaswani et al. (2017), sec. 3.5; the time embedding of DDPM (Ho et al. 2020, appendix B). DDPM embeds
    integer steps 0..999; `input_scale` s = 1000 maps a continuous t in [0, 1] onto that range, as the
    continuous-time DDPM models of Song et al. (2021) do.

    Args:
        dim: number of output features (even, >= 4).
        input_scale: s, multiplies the input before the frequencies.
        max_period: the longest period, 10000 in the papers.
        log_input: embed s * log(t) instead of s * t.
    Shapes: forward maps t (B,) to (B, dim).
    """

    def __init__(self, dim: int, *, input_scale: float = 1000.0, max_period: float = 10000.0, log_input: bool = False):
        super().__init__()
        self.dim = _even_dim(dim)
        if self.dim < 4:
            raise ValueError(f"dim must be >= 4 for SinusoidalEmbedding, got {self.dim}.")
        self.input_scale = check_real("input_scale", input_scale, positive=True)
        self.max_period = check_real("max_period", max_period, positive=True)
        self.log_input = bool(log_input)

    def forward(self, t: Tensor) -> Tensor:
        t = check_conditioning(t)
        if self.log_input:
            t = _log_positive(t)
        half = self.dim // 2
        k = torch.arange(half, dtype=t.dtype, device=t.device)
        w = torch.exp(-math.log(self.max_period) * k / (half - 1))
        arg = self.input_scale * t[:, None] * w[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, input_scale={self.input_scale}, max_period={self.max_period}, log_input={self.log_input}"


class _LogInput(nn.Module):
    """A user's embedding module fed log(t): what log_input=True means for a module given as `embedding=`."""

    def __init__(self, embedding: nn.Module):
        super().__init__()
        self.embedding = embedding

    @property
    def dim(self) -> int:
        return self.embedding.dim

    def forward(self, t: Tensor) -> Tensor:  # t was checked by the network (check_conditioning) that owns this
        return self.embedding(_log_positive(t))


# One registry for the string choice `embedding=` of the networks.
EMBEDDINGS: dict[str, type[nn.Module]] = {
    "fourier": GaussianFourierProjection,
    "sinusoidal": SinusoidalEmbedding,
}


def make_embedding(embedding: str | nn.Module, dim: int, *, log_input: bool, fourier_scale: float) -> nn.Module:
    """The embedding a network asked for: a name from EMBEDDINGS, or a module with attribute `dim`.

    With log_input=True a module receives log(t) (it is wrapped; its state-dict keys gain the prefix
    "embedding."), as the built-in embeddings embed log(t); with log_input=False it receives t.
    """
    if isinstance(embedding, nn.Module):
        out = getattr(embedding, "dim", None)
        if not isinstance(out, int) or isinstance(out, bool):
            raise TypeError(
                f"embedding must be one of {sorted(EMBEDDINGS)} or an nn.Module with an int attribute `dim` "
                f"(its number of output features), got {type(embedding).__name__} without one."
            )
        return _LogInput(embedding) if log_input else embedding
    if not isinstance(embedding, str) or embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {sorted(EMBEDDINGS)} or an nn.Module, got {embedding!r}.")
    if embedding == "fourier":
        return GaussianFourierProjection(dim, fourier_scale, log_input=log_input)
    return SinusoidalEmbedding(dim, log_input=log_input)
