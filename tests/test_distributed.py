"""gg.distributed in one process: the gradient-ready hook, data sharding, a world of one, the NCCL
code paths with CuPy and NCCL stood in for, the watchdog, and the setup errors. The multi-rank
tests are tests/mpi (run by mpiexec) and tests/test_distributed_launch.py."""
import sys
import types

import numpy as np
import pytest
from mpi._dist_helpers import FakeCuda, FakeNccl, LoopbackComm, identity_op

import gpugrad as gg
import gpugrad.distributed as dist
from gpugrad import hooks, nn
from gpugrad.distributed import nccl as dist_nccl
from gpugrad.distributed import world as dist_world


@pytest.fixture(autouse=True)
def _no_watchers_left():
    yield
    hooks.watched.clear()


# -- the hook (gpugrad/hooks.py) -------------------------------------------------------------

class Recorder:
    def __init__(self, replace=None):
        self.log, self.replace = [], replace or {}

    def ready(self, leaf, grad):
        self.log.append(("ready", leaf.name, np.array(grad)))

    def finish(self, leaves):
        self.log.append(("finish",))
        for leaf, value in self.replace.items():
            leaves[id(leaf)] = [leaf, np.asarray(value)]

    def abort(self):
        self.log.append(("abort",))


def _leaf(name, value):
    t = gg.tensor(np.asarray(value, dtype=np.float64), requires_grad=True)
    t.name = name
    return t


def test_ready_fires_once_per_leaf_after_its_last_contribution():
    a, b = _leaf("a", [1.0, 2.0]), _leaf("b", [3.0, 4.0])
    order = []

    Note = identity_op(lambda: order.append("note"))

    rec = Recorder()
    handle = hooks.watch([a, b], rec)
    # a is used twice (fan-out: two edges), the second time below Note, so its gradient is final
    # only after Note's backward; b's is final before it
    y = (Note.apply(a * 2.0) + a * b).sum()
    y.backward()
    handle.remove()
    names = [e[1] if e[0] == "ready" else e[0] for e in rec.log]
    assert names == ["b", "a", "finish"]
    np.testing.assert_array_equal(rec.log[1][2], [2.0 + 3.0, 2.0 + 4.0])  # both of a's edges
    np.testing.assert_array_equal(a.grad.numpy(), [5.0, 6.0])
    assert hooks.watched == {}


def test_ready_reports_the_leaf_before_later_ops_run():
    a, b = _leaf("a", [1.0]), _leaf("b", [2.0])
    seen = []

    Note = identity_op(lambda: seen.append("note"))

    class Rec(Recorder):
        def ready(self, leaf, grad):
            seen.append(leaf.name)

    rec = Rec()
    handle = hooks.watch([a, b], rec)
    (Note.apply(a) * b).sum().backward()  # b's gradient is final before Note's backward runs
    handle.remove()
    assert seen == ["b", "note", "a"]


def test_finish_may_replace_and_add_gradients_and_nothing_is_committed_before():
    a, b, c = _leaf("a", [1.0]), _leaf("b", [1.0]), _leaf("c", [1.0])
    rec = Recorder(replace={a: [10.0], c: [7.0]})  # c got no gradient: finish adds one
    handle = hooks.watch([a, b, c], rec)
    (a * 3.0 + b).sum().backward()
    handle.remove()
    assert a.grad.item() == 10.0 and b.grad.item() == 1.0 and c.grad.item() == 7.0


def test_a_failing_backward_aborts_the_watchers_and_commits_nothing():
    a = _leaf("a", [1.0])

    def boom():
        raise ValueError("boom")

    Boom = identity_op(boom)

    rec = Recorder()
    handle = hooks.watch([a], rec)
    with pytest.raises(ValueError, match="boom"):
        (Boom.apply(a * 2.0) + a).sum().backward()
    handle.remove()
    assert [e[0] for e in rec.log] == ["abort"] and a.grad is None


