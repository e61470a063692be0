"""Networks: the only nn.Modules of sdescore. Each maps (x (B, *dims), t (B,)) to a tensor shaped like x."""

from __future__ import annotations

from .embeddings import EMBEDDINGS, GaussianFourierProjection, SinusoidalEmbedding
from .mlp import ScoreMLP
from .unet import DDPMUNet, NCSNUNet

__all__ = ["EMBEDDINGS", "GaussianFourierProjection", "SinusoidalEmbedding", "ScoreMLP", "NCSNUNet", "DDPMUNet"]
