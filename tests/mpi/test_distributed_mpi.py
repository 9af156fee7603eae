"""DataParallel against single-process training on the global batch, in whatever world pytest runs
in (see conftest.py): with 2 ranks through mpiexec in CI, as a world of one in the plain run,
where the buckets go through a loopback communicator."""
import numpy as np
import pytest

import gpugrad as gg
import gpugrad.distributed as dist
from gpugrad import nn, optim
from gpugrad.distributed import nccl as dist_nccl

from ._dist_helpers import FakeCuda, FakeNccl, LoopbackComm, identity_op

W, R = dist.world_size(), dist.rank()
SIZES = [12, 24, 16, 5]
BATCH = 6  # per rank


def _comm():
    return LoopbackComm() if W == 1 else None  # None: DataParallel's own (MPI) communicator


def _setup(bucket_mb=0.0005, comm=None):
    gg.manual_seed(100 + R)  # a different initialisation on each rank: rank 0's must win
    model = nn.mlp(SIZES, dtype=np.float64)
    dp = dist.DataParallel(model, bucket_mb=bucket_mb, comm=comm or _comm())
    ref = nn.mlp(SIZES, dtype=np.float64)
    ref.load_state_dict(model.state_dict())
    return dp, model, ref


def _data():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((BATCH * W * 7, SIZES[0]))
    return x, rng.integers(0, SIZES[-1], len(x))


def _step(model, opt, xb, yb):
    loss = gg.cross_entropy(model(gg.tensor(xb)), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _gathered(model):
    return dist.get_world().allgather_object([p.numpy() for p in model.parameters()])


def _check(model, ref):
    every = _gathered(model)
    for theirs in every[1:]:  # identical on every rank, bit for bit
        for a, b in zip(every[0], theirs):
            np.testing.assert_array_equal(a, b)
    for p, q in zip(model.parameters(), ref.parameters()):  # = one process, global batch
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=0, atol=1e-10)


def _train(make_opt, engine="eager", steps=5, comm=None):
    dp, model, ref = _setup(comm=comm)
    opt, opt_ref = make_opt(model.parameters()), make_opt(ref.parameters())
    ex = gg.Executor(model, optimizer=None) if engine == "executor" else \
        gg.Executor(dp, optimizer=opt) if engine == "executor-dp" else None
    x, y = _data()
    shards = gg.data.batches(x, y, BATCH, rng=3, rank=R, world_size=W)
    whole = gg.data.batches(x, y, BATCH * W, rng=3)
    for _, (xb, yb), (xg, yg) in zip(range(steps), shards, whole):
        if engine == "eager":
            _step(dp, opt, xb, yb)
        elif engine == "executor":  # the Executor's gradients, reduced after its backward
            ex.step(xb, yb)
            dp.reduce_gradients()
            opt.step()
        elif engine == "executor-dp":  # the Executor given the DataParallel model itself
            ex.step(xb, yb)
        else:  # a driver's own gradient arrays, averaged in place
            loss = gg.cross_entropy(model(gg.tensor(xb)), yb)
            dp.close()  # plain backward: no reduction in it
            opt.zero_grad()
            loss.backward()
            arrays = [p.grad.data.copy() for p in model.parameters()]
            assert dp.reduce_gradients(arrays) is arrays
            for p, g in zip(model.parameters(), arrays):
                p.grad = gg.tensor(g)
            opt.step()
        _step(ref, opt_ref, xg, yg)
    _check(model, ref)
    return dp


def sgd(params):
    return optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)


def adam(params):
    return optim.Adam(params, lr=0.01)


@pytest.mark.parametrize("make_opt", [sgd, adam], ids=["sgd-momentum", "adam"])
def test_eager_training_equals_one_process_on_the_global_batch(make_opt):
    dp = _train(make_opt)
    assert len(dp.buckets) >= 3  # small buckets: several reductions per backward


@pytest.mark.parametrize("make_opt", [sgd, adam], ids=["sgd-momentum", "adam"])
@pytest.mark.parametrize("engine", ["executor-dp", "executor"])
def test_executor_training_equals_one_process_on_the_global_batch(make_opt, engine):
    _train(make_opt, engine=engine)  # Executor(dp, ...), or Executor(model) + reduce_gradients


def test_reduce_gradients_averages_a_drivers_arrays_in_place():
    _train(sgd, engine="arrays")