def test_a_leaf_with_no_upstream_gradient_is_reported_at_the_end():
    a, b = _leaf("a", [1.0]), _leaf("b", [1.0])

    class Half(gg.Function):  # returns no gradient for its second input
        def forward(self, x, y):
            return x + y

        def backward(self, g):
            return g, None

    rec = Recorder()
    handle = hooks.watch([a, b], rec)
    Half.apply(a, b).sum().backward()
    handle.remove()
    assert [e[1] if e[0] == "ready" else e[0] for e in rec.log] == ["a", "finish"]


def test_a_second_watcher_takes_over_and_watching_ends_with_the_watcher():
    a = _leaf("a", [1.0])
    first, second = Recorder(), Recorder()
    old = hooks.watch([a], first)
    handle = hooks.watch([a], second)  # takes over
    old.remove()  # does not remove the new watcher's entry
    a.backward(np.ones(1))  # the root is the leaf itself: no walk, no hook
    (a * 1.0).sum().backward()
    assert first.log == [] and [e[0] for e in second.log] == ["ready", "finish"]
    del second  # collected: watching ends
    assert hooks.watched == {}
    handle.remove()
    third = Recorder()
    hooks.watch([a], third).remove()
    assert hooks.watched == {}


def test_a_graph_without_watched_leaves_calls_nothing():
    a, other = _leaf("a", [1.0]), _leaf("o", [1.0])
    rec = Recorder()
    handle = hooks.watch([a], rec)
    (other * 2.0).sum().backward()
    handle.remove()
    assert rec.log == []


# -- data sharding ---------------------------------------------------------------------------

@pytest.mark.parametrize("n,world,drop_last", [(100, 2, False), (103, 3, False),
                                               (101, 4, False), (103, 3, True), (40, 4, False)])
def test_batches_shards_are_disjoint_and_make_the_global_batches(n, world, drop_last):
    x, y = np.arange(n, dtype=np.float32)[:, None], np.arange(n)
    whole = list(gg.data.batches(x, y, 5 * world, rng=11, drop_last=drop_last))
    shards = [list(gg.data.batches(x, y, 5, rng=11, drop_last=drop_last, rank=r,
                                   world_size=world)) for r in range(world)]
    steps = {len(s) for s in shards}
    assert len(steps) == 1  # every rank takes the same number of steps
    seen = np.concatenate([yb for s in shards for _, yb in s])
    assert len(np.unique(seen)) == len(seen)  # disjoint
    for k in range(steps.pop()):
        glued = np.concatenate([s[k][1] for s in shards])
        np.testing.assert_array_equal(glued, whole[k][1][:len(glued)])
        assert all(len(s[k][1]) >= 1 for s in shards)
    tail = n % (5 * world)
    dropped = (tail if drop_last or tail < world else 0)
    assert len(seen) == n - dropped


def test_batches_without_shuffle_shard_in_order_and_check_their_arguments():
    x, y = np.arange(8.0)[:, None], np.arange(8)
    got = [yb.tolist() for _, yb in gg.data.batches(x, y, 2, shuffle=False, rank=1, world_size=2)]
    assert got == [[2, 3], [6, 7]]
    for kwargs, msg in [(dict(rank=2, world_size=2), "outside a world of 2"),
                        (dict(rank=-1, world_size=2), "rank must be"),
                        (dict(world_size=0), "world_size must be"),
                        (dict(world_size=True), "world_size must be")]:
        with pytest.raises(ValueError, match=msg):
            gg.data.batches(x, y, 2, **kwargs)


# -- a world of one ---------------------------------------------------------------------------

