"""A time- or noise-conditioned residual MLP for vector data (the 2-D toy problems)."""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import check_int, check_real
from .embeddings import check_conditioning, check_input_dtype, embed_conditioning, make_embedding

__all__ = ["ScoreMLP"]


def check_vectors(x: object, dim: int, params: Tensor) -> Tensor:
    """A floating (B, dim) tensor in the dtype of the network's parameters."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, {dim}), got {type(x).__name__}.")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape (B, {dim}) for this network (dim={dim}), got shape {tuple(x.shape)}.")
    return check_input_dtype(x, params)


class ScoreMLP(nn.Module):
    """Residual MLP s(x, t): (B, D) x (B,) -> (B, D), conditioned on t through an embedding.

    h_0 = W_in x + E(t), h_{k+1} = h_k + W_k dropout(silu(h_k)), out = W_out silu(h_depth), where E is
    a Fourier or sinusoidal embedding followed by a two-layer MLP. What the output means (a score, an
    epsilon, a denoised x0) is set by the loss it is trained with.

    Args:
        dim: D, the data dimension.
        hidden: width of the hidden layers.
        depth: number of residual hidden layers (>= 1).
        embedding_dim: features of the time embedding.
        embedding: "fourier" (GaussianFourierProjection), "sinusoidal" (SinusoidalEmbedding) or a module
            with attribute `dim` (its number of output features); a module receives t (in the network's dtype),
            or log(t) with log_input=True. A built-in embedding is computed in float32 whatever the network's
            dtype, its features rounded once to that dtype.
        fourier_scale: scale of the Fourier features (for embedding="fourier").
        log_input: condition on log(t) (for a noise level sigma > 0); applies to a custom embedding module too.
        dropout: dropout probability inside the residual layers.
    Shapes: forward(x (B, D), t (B,)) -> (B, D).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        depth: int = 3,
        embedding_dim: int = 64,
        *,
        embedding: str | nn.Module = "fourier",
        fourier_scale: float = 16.0,
        log_input: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        hidden = check_int("hidden", hidden, minimum=1)
        depth = check_int("depth", depth, minimum=1)
        embedding_dim = check_int("embedding_dim", embedding_dim, minimum=2)
        dropout = check_real("dropout", dropout, nonnegative=True)
        if dropout >= 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        embed = make_embedding(embedding, embedding_dim, log_input=log_input, fourier_scale=fourier_scale)
        self._builtin_embedding = not isinstance(embedding, nn.Module)
        self.embed = nn.Sequential(embed, nn.Linear(embed.dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.input = nn.Linear(self.dim, hidden)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.output = nn.Sequential(nn.SiLU(), nn.Linear(hidden, self.dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        x = check_vectors(x, self.dim, self.input.weight)
        t = check_conditioning(t, x.shape[0])
        h = self.input(x) + embed_conditioning(self.embed, t, x.dtype, builtin=self._builtin_embedding)
        for layer in self.layers:
            h = h + layer(h)
        return self.output(h)
