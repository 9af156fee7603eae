"""Timing for `gpugrad bench`: contenders interleaved in one process, medians of many rounds.

Why interleaved: the machines this runs on are shared and noisy. Timing A for a while and then B
lets a burst of someone else's load land on one of them; taking turns (A, B, C, A, B, C, ...,
starting each round with the next contender) spreads the noise over all of them, and the median
of the rounds drops the bursts.

Warm caches: in a training loop a step follows the previous step of the same model, not another
library's. A contender whose call is short (under REWARM_BELOW_S) therefore gets one untimed call
right before each timed sample, so the caches another contender just evicted are not charged to
it (measured here: without it, whichever contender follows PyTorch in the rotation looks ~7%
slower at batch 64).

GPU: each sample is `inner` back-to-back calls followed by a device synchronize, timed on the
host (perf_counter), so microsecond kernels are not timed at launch resolution and queued work is
always counted (a call that only launches would otherwise look free).
"""
import os
import statistics
import time

TARGET_SAMPLE_S = 2e-3  # back-to-back calls per sample: enough to last this long
MAX_INNER = 1000
REWARM_BELOW_S = 0.02   # calls shorter than this get an untimed call before each sample


class Unavailable(Exception):
    """A contender that cannot run here (no GPU, no PyTorch, no graphs on the CPU): the reason."""


def set_threads(n):
    """Use `n` threads in NumPy's BLAS and in PyTorch alike, so both libraries get the same cores.
    Returns a note saying what was set (threadpoolctl pins NumPy's BLAS; without it the BLAS
    keeps its own default, which the note says)."""
    notes = []
    try:
        import torch
        torch.set_num_threads(n)
        notes.append(f"PyTorch {n}")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)  # every BLAS/OpenMP pool loaded so far (NumPy's, and PyTorch's)
        notes.append(f"NumPy BLAS {n}")
    except ImportError:
        notes.append("NumPy BLAS: its default (install threadpoolctl to pin it)")
    return ", ".join(notes)


def default_threads():
    """GPUGRAD_BENCH_THREADS, else every core this process may run on."""
    env = os.environ.get("GPUGRAD_BENCH_THREADS", "").strip()
    if env:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def interleaved(contenders, sync=None, min_rounds=7, budget_s=3.0, max_rounds=200, warmup=2):
    """Median seconds per call of each zero-argument callable in `contenders` (name -> fn).

    Rounds continue until every contender has `min_rounds` samples and `budget_s` has passed
    (or `max_rounds`). `sync` (e.g. a device synchronize) ends every sample.
    """
    sync = sync or (lambda: None)
    names = list(contenders)
    inner = {}
    for name in names:
        fn = contenders[name]
        for _ in range(warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        once = time.perf_counter() - t0
        calls = max(1, min(MAX_INNER, int(TARGET_SAMPLE_S / max(once, 1e-9))))
        inner[name] = (calls, once < REWARM_BELOW_S)  # (calls per sample, warm call first?)
    samples = {name: [] for name in names}
    start, rounds = time.perf_counter(), 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
        k = rounds % len(names)
        for name in names[k:] + names[:k]:  # a different contender goes first each round
            fn, (n, rewarm) = contenders[name], inner[name]
            if rewarm:
                fn()
                sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / n)
        rounds += 1
    return {name: statistics.median(s) for name, s in samples.items()}


def device_sync(device):
    """A function that waits for all queued work on `device` (CuPy's and PyTorch's alike)."""
    if device != "cuda":
        return None
    import cupy
    return cupy.cuda.runtime.deviceSynchronize


def gpu_references(quick):
    """The card's measured ceilings, in this run: device-to-device copy bandwidth (bytes/s, read
    + write counted) and float32 matmul rate (FLOP/s, CuPy/cuBLAS, no TF32)."""
    import cupy
    import numpy as np
    sync = cupy.cuda.runtime.deviceSynchronize
    nbytes = (64 if quick else 512) * 2**20
    src, dst = cupy.empty(nbytes // 2, np.uint8), cupy.empty(nbytes // 2, np.uint8)
    copy = interleaved({"copy": lambda: dst.data.copy_from_device_async(src.data, nbytes // 2)},
                       sync, min_rounds=5, budget_s=0.5)["copy"]
    n = 4096 if quick else 8192
    a = cupy.ones((n, n), np.float32)
    c = cupy.empty((n, n), np.float32)
    mm = interleaved({"mm": lambda: cupy.matmul(a, a, out=c)}, sync, min_rounds=5,
                     budget_s=0.5)["mm"]
    return {"copy_bytes_per_s": nbytes / copy, "matmul_flop_per_s": 2 * n ** 3 / mm,
            "copy_bytes": nbytes, "matmul_n": n}