def test_a_world_of_one_without_a_launcher():
    w = dist.init()
    assert (dist.rank(), dist.world_size(), dist.local_rank()) == (0, 1, 0)
    assert dist.is_initialized() and dist.init() is w and "rank 0 of 1" in repr(w)
    t = gg.tensor([1.0, 2.0])
    assert dist.all_reduce(t, op="mean") is t and dist.broadcast(t) is t
    np.testing.assert_array_equal(t.numpy(), [1.0, 2.0])
    dist.barrier()
    with pytest.raises(ValueError, match="op must be"):
        dist.all_reduce(t, op="max")
    with pytest.raises(TypeError, match="floating-point"):
        dist.all_reduce(gg.tensor([1, 2]), op="mean")
    with pytest.raises(ValueError, match="root must be"):
        dist.broadcast(t, root=1)


def test_data_parallel_in_a_world_of_one_is_the_model_and_reduces_nothing():
    gg.manual_seed(0)
    model = nn.mlp([4, 8, 3])
    dp = dist.DataParallel(model)
    assert dp.comm is None and dp.buckets == [] and hooks.watched == {}
    assert dp.module is model and list(dp.parameters()) == list(model.parameters())
    x = gg.tensor(np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(dp(x).numpy(), model(x).numpy())
    gg.cross_entropy(dp(x), [0, 1]).backward()
    g = [p.grad.data for p in model.parameters()]
    assert all(a is b for a, b in zip(dp.reduce_gradients(g), g))
    with pytest.raises(ValueError, match="bucket_mb"):
        dist.DataParallel(model, bucket_mb=0)
    with pytest.raises(ValueError, match="no parameters"):
        dist.DataParallel(nn.Sequential(nn.ReLU()))


def test_buckets_go_in_reverse_order_one_dtype_each_the_first_at_most_1_mib():
    gg.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 600), nn.Linear(600, 600), nn.Linear(600, 10),
                          nn.Linear(10, 10, dtype=np.float64))
    dp = dist.DataParallel(model, bucket_mb=2, comm=LoopbackComm())
    names = [[dp.names[s[0]] for s in b.slots] for b in dp.buckets]
    assert names == [["3.bias", "3.weight"],  # float64, the first: at most 1 MiB
                     ["2.bias", "2.weight", "1.bias", "1.weight", "0.bias"], ["0.weight"]]
    assert [b.buf.dtype for b in dp.buckets] == [np.float64, np.float32, np.float32]
    assert (1 << 20) < dp.buckets[1].buf.nbytes < (2 << 20)
    dp2 = dist.DataParallel(model[:3], bucket_mb=2, comm=LoopbackComm())
    assert [[dp2.names[s[0]] for s in b.slots] for b in dp2.buckets] == \
        [["2.bias", "2.weight", "1.bias"], ["1.weight", "0.bias"], ["0.weight"]]
    dp2.close()
    dp.close()
    dp.close()
    assert hooks.watched == {}


def _twin_models():
    gg.manual_seed(3)
    model = nn.mlp([6, 10, 4], dtype=np.float64)
    ref = nn.mlp([6, 10, 4], dtype=np.float64)
    ref.load_state_dict(model.state_dict())
    return model, ref


def test_loopback_buckets_leave_backward_unchanged_and_accumulate_like_it():
    model, ref = _twin_models()
    dp = dist.DataParallel(model, bucket_mb=0.0001, comm=LoopbackComm())
    x = np.random.default_rng(0).standard_normal((5, 6))
    for _ in range(2):  # no zero_grad: the second backward adds to .grad, as without buckets
        gg.cross_entropy(dp(gg.tensor(x)), [0, 1, 2, 3, 0]).backward()
        gg.cross_entropy(ref(gg.tensor(x)), [0, 1, 2, 3, 0]).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())
        assert not np.shares_memory(p.grad.data, dp.buckets[0].buf)
    starts = [e for e in dp.comm.log if e[0] == "start"]
    assert starts == [("start", k) for k in range(len(dp.buckets))] * 2


