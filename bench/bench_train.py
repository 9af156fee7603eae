"""One training step (forward, mean cross-entropy, backward, SGD-momentum update) of a ReLU MLP,
784-256-256-10 and 784-1024-1024-10 at batch 64, 512 and 4096, and of a residual MLP
(784-256-[2 blocks of 256]-10, a user-defined Module with x + relu(linear(x)) blocks), on cpu and
cuda:

    executor  gg.Executor                 graph   gg.Executor(cuda_graph=True), CUDA only
    eager     the autograd graph          floor   hand-written NumPy / CuPy (gpugrad.bench.floor)
    torch     PyTorch eager on the same device

Data stays on the device; each timed call ends with the loss read back as a Python float (the
GPU's synchronize). Host <-> device copies are timed apart, in bench_ops.py. The contenders are
built by gpugrad.bench.workloads, the code `gpugrad bench` times too. Every device and contender
of one model and batch size share a pytest-benchmark group.
"""
import os

import pytest

from gpugrad.bench import workloads as wl
from gpugrad.bench.timing import Unavailable

MODELS = {"full": [(784, 256, 256, 10), (784, 1024, 1024, 10)], "quick": [(64, 32, 32, 10)]}
RESIDUAL = {"full": [(784, 256, 256, 256, 10)], "quick": [(64, 32, 32, 32, 10)]}
BATCHES = {"full": [64, 512, 4096], "quick": [16]}


def _cases(kind):
    return [(s, n, False) for s in MODELS[kind] for n in BATCHES[kind]] + \
        [(s, n, True) for s in RESIDUAL[kind] for n in BATCHES[kind]]


def _id(case):
    sizes, n, residual = case
    return f"{'residual-' if residual else ''}{'-'.join(map(str, sizes))}-b{n}"


def pytest_generate_tests(metafunc):
    """The cases of this run, so a test ID names the shape that really runs (quick mode runs a
    small model, not the full sizes)."""
    if "case" in metafunc.fixturenames:
        quick = metafunc.config.getoption("--quick") or os.environ.get(
            "GPUGRAD_BENCH_QUICK", "0") not in ("", "0")
        cases = _cases("quick" if quick else "full")
        metafunc.parametrize("case", cases, ids=[_id(c) for c in cases])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("impl", wl.TRAIN_IMPLS)
def test_train_step(benchmark, measure, case, impl, device):
    sizes, n, residual = case
    try:
        fn = wl.train_step(impl, device, sizes, n, residual=residual)
    except Unavailable as e:
        pytest.skip(str(e))
    benchmark.group = f"train step {_id(case)}"
    measure(fn, device=device, op="train_step", shape=_id(case), dtype="float32",
            impl=impl, model=("residual-" if residual else "") + "-".join(map(str, sizes)),
            batch=n, flops=wl.train_flops(sizes, n))
