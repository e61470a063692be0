"""validation: closed-form Gaussian mixtures through any linear SDE, and the checks of every identity sdescore relies on.

- `mixtures`: `GaussianMixture` and its exact laws p_t under an SDE (`DiffusedMixture`: score, denoiser, eps,
  posterior covariance, log-density, batched over time), named targets, the closed-form probability-flow ODE of
  a Gaussian.
- `stats`: tests with a stated null (sliced Kolmogorov–Smirnov against a mixture, KS of the log-density against
  exact draws, energy distance with a permutation null, mode-weight recovery).
- `symbolic`: the kernel of a linear SDE from its moment ODEs (sympy), and the Fokker–Planck / reverse-SDE /
  probability-flow / DSM identities.
- `checks`: the registry behind `python -m validation`, and `check_sampler` for a user's own sampler.
"""

from .checks import CHECKS, Row, SamplerReport, check_sampler, format_table, run_checks
from .mixtures import (
    TARGETS,
    DiffusedMixture,
    GaussianMixture,
    ncsn_toy,
    random_anisotropic,
    ring,
    single_gaussian,
)
from .stats import TestResult, energy_distance, energy_test, log_density_ks_test, mode_weight_test, sliced_ks_test

__all__ = [
    "GaussianMixture",
    "DiffusedMixture",
    "ncsn_toy",
    "ring",
    "random_anisotropic",
    "single_gaussian",
    "TARGETS",
    "TestResult",
    "sliced_ks_test",
    "log_density_ks_test",
    "energy_test",
    "energy_distance",
    "mode_weight_test",
    "check_sampler",
    "SamplerReport",
    "run_checks",
    "format_table",
    "Row",
    "CHECKS",
]