def test_the_nccl_path_trains_the_same(monkeypatch):
    """NcclComm's calls (unique id over MPI, events, side stream), with NCCL and CuPy's streams
    emulated on the CPU: the sums are MPI's over the 2 ranks."""
    world, fake, cuda = dist.get_world(), FakeNccl(dist.get_world()), FakeCuda()
    monkeypatch.setattr(world, "gpus", world.local_size, raising=False)  # one GPU per rank
    comm = dist_nccl.create(world, required=True, nccl=fake, cuda=cuda)
    assert fake.created == [(W, tuple(range(128)), R)]
    dp = _train(sgd, comm=comm)
    calls = comm.comm.calls
    assert len(calls) == 5 * len(dp.buckets) and {c[2] for c in calls} == {fake.NCCL_FLOAT64}
    # per bucket and step: the compute stream marks the copied gradients, the side stream waits
    # for that mark before NCCL and marks its end, the compute stream waits for the end
    log = cuda.log
    for ready, done in comm._events.values():
        for step in range(5):
            marks = [i for i, e in enumerate(log) if e[2] in (ready.name, done.name)]
            seq = [log[i] for i in marks[4 * step:4 * step + 4]]
            assert seq == [("compute", "record", ready.name), ("side", "wait", ready.name),
                           ("side", "record", done.name), ("compute", "wait", done.name)]


def test_first_bucket_starts_before_backward_reaches_the_first_layer():
    events = []

    # the identity, between the first layer and the rest: its backward runs right before the
    # first layer's
    Probe = identity_op(lambda: events.append("backward reaches layer 0"))

    class Marker(nn.Module):
        def forward(self, x):
            return Probe.apply(x)

    gg.manual_seed(0)
    body = nn.mlp([32, 64, 64, 10], dtype=np.float64)
    model = nn.Sequential(body[0], Marker(), *list(body)[1:])
    dp = dist.DataParallel(model, bucket_mb=0.03, comm=_comm())
    start = dp.comm.start

    def logged(buf, key):
        events.append(("start", key))
        return start(buf, key)

    dp.comm.start = logged
    x = np.random.default_rng(R).standard_normal((8, 32))
    gg.cross_entropy(dp(gg.tensor(x)), np.arange(8) % 10).backward()
    n = len(dp.buckets)
    assert n >= 3
    assert events.count("backward reaches layer 0") == 1
    reached = events.index("backward reaches layer 0")
    assert events.index(("start", 0)) < reached, events  # the last layer's bucket: early
    assert events.index(("start", n - 1)) > reached, events  # the first layer's: at the end
    assert [e for e in events if e != "backward reaches layer 0"] == \
        [("start", k) for k in range(n)]


def test_collectives():
    t = gg.tensor([R + 1.0, 2.0], dtype="float64")
    assert dist.all_reduce(t) is t
    np.testing.assert_array_equal(t.numpy(), [W * (W + 1) / 2, 2.0 * W])
    m = dist.all_reduce(gg.tensor([R + 1.0, 4.0], dtype="float64"), op="mean")
    np.testing.assert_allclose(m.numpy(), [(W + 1) / 2, 4.0])
    b = dist.broadcast(gg.tensor(np.full((2, 3), float(R))), root=W - 1)
    np.testing.assert_array_equal(b.numpy(), np.full((2, 3), W - 1.0))
    v = gg.tensor(np.arange(6.0).reshape(2, 3) * (R + 1)).T  # not contiguous: a host copy
    np.testing.assert_array_equal(dist.all_reduce(v).numpy(),
                                  np.arange(6.0).reshape(2, 3).T * W * (W + 1) / 2)
    dist.barrier()


def test_unused_parameters_get_no_gradient_on_any_rank_and_zeros_from_idle_ranks():
    gg.manual_seed(0)
    used, unused = nn.Linear(4, 3, dtype=np.float64), nn.Linear(4, 3, dtype=np.float64)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = used, unused

        def forward(self, x, both):
            return self.a(x) + self.b(x) if both else self.a(x)

    dp = dist.DataParallel(Two(), comm=_comm())
    x = gg.tensor(np.ones((2, 4)))
    dp(x, both=False).sum().backward()
    assert unused.weight.grad is None and unused.bias.grad is None
    np.testing.assert_allclose(used.bias.grad.numpy(), [2.0] * 3)
    for p in dp.parameters():
        p.grad = None
    dp(x, both=R == 0).sum().backward()  # only rank 0 uses b: the others add zeros
    np.testing.assert_allclose(unused.bias.grad.numpy(), [2.0 / W] * 3)


def test_different_models_are_refused_naming_the_first_mismatch():
    if W == 1:
        pytest.skip("needs two ranks")
    gg.manual_seed(0)
    model = nn.mlp([4, 8 + R, 3])
    with pytest.raises(gg.ShapeError, match=r"'0\.weight' of shape \(4, 8\).*rank 1's "
                                            r"parameter #0 is '0\.weight' of shape \(4, 9\)"):
        dist.DataParallel(model)


def test_rank_0s_buffers_are_broadcast_with_its_parameters():
    gg.manual_seed(R)
    std = nn.Standardize(np.full(4, float(R)), np.ones(4))
    model = nn.Sequential(std, nn.Linear(4, 2))
    dist.DataParallel(model, comm=_comm())
    np.testing.assert_array_equal(std.mean.numpy(), np.zeros(4))  # rank 0's statistics
    every = _gathered(model)
    for theirs in every[1:]:
        for a, b in zip(every[0], theirs):
            np.testing.assert_array_equal(a, b)
