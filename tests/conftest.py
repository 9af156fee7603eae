"""Shared test helpers: optional PyTorch oracle, seeded generators, device reset."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import backend


@pytest.fixture(autouse=True)
def _reset_default_device():
    """Each test starts on the CPU default device and leaves it there."""
    backend.set_device("cpu")
    yield
    backend.set_device("cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def torch():
    """PyTorch as an independent oracle; tests that use it skip where it is not installed."""
    return pytest.importorskip("torch")


def t64(rng, *shape, positive=False, requires_grad=True):
    """A float64 tensor of random values (optionally bounded away from 0 for log/sqrt/div)."""
    a = rng.standard_normal(shape)
    if positive:
        a = np.abs(a) + 0.5
    return gg.tensor(a, requires_grad=requires_grad)
