"""`gpugrad bench`: CPU vs GPU vs PyTorch vs hand-written NumPy, side by side, in one process.

    gpugrad bench [--device auto|cpu|cuda|all] [--quick] [--threads N] [--seconds S]

Self-contained (the pytest-benchmark suites in bench/ are not installed with the wheel; they
import the workloads from here). Every workload's contenders run interleaved on each device
(timing.interleaved) and one table per workload shows the medians and their ratios
(table.render). NumPy's BLAS and PyTorch use the same number of threads (--threads, default
GPUGRAD_BENCH_THREADS or every core this process may use), stated in the header.
"""
import datetime
import platform
import time

from . import workloads as wl
from .table import Workload, render
from .timing import (Unavailable, default_threads, device_sync, gpu_references, interleaved,
                     set_threads)

TRAIN_MODELS = ((784, 256, 256, 10), (784, 1024, 1024, 10))
TRAIN_BATCHES = (64, 512, 4096)
RESIDUAL_MODEL = (784, 256, 256, 256, 10)  # input layer, 2 residual blocks, output layer


def plan(quick):
    """The workloads: train steps, the eager-overhead chain, one size of each op, copies."""
    models, batches = (TRAIN_MODELS[:1], TRAIN_BATCHES[:1]) if quick else (TRAIN_MODELS,
                                                                              TRAIN_BATCHES)
    out = []
    for sizes in models:
        for n in batches:
            out.append(Workload(
                f"train step {'-'.join(map(str, sizes))}, batch {n} (ReLU MLP, mean "
                f"cross-entropy, SGD momentum, float32; data on the device)", wl.TRAIN_IMPLS,
                lambda impl, dev, s=sizes, n=n: wl.train_step(impl, dev, s, n),
                ("flop", wl.train_flops(sizes, n)), "matmul"))
    if not quick:
        sizes = RESIDUAL_MODEL
        for n in TRAIN_BATCHES[:2]:
            out.append(Workload(
                f"train step, residual MLP {sizes[0]}-{sizes[1]}-[{len(sizes) - 3} blocks "
                f"h + relu(linear(h))]-{sizes[-1]}, batch {n} (a user-defined Module; mean "
                f"cross-entropy, SGD momentum, float32)", wl.TRAIN_IMPLS,
                lambda impl, dev, s=sizes, n=n: wl.train_step(impl, dev, s, n, residual=True),
                ("flop", wl.train_flops(sizes, n)), "matmul"))
    ops = 100 if quick else wl.CHAIN_OPS
    out.append(Workload(f"eager overhead: forward + backward through a {ops}-op chain of "
                        f"{wl.CHAIN_SIZE}-element float32 tensors (time per op)", wl.OP_IMPLS,
                        lambda impl, dev: wl.eager_chain(impl, dev, ops=ops), per=ops,
                        unit="/op"))
    size_name = "small" if quick else "large"
    titles = {"matmul": "matmul {0}x{0} @ {0}x{0}", "chain": "elementwise chain "
              "((x*a)+b).tanh()*c, {0:,} floats", "sigmoid": "sigmoid, {0:,} floats",
              "xent": "softmax cross-entropy (mean), {0[0]}x{0[1]} logits"}
    for op, title in titles.items():
        size = wl.OP_SIZES[op][size_name]
        kind, amount = wl.op_rate(op, size)
        out.append(Workload(title.format(size) + ", forward + backward", wl.OP_IMPLS,
                            lambda impl, dev, op=op, size=size: wl.op_call(op, impl, dev, size),
                            (kind, amount), "matmul" if kind == "flop" else "copy"))
    for direction, title in (("h2d", "host -> device"), ("d2h", "device -> host")):
        out.append(Workload(f"{title} copy of a 4096x784 float32 batch (12.8 MB)",
                            ("gpugrad", "torch"),
                            lambda impl, dev, d=direction: wl.copy_call(d, impl, dev),
                            ("bytes", wl.copy_bytes())))
    return out


def _devices(device):
    import gpugrad as gg
    if device == "auto":
        return ["cuda" if gg.cuda.is_available() else "cpu"], None
    if device == "cuda" and not gg.cuda.is_available():
        return [], f"no usable CUDA GPU: {gg.cuda.unavailable_reason()}"
    if device == "all":
        if gg.cuda.is_available():
            return ["cpu", "cuda"], None
        return ["cpu"], f"cuda skipped: {gg.cuda.unavailable_reason()}"
    return [device], None


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(device="all", quick=False, threads=None, seconds=None):
    """Run every workload on the chosen devices and print its table; returns 0. Raises
    DeviceError (the CLI's one-line error, exit status 2) when --device cuda is unusable."""
    import gpugrad as gg
    devices, note = _devices(device)
    if not devices:
        raise gg.DeviceError(f"bench: {note}")
    threads = threads or default_threads()
    print(f"gpugrad bench{' --quick' if quick else ''}: gpugrad {gg.__version__}, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"cpu: {_cpu_name()}; threads: {set_threads(threads)}")
    refs = None
    if "cuda" in devices:
        refs = gpu_references(quick)
        print(f"cuda: {gg.cuda.device_name()}; measured now: device copy "
              f"{refs['copy_bytes_per_s'] / 1e9:,.0f} GB/s, float32 matmul "
              f"{refs['matmul_flop_per_s'] / 1e12:.1f} TFLOP/s (n={refs['matmul_n']})")
    if note:
        print(note)
    budget = dict(min_rounds=3, budget_s=seconds or 0.2, warmup=1) if quick else \
        dict(min_rounds=7, budget_s=seconds or 3.0)
    skipped, start = {}, time.perf_counter()
    for w in plan(quick):
        for dev in devices:
            fns = {}
            for impl in w.impls:
                try:
                    fns[impl] = w.build(impl, dev)
                except Unavailable as e:
                    skipped.setdefault(str(e), []).append(f"{impl} on {dev}")
            if fns:
                w.medians.update(((impl, dev), t) for impl, t in
                                 interleaved(fns, device_sync(dev), **budget).items())
            del fns  # free this device's buffers before the next
        if w.medians:
            print()
            print(render(w, refs))
    print()
    for reason, who in skipped.items():
        print(f"not run ({reason}): {', '.join(sorted(set(who)))}")
    print(f"gpugrad bench: done in {time.perf_counter() - start:.0f} s")
    return 0
