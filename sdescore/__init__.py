"""sdescore: score-based generative modelling through stochastic differential equations.

The SDEs are pure mathematics (`VESDE`, `VPSDE`, `SubVPSDE`, or your own `SDE` subclass); the reverse-time SDE
is integrated by torchsde (`sde.reverse(score_fn).sample`), the probability-flow ODE by torchdiffeq
(`sde.probability_flow(score_fn).sample`). Everything speaks score_fn(x, t); networks predicting eps or x0
enter through the converters.
"""

from ._score import NonFiniteError, SampleResult
from .flow import ProbabilityFlowODE
from .parametrizations import denoiser_from_score, eps_from_score, score_from_denoiser, score_from_eps
from .reverse import IncrementBrownian, ReverseSDE
from .samplers import CORRECTORS, PREDICTORS, pc_sample
from .sde import SDE, VESDE, VPSDE, SubVPSDE

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "ReverseSDE",
    "ProbabilityFlowODE",
    "IncrementBrownian",
    "SampleResult",
    "NonFiniteError",
    "pc_sample",
    "PREDICTORS",
    "CORRECTORS",
    "score_from_eps",
    "eps_from_score",
    "score_from_denoiser",
    "denoiser_from_score",
]
