"""gg.distributed's NCCL path on a real GPU: a world of one through NCCL (one GPU cannot host two
NCCL ranks). The sum over one rank is the buffer itself, so DataParallel must leave training
exactly as it is, while every bucket really goes through ncclAllReduce on the side stream.
Skips without a usable GPU, or without NCCL's library (pip install nvidia-nccl-cu12/-cu13)."""
import numpy as np
import pytest

import gpugrad as gg
import gpugrad.distributed as dist
from gpugrad import nn, optim
from gpugrad.distributed import nccl as dist_nccl
from gpugrad.distributed.world import World


@pytest.fixture(scope="module")
def nccl_comm(cp):
    world = World()
    dist_nccl.select_gpu(world, required=True)
    try:
        dist_nccl.load_nccl(required=True)
    except gg.DeviceError as e:
        pytest.skip(str(e))
    return dist_nccl.create(world, required=True)


def _twins(cp):
    gg.manual_seed(0)
    model = nn.mlp([32, 64, 64, 10], dtype=np.float64, device="cuda")
    ref = nn.mlp([32, 64, 64, 10], dtype=np.float64, device="cuda")
    ref.load_state_dict(model.state_dict())
    return model, ref


def _batches():
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((16, 32)), rng.integers(0, 10, 16)) for _ in range(5)]


def _eager(model, opt, x, y):
    loss = gg.cross_entropy(model(gg.tensor(x, device="cuda")), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_eager_training_through_nccl_buckets_is_unchanged(cp, nccl_comm):
    model, ref = _twins(cp)
    dp = dist.DataParallel(model, bucket_mb=0.01, comm=nccl_comm)
    assert len(dp.buckets) >= 3 and isinstance(dp.buckets[0].buf, cp.ndarray)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_ref = optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for x, y in _batches():
        _eager(dp, opt, x, y)
        _eager(ref, opt_ref, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=0, atol=1e-10)
    dp.close()


def test_executor_gradients_reduced_in_place_and_captured(cp, nccl_comm):
    model, ref = _twins(cp)
    dp = dist.DataParallel(model, bucket_mb=0.01, comm=nccl_comm)
    dp.close()  # the Executor computes its gradients itself
    ex = gg.Executor(model, optimizer=None)
    opt = optim.Adam(model.parameters(), lr=0.01)
    opt_ref = optim.Adam(ref.parameters(), lr=0.01)
    for x, y in _batches():
        ex.step(x, y)
        arrays = [p.grad.data for p in model.parameters()]
        assert dp.reduce_gradients(arrays) is arrays
        opt.step()
        _eager(ref, opt_ref, x, y)
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=0, atol=1e-10)
    # the reduction of the same buckets, captured into a CUDA graph and replayed: a replay
    # reads the arrays' values of that moment into the buckets and writes the sums back
    arrays = [cp.zeros(p.shape) for p in model.parameters()]
    bk = gg.backend.get_backend("cuda")
    try:
        graph = bk.capture(lambda: dp.reduce_gradients(arrays))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"this NCCL cannot be captured into a CUDA graph: {type(e).__name__}: {e}")
    assert graph.allocated_bytes == 0
    for step in range(2):
        values = [np.random.default_rng((step, i)).standard_normal(a.shape)
                  for i, a in enumerate(arrays)]
        for a, v in zip(arrays, values):
            a.set(v)
        for b in dp.buckets:
            b.buf.fill(0)
        graph.launch()
        bk.synchronize()
        for a, v in zip(arrays, values):
            np.testing.assert_array_equal(a.get(), v)
        for b in dp.buckets:
            for k, (i, *_rest) in enumerate(b.slots):
                np.testing.assert_array_equal(b.view(k).get(), values[i])


def test_all_reduce_and_broadcast_of_device_arrays(cp, nccl_comm):
    a = cp.arange(6, dtype=cp.float32)
    assert nccl_comm.allreduce_(a) is a and nccl_comm.bcast_(a, 0) is a
    cp.cuda.get_current_stream().synchronize()
    np.testing.assert_array_equal(a.get(), np.arange(6, dtype=np.float32))
