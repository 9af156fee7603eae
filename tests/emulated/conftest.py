"""Fixtures of the emulated kernel tests: kernels/*.cu compiled by g++ under cuemu (once per
session, in parallel, cached by content hash in $CUEMU_CACHE) and fakecupy standing in for CuPy
behind gpugrad.kernels' launchers. Every test here is marked `emulated` (pytest -m emulated) and
skips, saying why, where there is no C++ compiler."""
import platform
import shutil

import pytest

from gpugrad import kernels

from .cuemu import cuemu, fakecupy


@pytest.fixture(scope="session", autouse=True)
def _compiler():
    cxx = cuemu.compiler()
    if shutil.which(cxx) is None:
        pytest.skip(f"the emulated kernel tests need a C++17 compiler: {cxx!r} not found "
                    "(apt-get install g++, or set CXX)")
    if platform.system() != "Linux":
        pytest.skip("the kernel emulator (tests/emulated/cuemu) runs on Linux only")


@pytest.fixture(scope="session")
def sources():
    """{file name: source text} of kernels/*.cu."""
    return {p.name: p.read_text() for p in kernels.kernel_files()}


@pytest.fixture(scope="session")
def modules(sources):
    """{file name: cuemu.Module}, compiled side by side on first use."""
    cuemu.compile_many([(text, name) for name, text in sources.items()])
    return {name: cuemu.Module(text, name) for name, text in sources.items()}


@pytest.fixture(scope="module")
def cp(modules):
    """fakecupy behind gpugrad.kernels' launchers for one test module (2 SMs: the elementwise
    grids are small enough that their grid-stride loops run); put back afterwards."""
    with fakecupy.installed(kernels, sms=2) as fake:
        yield fake
