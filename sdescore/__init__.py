"""sdescore: score-based generative modelling through stochastic differential equations.

The SDEs are pure mathematics (`VESDE`, `VPSDE`, `SubVPSDE`, or your own `SDE` subclass); the reverse-time SDE
is integrated by torchsde (`sde.reverse(score_fn).sample`), the probability-flow ODE by torchdiffeq
(`sde.probability_flow(score_fn).sample`). Everything speaks score_fn(x, t); networks predicting eps or x0
enter through the converters.
"""

from ._score import NonFiniteError, SampleResult
from .discrete import (
    DDPM_VARIANCES,
    AnnealedLangevinCorrector,
    annealed_langevin,
    ddpm_betas,
    ddpm_eps_from_continuous,
    ddpm_sample,
    ddpm_times,
    langevin,
    ncsn_from_score,
    ncsn_sigmas,
    score_from_ncsn,
    ve_sde_from_ncsn_sigmas,
)
from .losses import WEIGHTINGS, dsm_loss, eps_loss, ism_loss, ncsn_loss, ssm_loss
from .fast import (
    FAST_SAMPLERS,
    AdaptiveSampler,
    FixedStepSampler,
    adaptive_ode_sample,
    adaptive_sde_sample,
    dpm_solver_pp_sample,
    dpm_solver_sample,
    heun_sample,
)
from .flow import ProbabilityFlowODE
from .grids import GRIDS, KarrasGrid, LogSNRGrid, QuadraticGrid, TimeGrid, UniformGrid, time_grid
from .likelihood import (
    BitsPerDimResult,
    DatasetBitsPerDim,
    LikelihoodResult,
    bits_per_dim,
    dataset_bits_per_dim,
    log_likelihood,
)
from .parametrizations import denoiser_from_score, eps_from_score, score_from_denoiser, score_from_eps
from .reverse import IncrementBrownian, ReverseSDE
from .samplers import CORRECTORS, PREDICTORS, pc_sample
from .sde import SDE, VESDE, VPSDE, SubVPSDE
from .nets import DDPMUNet, GaussianFourierProjection, NCSNUNet, ScoreMLP, SinusoidalEmbedding
from .training import (
    DistributedInfo,
    StepInfo,
    TrainResult,
    ema_state_dict,
    load_checkpoint,
    save_checkpoint,
    setup_distributed,
    teardown_distributed,
    train,
)

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
    # exact likelihood through the probability-flow ODE (sdescore.likelihood)
    "log_likelihood",
    "bits_per_dim",
    "dataset_bits_per_dim",
    "LikelihoodResult",
    "BitsPerDimResult",
    "DatasetBitsPerDim",
    # fast samplers and time grids (sdescore.fast, sdescore.grids)
    "heun_sample",
    "dpm_solver_sample",
    "dpm_solver_pp_sample",
    "adaptive_sde_sample",
    "adaptive_ode_sample",
    "FixedStepSampler",
    "AdaptiveSampler",
    "FAST_SAMPLERS",
    "time_grid",
    "TimeGrid",
    "UniformGrid",
    "QuadraticGrid",
    "KarrasGrid",
    "LogSNRGrid",
    "GRIDS",
    # objectives and the discrete special cases (sdescore.losses, sdescore.discrete)
    "dsm_loss",
    "eps_loss",
    "ism_loss",
    "ssm_loss",
    "ncsn_loss",
    "WEIGHTINGS",
    "ncsn_sigmas",
    "ve_sde_from_ncsn_sigmas",
    "score_from_ncsn",
    "ncsn_from_score",
    "langevin",
    "annealed_langevin",
    "AnnealedLangevinCorrector",
    "ddpm_betas",
    "ddpm_times",
    "ddpm_sample",
    "ddpm_eps_from_continuous",
    "DDPM_VARIANCES",
    # networks and training (sdescore.nets, sdescore.training); data loaders live in sdescore.data
    "ScoreMLP",
    "NCSNUNet",
    "DDPMUNet",
    "GaussianFourierProjection",
    "SinusoidalEmbedding",
    "train",
    "TrainResult",
    "StepInfo",
    "save_checkpoint",
    "load_checkpoint",
    "ema_state_dict",
    "setup_distributed",
    "teardown_distributed",
    "DistributedInfo",
]
