"""Embeddings of the conditioning scalar (a time t or a noise level sigma) for score networks.

Both embeddings map a batch of scalars (B,) to features (B, dim). Whether a network conditions on t,
on sigma or on log(sigma) is the caller's choice: `log_input=True` embeds log of the input, which is
how NCSN++ conditions on sigma (Song et al. 2021, appendix H.1); pass the input the network should see.

Precision: the features are computed in float32 (float64 for a float64 input) and rounded once to the input's
dtype. Their arguments reach 1000 (the sinusoidal embedding of t in [0, 1]) and hundreds (Fourier features of
scale 16): formed in bfloat16 or float16 they are off by whole periods, so a half-precision network passes t
to its embedding unrounded (`embed_conditioning`) and rounds the features, not t, to its own dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_bool, check_int, check_real

__all__ = ["GaussianFourierProjection", "SinusoidalEmbedding", "check_conditioning", "check_input_dtype"]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the input's dtype where it is wider (float64): the precision the features are computed in."""
    return torch.promote_types(dtype, torch.float32)


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


def _even_dim(dim: object, minimum: int = 2, name: str = "dim") -> int:
    dim = check_int(name, dim)
    if dim < minimum or dim % 2:
        raise ValueError(f"{name} must be even and >= {minimum} (half sine, half cosine features), got {dim}.")
    return dim


class GaussianFourierProjection(nn.Module):
    """Random Fourier features gamma(t) = [sin(2 pi W t), cos(2 pi W t)] with fixed W ~ N(0, scale^2).

    Tancik et al. (2020); used for the noise level in NCSN++ (Song et al. 2021, appendix H.1, scale 16).
    W is a buffer (saved in the state dict, never trained), kept in float32 (or wider) when the module is
    converted to half precision: .half() or .bfloat16() would round the frequencies, and with them every
    feature by up to 2 pi |W t| times the unit roundoff. The features come in t's dtype (see the module's
    docstring on precision).

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
        self.log_input = check_bool("log_input", log_input)
        dtype = _work_dtype(torch.get_default_dtype())
        self.register_buffer("W", torch.randn(self.dim // 2, generator=generator, dtype=dtype) * self.scale)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .half(), .bfloat16() and .to(dtype) convert every floating buffer: keep the frequencies' values (and the
        # dtype they were drawn in), follow only a change of device.
        W = self.W
        super()._apply(fn, recurse)
        if self.W.dtype != W.dtype and self.W.dtype.is_floating_point and torch.finfo(self.W.dtype).bits < 32:
            self.W = W.to(self.W.device)
        return self

    def forward(self, t: Tensor) -> Tensor:
        t = check_conditioning(t)
        work = _work_dtype(t.dtype)
        s = t.to(work)
        if self.log_input:
            s = _log_positive(s)
        proj = 2 * math.pi * s[:, None] * self.W.to(work)[None, :]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1).to(t.dtype)

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
    Shapes: forward maps t (B,) to (B, dim), in t's dtype (see the module's docstring on precision).
    """

    def __init__(self, dim: int, *, input_scale: float = 1000.0, max_period: float = 10000.0, log_input: bool = False):
        super().__init__()
        self.dim = _even_dim(dim, minimum=4)
        self.input_scale = check_real("input_scale", input_scale, positive=True)
        self.max_period = check_real("max_period", max_period, positive=True)
        self.log_input = check_bool("log_input", log_input)

    def forward(self, t: Tensor) -> Tensor:
        t = check_conditioning(t)
        work = _work_dtype(t.dtype)
        s = t.to(work)
        if self.log_input:
            s = _log_positive(s)
        half = self.dim // 2
        k = torch.arange(half, dtype=work, device=t.device)
        w = torch.exp(-math.log(self.max_period) * k / (half - 1))
        arg = self.input_scale * s[:, None] * w[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(t.dtype)

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
        return self.embedding(_log_positive(t.to(_work_dtype(t.dtype))).to(t.dtype))


# One registry for the string choice `embedding=` of the networks.
EMBEDDINGS: dict[str, type[nn.Module]] = {
    "fourier": GaussianFourierProjection,
    "sinusoidal": SinusoidalEmbedding,
}


def make_embedding(
    embedding: str | nn.Module, dim: int, *, log_input: bool, fourier_scale: float, dim_name: str = "embedding_dim"
) -> nn.Module:
    """The embedding a network asked for: a name from EMBEDDINGS, or a module with attribute `dim`.

    With log_input=True a module receives log(t) (it is wrapped; its state-dict keys gain the prefix
    "embedding."), as the built-in embeddings embed log(t); with log_input=False it receives t. The arguments
    are checked under the network's names: `dim_name` for dim ("embedding_dim", or what its default came from),
    fourier_scale, log_input.
    """
    log_input = check_bool("log_input", log_input)
    fourier_scale = check_real("fourier_scale", fourier_scale, positive=True)
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
        return GaussianFourierProjection(_even_dim(dim, 2, dim_name), fourier_scale, log_input=log_input)
    return SinusoidalEmbedding(_even_dim(dim, 4, dim_name), log_input=log_input)


def embed_conditioning(embed: nn.Sequential, t: Tensor, dtype: torch.dtype, *, builtin: bool) -> Tensor:
    """A network's conditioning features: embed[0] (the embedding) at t, rounded once to dtype, then embed[1:].

    A built-in embedding (builtin=True) receives t unrounded, in float32 or wider (float64 for a float64 t or
    network), and computes its features there (see the module's docstring on precision); a module of the user's
    receives t in the network's dtype, as its own layers expect.
    """
    h = embed[0](t.to(torch.promote_types(_work_dtype(t.dtype), dtype) if builtin else dtype)).to(dtype)
    for i in range(1, len(embed)):
        h = embed[i](h)
    return h
