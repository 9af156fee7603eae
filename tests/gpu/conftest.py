"""Fixtures for the GPU tests. Every test module here skips itself, with the reason
(gg.cuda.unavailable_reason()), where no CUDA GPU is usable."""
import numpy as np
import pytest

import gpugrad as gg


@pytest.fixture(scope="session")
def cp():
    """The cupy module (the tests only run where gg.cuda.is_available())."""
    if not gg.cuda.is_available():
        pytest.skip(f"needs a usable CUDA GPU: {gg.cuda.unavailable_reason()}")
    import cupy
    return cupy


@pytest.fixture
def on_cuda():
    """Make "cuda" the default device for one test."""
    gg.set_device("cuda")
    yield
    gg.set_device("cpu")


@pytest.fixture
def host_rng():
    """Test data is drawn on the host, so the GPU and the NumPy reference see the same values."""
    return np.random.default_rng(20240601)
