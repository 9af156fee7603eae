"""Shared benchmark fixtures (pytest-benchmark).

    pytest bench                        # every bench_*.py; CPU: NumPy paths; GPU: CUDA paths
    pytest bench --quick                # tiny sizes (or GPUGRAD_BENCH_QUICK=1), for CI
    pytest bench --benchmark-json=a.json     # save a run (or --benchmark-autosave), then
    pytest-benchmark compare a.json b.json --group-by=group --columns=median,iqr,rounds
    GPUGRAD_BENCH_THREADS=1 pytest bench     # NumPy's BLAS and PyTorch pinned to 1 thread each

bench_train.py and bench_ops.py take an explicit `device` parameter (cpu, cuda; cuda skipped with
the reason without a GPU) and put every device and contender of one workload in one
pytest-benchmark group, so its CPU and GPU rows sit side by side.

`measure(fn, bytes_moved=..., **info)` is the one entry point: on a GPU it times `fn` with CUDA
events after a warm-up (median of rounds; a round is enough back-to-back calls to last ~2 ms, so
tiny kernels are not timed at event resolution), measures a device-to-device copy of the same
number of bytes as the bandwidth reference, and records both in `benchmark.extra_info` (read by
bench/report.py); pytest-benchmark's own wall-clock statistics run on top with a synchronize
inside the timed function. On the CPU it is plain pytest-benchmark.
"""
import os
import statistics

import numpy as np
import pytest


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py (pytest's default pattern is test_*.py), so `pytest bench` runs them."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):  # named on the command line: collected
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="tiny sizes (also GPUGRAD_BENCH_QUICK=1), for CI smoke runs")


@pytest.fixture(scope="session")
def quick(request):
    return request.config.getoption("--quick") or os.environ.get(
        "GPUGRAD_BENCH_QUICK", "0") not in ("", "0")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """The same thread count for NumPy's BLAS and PyTorch (GPUGRAD_BENCH_THREADS, else every
    core): the libraries are compared on the same cores."""
    from gpugrad.bench.timing import default_threads, set_threads
    set_threads(default_threads())


@pytest.fixture(scope="session")
def cp():
    """The cupy module when a CUDA GPU is usable, else None."""
    import gpugrad as gg
    if not gg.cuda.is_available():
        return None
    import cupy
    return cupy


def cuda_seconds(cp, fn, warmup=5, rounds=15, round_s=2e-3):
    """Median seconds per call of fn, from CUDA events on the current stream (CuPy's and
    PyTorch's default stream alike: both use the legacy default stream)."""
    for _ in range(warmup):
        fn()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    once = cp.cuda.get_elapsed_time(start, end) / 1e3
    inner = int(min(1000, max(1, round_s / max(once, 1e-7))))
    times = []
    for _ in range(rounds):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3 / inner)
    return statistics.median(times)


_copy_cache = {}


def copy_bandwidth(cp, bytes_moved):
    """Bytes per second of a device-to-device copy (cudaMemcpyAsync) that reads bytes_moved / 2
    and writes as much: the same traffic as the kernel it is compared with."""
    half = max(1, bytes_moved // 2)
    if half not in _copy_cache:
        src, dst = cp.empty(half, np.uint8), cp.empty(half, np.uint8)
        t = cuda_seconds(cp, lambda: dst.data.copy_from_device_async(src.data, half))
        _copy_cache[half] = 2 * half / t
    return _copy_cache[half]


@pytest.fixture
def measure(benchmark, cp):
    """measure(fn, bytes_moved=None, device=None, **info). device None: CUDA when a GPU is
    usable, else CPU (the kernel suite); "cpu"/"cuda": that device explicitly."""
    def run(fn, bytes_moved=None, device=None, **info):
        if device == "cuda" and cp is None:
            pytest.skip("needs a usable CUDA GPU")
        if cp is None or device == "cpu":
            benchmark.extra_info.update(info, device="cpu", bytes=bytes_moved)
            benchmark(fn)
            stats = getattr(benchmark, "stats", None)
            if bytes_moved and stats is not None:
                median = stats.stats.median
                benchmark.extra_info.update(median_s=median, gbps=bytes_moved / median / 1e9)
            return
        t = cuda_seconds(cp, fn)
        extra = dict(info, device="cuda", median_s=t, timer="cuda-events")
        if bytes_moved:
            copy = copy_bandwidth(cp, bytes_moved)
            extra.update(bytes=bytes_moved, gbps=bytes_moved / t / 1e9, copy_gbps=copy / 1e9,
                         frac_of_copy=bytes_moved / t / copy)
        benchmark.extra_info.update(extra)
        stream = cp.cuda.get_current_stream()
        benchmark.pedantic(lambda: (fn(), stream.synchronize()), rounds=20, warmup_rounds=3)
    return run