def test_a_backward_failing_after_a_bucket_was_sent_stops_further_reductions():
    model, _ = _twin_models()
    dp = dist.DataParallel(model, bucket_mb=0.0001, comm=LoopbackComm())

    def interrupt():
        raise KeyboardInterrupt

    Boom = identity_op(interrupt)

    x = gg.tensor(np.ones((2, 6)))
    h = model[0](x)
    out = model[2](model[1](Boom.apply(h)))
    with pytest.raises(KeyboardInterrupt):
        out.sum().backward()
    assert dp.broken and all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError, match="no longer match"):
        dp(x).sum().backward()


def test_a_backward_failing_before_any_bucket_was_sent_can_be_retried():
    model, _ = _twin_models()
    dp = dist.DataParallel(model, bucket_mb=1, comm=LoopbackComm())  # one bucket
    calls = []

    def fail_once():
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError

    FailOnce = identity_op(fail_once)

    out = FailOnce.apply(dp(gg.tensor(np.ones((2, 6))))).sum()
    with pytest.raises(MemoryError):
        out.backward()
    assert not dp.broken
    out.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_reduce_gradients_checks_its_arguments_and_replaces_grads():
    model, _ = _twin_models()
    dp = dist.DataParallel(model, comm=LoopbackComm())
    dp.close()
    with pytest.raises(ValueError, match="3 arrays for 4 parameters"):
        dp.reduce_gradients([None] * 3)
    gg.cross_entropy(model(gg.tensor(np.ones((2, 6)))), [0, 1]).backward()
    before = [p.grad for p in model.parameters()]
    dp.reduce_gradients()
    for p, old in zip(model.parameters(), before):
        assert p.grad is not old
        np.testing.assert_array_equal(p.grad.numpy(), old.numpy())
    dp.begin()
    dp.ready(model[0].bias, model[0].bias.grad.data)
    with pytest.raises(RuntimeError, match="two gradients"):
        dp.ready(model[0].bias, model[0].bias.grad.data)


# -- NCCL, with CuPy's streams and NCCL stood in for -------------------------------------------

class OneWorld:
    """A world of one with the attributes nccl.create reads."""
    rank, size, local_rank, local_size, gpus = 0, 1, 0, 1, 1

    def bcast_object(self, obj, root=0):
        return obj

    def allreduce_(self, a, comm=None):
        return a

    def bcast_(self, a, root=0, comm=None):
        return a


def test_nccl_communicator_setup_and_collectives_on_stand_ins():
    world, cuda = OneWorld(), FakeCuda()
    fake = FakeNccl(world)
    comm = dist_nccl.create(world, nccl=fake, cuda=cuda)
    assert fake.created == [(1, tuple(range(128)), 0)] and comm.host is False
    a = np.arange(4.0)
    assert comm.allreduce_(a) is a and comm.bcast_(a, 0) is a
    assert [c[0] for c in comm.comm.calls] == ["allReduce", "bcast"]
    assert comm.comm.calls[0][3] == comm.stream.ptr  # the reduction runs on the side stream
    assert comm.comm.calls[1][4] == cuda.current.ptr
    with pytest.raises(TypeError, match="cannot reduce bool"):
        comm.allreduce_(np.zeros(3, bool))
    with pytest.raises(ValueError, match="contiguous"):
        comm.allreduce_(np.zeros((3, 3))[:, 0])
    comm.poke([])


def test_nccl_falls_back_to_host_memory_when_it_cannot_be_used(monkeypatch):
    world = OneWorld()
    world.local_size, world.gpus = 2, 1
    with pytest.warns(UserWarning, match="share 1 GPU"):
        assert dist_nccl.create(world, nccl=FakeNccl(world)) is None
    with pytest.raises(gg.DeviceError, match="one GPU per rank"):
        dist_nccl.create(world, required=True)
    world.local_size = 1
    monkeypatch.setattr(dist_nccl, "load_nccl", lambda required: None)
    with pytest.warns(UserWarning, match="NCCL is not available"):
        assert dist_nccl.create(world) is None


