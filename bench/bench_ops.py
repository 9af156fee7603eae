"""Single ops, forward + backward through gpugrad's public ops (eager) and PyTorch's, at small /
medium / large sizes on cpu and cuda: matmul, an elementwise chain ((x*a)+b).tanh()*c, sigmoid,
softmax cross-entropy (mean); issue 2's eager overhead (a 1,000-op chain of 16-element float32
tensors, forward + backward: extra_info us_per_op); host <-> device copies of a batch (cuda).

Gradients are reset before every call (no accumulation). The callables come from
gpugrad.bench.workloads, which documents the bytes / FLOPs each op is credited with.
"""
import pytest

from gpugrad.bench import workloads as wl
from gpugrad.bench.timing import Unavailable

QUICK_CHAIN_OPS = 100
_REPORT_NAME = {"eager": "gpugrad"}  # bench/report.py compares every impl with "gpugrad"


def _build(make):
    try:
        return make()
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("impl", wl.OP_IMPLS)
@pytest.mark.parametrize("size_name", ["small", "medium", "large"])
@pytest.mark.parametrize("op", list(wl.OP_SIZES))
def test_op(benchmark, measure, quick, op, size_name, impl, device):
    if quick and size_name != "small":
        pytest.skip("quick mode runs the small size")
    size = wl.OP_SIZES[op][size_name]
    fn = _build(lambda: wl.op_call(op, impl, device, size))
    kind, amount = wl.op_rate(op, size)
    shape = "x".join(map(str, size)) if isinstance(size, tuple) else str(size)
    benchmark.group = f"{op} {size_name} ({shape})"
    measure(fn, bytes_moved=amount if kind == "bytes" else None, device=device, op=op,
            shape=shape, dtype="float32", impl=_REPORT_NAME.get(impl, impl),
            **({"flops": amount} if kind == "flop" else {}))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("impl", wl.OP_IMPLS)
def test_eager_overhead(benchmark, measure, quick, impl, device):
    ops = QUICK_CHAIN_OPS if quick else wl.CHAIN_OPS
    fn = _build(lambda: wl.eager_chain(impl, device, ops=ops))
    benchmark.group = f"eager overhead: {ops}-op chain, {wl.CHAIN_SIZE} floats, fwd+bwd"
    measure(fn, device=device, op="eager_chain", shape=f"{ops}x{wl.CHAIN_SIZE}",
            dtype="float32", impl=_REPORT_NAME.get(impl, impl), ops=ops)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["us_per_op"] = stats.stats.median / ops * 1e6


@pytest.mark.parametrize("impl", ["gpugrad", "torch"])
@pytest.mark.parametrize("direction", ["h2d", "d2h"])
def test_host_device_copy(benchmark, measure, impl, direction):
    fn = _build(lambda: wl.copy_call(direction, impl, "cuda"))
    benchmark.group = "host <-> device copy, 4096x784 float32"
    measure(fn, bytes_moved=wl.copy_bytes(), device="cuda", op=f"copy_{direction}",
            shape="4096x784", dtype="float32", impl=impl)
