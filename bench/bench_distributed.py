"""Data-parallel benchmark (issue 13): gradient all-reduce bandwidth against MPI's own Allreduce,
and 1 vs 2 ranks training the 784-1024-1024-10 ReLU MLP at global batch 1024 on this machine.

    python bench/bench_distributed.py            # launches the worlds itself through mpiexec
    python bench/bench_distributed.py --quick    # small sizes, a few steps (the CI smoke)
    python bench/bench_distributed.py --json results.json
    python bench/bench_distributed.py --gpu      # on a GPU: a world of one through NCCL

Measured, per world (1 rank with 1 and with 2 BLAS threads, 2 ranks with 1 thread each):
- allreduce: one step's gradients (float32, every parameter) reduced by DataParallel's buckets
  (start as in backward, then wait) against one MPI Allreduce (in place, the same bytes) and
  against an MPI Allreduce per bucket; bandwidth = bytes / time (algorithm bandwidth). Also the
  whole `reduce_gradients(arrays)`, which adds the copies into and out of the buckets.
- training: steps/s of the eager step (DataParallel) and of the Executor around it, at a global
  batch of 1024 (1024 / ranks per rank); the best of several timed windows after a warm-up (the
  machine's cores are shared: interference only adds time, so the minimum is the estimate).
- overlap: backward alone (no reduction), the reduction alone, and backward with the reduction
  in it, interleaved, best of each; hidden = (backward + reduction - backward with it) /
  reduction, clamped to [0, 1].

Under pytest (`pytest bench`, CI's quick run) `test_distributed_bench_quick` runs --quick with 2
ranks and checks the report; it skips without mpiexec and mpi4py.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (784, 1024, 1024, 10)
GLOBAL_BATCH = 1024


def _best_time(fn, reps, barrier=None, inner=1):
    """The fastest of `reps` windows of `inner` calls, per call: this machine's 2 cores are
    shared with other work, and interference only ever adds time."""
    times = []
    for _ in range(reps):
        if barrier:
            barrier()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return min(times)


def worker(quick):
    import gpugrad as gg
    import gpugrad.distributed as dist

    world = dist.init(device="cpu")
    rank, size = world.rank, world.size
    sizes = (64, 128, 128, 10) if quick else SIZES
    batch = (128 if quick else GLOBAL_BATCH) // size
    steps, reps = (3, 3) if quick else (10, 5)
    gg.manual_seed(0)
    rng = np.random.default_rng(rank)
    x = rng.random((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    barrier = world.barrier if size > 1 else None
    out = {"ranks": size, "threads": os.environ.get("OPENBLAS_NUM_THREADS", "all"),
           "model": "-".join(map(str, sizes)), "batch_per_rank": batch}

    def eager(model, opt):
        def step():
            loss = gg.cross_entropy(model(gg.tensor(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    # -- training steps/s ----------------------------------------------------------------------
    for bucket_mb in (25, 1):
        model = gg.nn.mlp(sizes)
        dp = dist.DataParallel(model, bucket_mb=bucket_mb)
        opt = gg.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = eager(dp, opt)
        step()
        t = _best_time(step, reps, barrier, inner=steps)
        out[f"eager_steps_per_s_bucket{bucket_mb}"] = 1 / t
        if bucket_mb == 25:
            ex = gg.Executor(dp, optimizer=opt)
            for _ in range(3):
                ex.step(x, y)
            t = _best_time(lambda: ex.step(x, y), reps, barrier, inner=steps)
            out["executor_steps_per_s"] = 1 / t
        dp.close()

    if size > 1:
        out.update(_overlap(gg, dist, world, sizes, x, y, reps, barrier))
        out.update(_bandwidth(gg, dist, world, sizes, reps, barrier))
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def _overlap(gg, dist, world, sizes, x, y, reps, barrier):
    """Backward alone, the reduction alone, backward with the reduction in it (bucket_mb=1),
    interleaved round by round (this machine's timings drift), medians over the rounds."""
    plain = gg.nn.mlp(sizes)
    model = gg.nn.mlp(sizes)
    dp = dist.DataParallel(model, bucket_mb=1)

    def backward(m):
        loss = gg.cross_entropy(m(gg.tensor(x)), y)
        for p in m.parameters():
            p.grad = None
        barrier()
        t0 = time.perf_counter()
        loss.backward()
        return time.perf_counter() - t0

    def reduction(arrays):
        barrier()
        t0 = time.perf_counter()
        dp.reduce_gradients(arrays)
        return time.perf_counter() - t0

    backward(plain), backward(dp)
    arrays = [p.grad.data.copy() for p in model.parameters()]
    rounds = [(backward(plain), reduction(arrays), backward(dp)) for _ in range(reps * 4)]
    b, r, both = (1e3 * min(col) for col in zip(*rounds))
    dp.close()
    return {"backward_ms": b, "reduction_ms": r, "backward_with_reduction_ms": both,
            "hidden_fraction": min(1.0, max(0.0, (b + r - both) / r)),
            "buckets_bucket1": len(dp.buckets)}


def _bandwidth(gg, dist, world, sizes, reps, barrier):
    """One step's gradients through the buckets vs MPI's Allreduce on the same bytes."""
    from gpugrad.distributed.parallel import HostComm
    mpi = world.mpi
    res = {}
    model = gg.nn.mlp(sizes)
    nbytes = sum(p.data.nbytes for p in model.parameters())
    res["gradient_bytes"] = nbytes
    flat = np.ones(nbytes // 4, np.float32)
    raw = world.dup()
    t_mpi = _best_time(lambda: raw.Allreduce(mpi.IN_PLACE, flat, mpi.SUM), reps * 4, barrier)
    res["mpi_allreduce_GBps"] = nbytes / t_mpi / 1e9
    for bucket_mb in (25, 1):
        dp = dist.DataParallel(model, bucket_mb=bucket_mb)
        dp.close()
        comm = dp.comm
        assert isinstance(comm, HostComm)

        def buckets_only():  # what backward does: start each bucket, then wait for all
            handles = [comm.start(b.buf, b.index) for b in dp.buckets]
            for h in handles:
                comm.wait(h)

        def per_bucket_mpi():
            for b in dp.buckets:
                raw.Allreduce(mpi.IN_PLACE, b.buf, mpi.SUM)

        arrays = [np.ones(p.shape, np.float32) for p in model.parameters()]
        t_b = _best_time(buckets_only, reps * 4, barrier)
        t_pb = _best_time(per_bucket_mpi, reps * 4, barrier)
        t_all = _best_time(lambda: dp.reduce_gradients(arrays), reps * 4, barrier)
        res[f"bucket{bucket_mb}_count"] = len(dp.buckets)
        res[f"bucket{bucket_mb}_GBps"] = nbytes / t_b / 1e9
        res[f"bucket{bucket_mb}_vs_mpi"] = t_mpi / t_b
        res[f"bucket{bucket_mb}_vs_mpi_per_bucket"] = t_pb / t_b
        res[f"bucket{bucket_mb}_reduce_gradients_GBps"] = nbytes / t_all / 1e9
    raw.Free()
    return res


def gpu_worker():
    """A world of one through NCCL on a GPU (one GPU cannot host two NCCL ranks): what the bucket
    machinery costs per step, plain vs DataParallel, at per-GPU batch 128 and 1024."""
    import gpugrad as gg
    import gpugrad.distributed as dist
    from gpugrad.bench.timing import interleaved
    world = dist.init(device="cuda", nccl=True)
    sync = gg.cuda.synchronize
    out = {"device": gg.cuda.device_name(), "world": repr(world),
           "model": "-".join(map(str, SIZES))}

    def rate(step):  # calls per second: gpugrad bench's timing (warm-up, synced samples)
        return 1 / interleaved({"step": step}, sync, budget_s=0.5)["step"]

    for batch in (128, 1024):
        rng = np.random.default_rng(0)
        x = gg.tensor(rng.random((batch, SIZES[0]), dtype=np.float32), device="cuda")
        y = rng.integers(0, SIZES[-1], batch)
        for kind in ("plain", "dp25", "dp1"):
            gg.manual_seed(0)
            model = gg.nn.mlp(SIZES)
            m = model if kind == "plain" else dist.DataParallel(model, bucket_mb=int(kind[2:]))
            opt = gg.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def eager():
                loss = gg.cross_entropy(m(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            out[f"b{batch}_eager_{kind}_steps_per_s"] = rate(eager)
            if kind != "dp1":
                ex = gg.Executor(m, optimizer=opt)
                out[f"b{batch}_executor_{kind}_steps_per_s"] = rate(lambda: ex.step(x.data, y))
            if kind == "dp1":
                arrays = [p.grad.data.copy() for p in model.parameters()]
                out[f"b{batch}_reduce_gradients_ms"] = 1e3 / rate(
                    lambda: m.reduce_gradients(arrays))
                m.close()
    print("RESULT " + json.dumps(out), flush=True)


def launch(ranks, threads, quick):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, __file__, "--worker"] + \
        (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def report(results):
    lines = [f"{'world':<22}{'eager st/s':>11}{'(1MiB bkt)':>11}{'executor st/s':>15}"]
    for r in results:
        lines.append(f"{r['ranks']} rank(s), {r['threads']} thread(s)".ljust(22)
                     + f"{r['eager_steps_per_s_bucket25']:>11.1f}"
                     + f"{r['eager_steps_per_s_bucket1']:>11.1f}"
                     + f"{r['executor_steps_per_s']:>15.1f}")
    for r in results:
        if r["ranks"] > 1:
            lines.append(
                f"all-reduce of one step's gradients ({r['gradient_bytes'] / 2**20:.2f} MiB, "
                f"{r['ranks']} ranks): MPI Allreduce {r['mpi_allreduce_GBps']:.2f} GB/s; "
                f"buckets (25 MiB: {r['bucket25_count']}, 1 MiB: {r['bucket1_count']}) "
                f"{r['bucket25_GBps']:.2f} / {r['bucket1_GBps']:.2f} GB/s = "
                f"{100 * r['bucket25_vs_mpi']:.0f}% / {100 * r['bucket1_vs_mpi']:.0f}% of one "
                f"Allreduce, {100 * r['bucket25_vs_mpi_per_bucket']:.0f}% / "
                f"{100 * r['bucket1_vs_mpi_per_bucket']:.0f}% of an Allreduce per bucket; "
                f"reduce_gradients (with copies) {r['bucket25_reduce_gradients_GBps']:.2f} / "
                f"{r['bucket1_reduce_gradients_GBps']:.2f} GB/s")
            lines.append(
                f"overlap (1 MiB buckets, {r['buckets_bucket1']}): backward "
                f"{r['backward_ms']:.1f} ms, reduction {r['reduction_ms']:.1f} ms, backward with "
                f"it {r['backward_with_reduction_ms']:.1f} ms: {100 * r['hidden_fraction']:.0f}% "
                f"of the reduction hidden")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--gpu", action="store_true",
                   help="on a GPU: a world of one through NCCL, plain vs DataParallel")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.quick)
    if args.gpu:
        return gpu_worker()
    worlds = [(1, 1), (2, 1)] if args.quick else [(1, 2), (1, 1), (2, 1)]
    results = [launch(ranks, threads, args.quick) for ranks, threads in worlds]
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def test_distributed_bench_quick():
    """CI smoke: the benchmark runs with 2 ranks and reports every number."""
    import pytest
    if shutil.which("mpiexec") is None or subprocess.run(
            [sys.executable, "-c", "import mpi4py"], capture_output=True).returncode != 0:
        pytest.skip("needs mpiexec and mpi4py: pip install mpi4py mpich (or '.[mpi]')")
    r = launch(2, 1, quick=True)
    assert r["ranks"] == 2 and 0 <= r["hidden_fraction"] <= 1 and r["bucket1_GBps"] > 0
    assert "all-reduce of one step" in report([launch(1, 1, quick=True), r])


if __name__ == "__main__":
    sys.exit(main())
