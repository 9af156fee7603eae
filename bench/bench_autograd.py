"""Higher-order and forward-mode derivatives of a ReLU MLP's loss, gpugrad against PyTorch:

    hvp       Hessian-vector product of the mean cross-entropy with respect to all parameters:
              gg.autograd.hvp vs torch.autograd.functional.hvp (both reverse over reverse)
    jvp       forward mode along a direction in parameter space (every parameter has a tangent),
              gg.autograd.jvp of the logits vs torch.func.jvp, and against the plain forward
              pass of the same MLP (the issue's bound: a jvp costs at most 3x a forward)

    pytest bench/bench_autograd.py             # pytest-benchmark groups, cpu and cuda
    python bench/bench_autograd.py [rounds]    # interleaved medians and ratios, one thread

784-256-256-10 at batch 64 (--quick: 64-32-32-10 at batch 16), float32, fixed weights and data.
"""
import os
import statistics
import sys
import time

import numpy as np
import pytest

from gpugrad.bench.floor import he_init
from gpugrad.bench.timing import Unavailable
from gpugrad.bench.workloads import _gg, _torch, batch

SIZES, N = (784, 256, 256, 10), 64
QUICK_SIZES, QUICK_N = (64, 32, 32, 10), 16
IMPLS = ("gpugrad", "torch")


def _problem(sizes, n, seed=0):
    x, y = batch(sizes, n, seed)
    params = [a for w, b in he_init(sizes, seed) for a in (w, b)]
    rng = np.random.default_rng(seed + 1)
    direction = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    return x, y, params, direction


def _mlp(x):
    """The MLP's logits as a function of its parameters (W1, b1, W2, b2, ...): the same code
    for gpugrad Tensors and PyTorch tensors."""
    def logits(*params):
        h = x
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i + 2 < len(params):
                h = h.relu()
        return h
    return logits


def call(kind, impl, device, sizes=SIZES, n=N):
    """A no-argument function computing one `kind` ("hvp", "jvp", "forward") with `impl`,
    synchronised (the result read back)."""
    x, y, params, direction = _problem(sizes, n)
    if impl == "torch":
        torch = _torch(device)
        to = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        xt, yt = to(x), to(y)
        ps, vs = tuple(map(to, params)), tuple(map(to, direction))
        logits = _mlp(xt)
        loss = lambda *p: torch.nn.functional.cross_entropy(logits(*p), yt)  # noqa: E731
        if kind == "hvp":
            return lambda: torch.autograd.functional.hvp(loss, ps, vs)[1][0].sum().item()
        if kind == "jvp":
            return lambda: torch.func.jvp(logits, ps, vs)[1].sum().item()
        with torch.no_grad():
            return lambda: logits(*ps).sum().item()
    gg = _gg(device)
    to = lambda a: gg.tensor(a, device=device)  # noqa: E731
    xt, yt = to(x), to(y)
    ps, vs = tuple(map(to, params)), tuple(map(to, direction))
    logits = _mlp(xt)
    loss = lambda *p: gg.cross_entropy(logits(*p), yt)  # noqa: E731
    if kind == "hvp":
        return lambda: gg.autograd.hvp(loss, ps, vs)[1][0].sum().item()
    if kind == "jvp":
        return lambda: gg.autograd.jvp(logits, ps, vs)[1].sum().item()
    return lambda: logits(*ps).sum().item()


def _quick(config):
    return config.getoption("--quick") or os.environ.get("GPUGRAD_BENCH_QUICK", "0") not in (
        "", "0")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["hvp", "jvp", "forward"])
def test_autograd(benchmark, measure, request, kind, impl, device):
    sizes, n = (QUICK_SIZES, QUICK_N) if _quick(request.config) else (SIZES, N)
    try:
        fn = call(kind, impl, device, sizes, n)
    except Unavailable as e:
        pytest.skip(str(e))
    shape = f"{'-'.join(map(str, sizes))}-b{n}"
    benchmark.group = f"{kind} {shape}"
    measure(fn, device=device, op=kind, shape=shape, dtype="float32", impl=impl)


def main(rounds):
    """Interleaved medians on the CPU with one thread per library: the issue's two ratios."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    import torch
    torch.set_num_threads(1)
    fns = {(k, i): call(k, i, "cpu") for k in ("hvp", "jvp", "forward") for i in IMPLS}
    for f in fns.values():
        for _ in range(3):
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    m = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"784-256-256-10, batch 64, float32, CPU, 1 thread, median of {rounds} interleaved "
          f"rounds (ms)")
    for kind in ("hvp", "jvp", "forward"):
        print(f"  {kind:8s} gpugrad {m[kind, 'gpugrad']:7.3f}  torch {m[kind, 'torch']:7.3f}  "
              f"gpugrad/torch {m[kind, 'gpugrad'] / m[kind, 'torch']:.2f}")
    print(f"  hvp gpugrad/torch: {m['hvp', 'gpugrad'] / m['hvp', 'torch']:.2f} (bound 1.5); "
          f"jvp / forward, gpugrad: {m['jvp', 'gpugrad'] / m['forward', 'gpugrad']:.2f} "
          f"(bound 3); torch: {m['jvp', 'torch'] / m['forward', 'torch']:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