def test_load_nccl_says_what_to_install_when_the_library_is_missing(monkeypatch):
    broken = types.ModuleType("cupy.cuda.nccl")
    broken.available = False
    cupy_cuda = pytest.importorskip("cupy.cuda")
    monkeypatch.setattr(cupy_cuda, "nccl", broken, raising=False)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", broken)
    assert dist_nccl.load_nccl(required=False) is None
    with pytest.raises(gg.DeviceError, match="nvidia-nccl-cu12"):
        dist_nccl.load_nccl(required=True)


def test_select_gpu_without_a_gpu(monkeypatch):
    if gg.cuda.is_available():
        pytest.skip("this machine has a GPU")
    w = OneWorld()
    assert dist_nccl.select_gpu(w, required=False) is False
    with pytest.raises(gg.DeviceError, match="device='cuda'"):
        dist_nccl.select_gpu(w, required=True)


def test_init_on_auto_without_a_gpu_stays_on_the_cpu(monkeypatch):
    if gg.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(dist_world, "_world", None)
    w = dist.init(device="auto")
    assert w.device == "cpu" and w.nccl is None and gg.get_device() == "cpu"
    monkeypatch.setattr(dist_world, "_world", None)
    with pytest.raises(gg.DeviceError):
        dist.init(device="cuda")
    monkeypatch.setattr(dist_world, "_world", None)
    assert dist.init(device="cpu").device == "cpu"


# -- launch detection, the watchdog -------------------------------------------------------------

def test_launcher_detection_and_a_missing_mpi4py(monkeypatch):
    for var in dist_world._SIZE_VARS + dist_world._RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    assert dist_world.launched_size() == 1 and not dist_world._launched()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert dist_world.launched_size() == 4 and dist_world._launched()
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(ImportError, match=r"one of 4 ranks.*pip install \"\.\[mpi\]\" from gpugrad's checkout"):
        dist_world._import_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert dist_world._import_mpi() is None  # one rank: a world of one without MPI


class FakeMPI:
    """Requests that never complete: what a rank sees when another stopped taking part."""

    class Request:
        @staticmethod
        def Testall(requests):  # noqa: N802
            return False


def test_the_watchdog_names_the_wait_and_the_timeout():
    w = dist_world.World()
    w.mpi, w.timeout, w.rank = FakeMPI, 0.05, 3
    with pytest.raises(RuntimeError, match=r"rank 3 waited 0 s for the test.*GPUGRAD_DIST_TIMEOUT"):
        w.wait(["request"], "the test")
    assert w.test([]) is True


# -- gpugrad train --distributed's helpers, in a world of one -----------------------------------

def test_train_job_in_a_world_of_one_changes_nothing():
    from gpugrad.distributed.job import TrainJob
    job = TrainJob(False)
    model = nn.mlp([2, 3])
    assert (job.rank, job.size, job.main) == (0, 1, True) and job.wrap(model) is model
    assert job.log(print) is print and job.mean(3.0, 2) == (1.5, 2)
    assert job.steps_per_epoch(10, 3) == 4
    x, y = np.arange(10.0)[:, None], np.arange(10)
    assert [len(b) for _, b in job.batches(x, y, 4, rng=0)] == [4, 4, 2]
    assert job.accuracy(lambda p, a, b: 0.25, None, x, y) == 0.25
    quiet = TrainJob(False)
    quiet.main = False
    assert quiet.log(print)("anything") is None


def test_run_or_abort_without_a_launcher_returns_the_code(monkeypatch):
    from gpugrad.distributed.job import run_or_abort
    for var in dist_world._SIZE_VARS + dist_world._RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    assert run_or_abort(lambda: 0) == 0 and run_or_abort(lambda: 2) == 2
    monkeypatch.setenv("PMI_RANK", "3")
    assert dist_world.launched_rank() == 3
