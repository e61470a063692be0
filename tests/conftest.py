from __future__ import annotations

import pytest
import torch

import sdescore as sds

SDES = {
    "VE": lambda: sds.VESDE(sigma_min=0.01, sigma_max=50.0),
    "VP": lambda: sds.VPSDE(beta_min=0.1, beta_max=20.0),
    "subVP": lambda: sds.SubVPSDE(beta_min=0.1, beta_max=20.0),
}


@pytest.fixture(params=list(SDES), ids=list(SDES))
def sde(request):
    return SDES[request.param]()


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype, restoring the previous default afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def pytest_configure(config):
    # one thread: the suite's timings stay stable when other processes share the two cores
    torch.set_num_threads(1)
