"""What allocating every op's output costs a CPU training step (issue 11), measured two ways.

The Executor replays the ops' own forward and backward, which allocate their outputs (the ops
take no output buffers); the hand-written floor (gpugrad/bench/floor.py) preallocates everything.

1. bytes, with tracemalloc after warm-up: the peak allocated above the baseline during one step
   (the memory a step needs beyond what is held between steps: the previous step's gradients
   are part of the baseline and freed early, so the new ones only count where they coexist with
   activations) and what one step leaves allocated, for the Executor, the eager path and the
   floor;
2. time: the floor against FloorAllocating, the same NumPy calls in the same order but with every
   batch-sized output and gradient fresh, as the ops make them (the update stays in place, as
   gpugrad's optimizers do), interleaved as `gpugrad bench` times contenders. Their difference
   is what allocation costs a step, shown beside the Executor's whole gap to the floor.

    taskset -c 1 python bench/alloc_cost.py [--seconds S] [--batches 64 512] [--quick]
"""
import argparse
import statistics
import tracemalloc

import numpy as np

from gpugrad.bench import workloads as wl
from gpugrad.bench.floor import FloorMLP, he_init
from gpugrad.bench.timing import interleaved, set_threads

SIZES, QUICK_SIZES = (784, 256, 256, 10), (64, 32, 32, 10)


class FloorAllocating(FloorMLP):
    """FloorMLP's step with a fresh array for every output, as gpugrad's ops allocate them."""

    def step(self, x, y):
        w, b = self.w, self.b
        self.grads = None  # last step's gradients are freed first, as the Executor frees them
        last = len(w) - 1
        inputs = [x]  # each layer's input, kept for its weight gradient
        for i in range(last + 1):
            z = np.matmul(inputs[-1], w[i]) + b[i]
            inputs.append(np.maximum(z, 0) if i < last else z)
        g = inputs.pop()
        loss = self._softmax_xent_in_place(g, y)  # the logits are fresh: no extra copy needed
        dw, db = [None] * len(w), [None] * len(w)
        for i in range(last, -1, -1):
            dw[i] = np.matmul(inputs[i].T, g)
            db[i] = g.sum(axis=0)
            if i:
                g = np.matmul(g, w[i].T) * (inputs[i] > 0)
        self.grads = dw + db
        self._sgd_momentum()
        return float(loss)


def traced_bytes(step, steps=5):
    """(median peak above the baseline during a step, median bytes a step leaves allocated)."""
    for _ in range(3):
        step()
    tracemalloc.start()
    peaks, kept = [], []
    try:
        for _ in range(steps):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            step()
            now, peak = tracemalloc.get_traced_memory()
            peaks.append(peak - before)
            kept.append(now - before)
    finally:
        tracemalloc.stop()
    return statistics.median(peaks), statistics.median(kept)


def contenders(sizes, n):
    x, y = wl.batch(sizes, n)
    alloc = FloorAllocating(sizes, n, wl.LR, wl.MOMENTUM, params=he_init(sizes))
    out = {impl: wl.train_step(impl, "cpu", sizes, n) for impl in ("executor", "eager", "floor")}
    out["floor, allocating"] = lambda: alloc.step(x, y)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--quick", action="store_true", help="a tiny model, for a smoke test")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    print(f"model {'-'.join(map(str, sizes))}, float32; threads: {set_threads(1)}")
    for n in args.batches:
        fns = contenders(sizes, n)
        print(f"\nbatch {n}: bytes allocated per step after warm-up (tracemalloc)")
        for impl, fn in fns.items():
            peak, kept = traced_bytes(fn)
            print(f"  {impl:18s} peak above baseline {peak / 1e3:9.1f} kB, left allocated "
                  f"{kept / 1e3:7.1f} kB")
        t = interleaved(fns, budget_s=args.seconds, max_rounds=10**6)
        floor = t["floor"]
        print(f"batch {n}: median step time (interleaved)")
        for impl, s in t.items():
            print(f"  {impl:18s} {s * 1e6:9.1f} us  {s / floor:.3f}x the floor")
        print(f"  allocation costs the floor {(t['floor, allocating'] - floor) * 1e6:.1f} us a "
              f"step; the Executor's whole gap to it is {(t['executor'] - floor) * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
