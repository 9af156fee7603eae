"""The Executor on a GPU: CUDA against the CPU eager path, and CUDA-graph capture against the
uncaptured step (same parameters, a scheduled lr honoured, no memory growth, capture again when
parameters are replaced). Skipped, with the reason, where no CUDA GPU is usable."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import kernels, nn, optim
from gpugrad.backend import get_backend
from gpugrad.executor_graph import WARMUP_STEPS

if not gg.cuda.is_available():
    pytest.skip(f"needs a usable CUDA GPU: {gg.cuda.unavailable_reason()}",
                allow_module_level=True)

pytestmark = pytest.mark.gpu

SIZES = [64, 128, 128, 10]
SGD = lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)  # noqa: E731
ADAM = lambda ps: optim.Adam(ps, lr=0.01)  # noqa: E731


def _models(devices, make_opt, activation="relu", seed=0):
    """Equal models (and optimizers) on each device, from one CPU initialisation."""
    gg.manual_seed(seed)
    state = {k: v.numpy() for k, v in nn.mlp(SIZES, activation=activation).state_dict().items()}
    out = []
    for dev in devices:
        model = nn.mlp(SIZES, activation=activation, device=dev)
        model.load_state_dict(state)
        out.append((model, make_opt(model.parameters())))
    return out


def _batch(step, n=32):
    rng = np.random.default_rng(step)
    return rng.standard_normal((n, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], n)


def _assert_close(a, b, rtol, atol):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=rtol, atol=atol, err_msg=name)


def test_capture_records_without_running_and_replays(cp):
    x = cp.zeros(1000, np.float32)

    def work():
        x.__iadd__(1.0)  # one elementwise kernel, no allocation

    work()  # compile and load the kernel outside the capture, as the Executor's warm-up does
    x.fill(0)
    graph = get_backend("cuda").capture(work)
    assert float(x.sum()) == 0  # capture queues nothing
    for _ in range(3):
        graph.launch()
    assert float(x.sum()) == 3000 and graph.allocated_bytes == 0


def test_loss_kernels_write_into_given_buffers(cp, host_rng):
    x = host_rng.standard_normal((50, 10)).astype(np.float32)
    labels = host_rng.integers(0, 10, 50)
    rows, total = cp.empty(50, np.float32), cp.empty((), np.float32)
    want_rows, want_grad = kernels.softmax_cross_entropy_ref(x.copy(), labels, grad_scale=0.02)
    dx = cp.asarray(x)
    got_rows, got_grad = kernels.softmax_cross_entropy_cuda(
        dx, cp.asarray(labels), grad_scale=0.02, inplace=True, check=False, loss_out=rows)
    assert got_rows is rows and got_grad is dx
    assert kernels.reduce_loss_cuda(rows, "mean", out=total) is total
    np.testing.assert_allclose(cp.asnumpy(rows), want_rows, rtol=1e-5, atol=5e-5)
    np.testing.assert_allclose(cp.asnumpy(dx), want_grad, rtol=1e-4, atol=2e-6)
    assert float(total) == pytest.approx(want_rows.mean(), rel=1e-5)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_executor_on_cuda_matches_cpu_eager_after_10_steps(activation):
    (cpu, opt_c), (gpu, opt_g) = _models(["cpu", "cuda"], SGD, activation)
    ex = gg.Executor(gpu, optimizer=opt_g)
    for step in range(10):
        x, y = _batch(step)
        loss = gg.cross_entropy(cpu(gg.tensor(x)), y)
        opt_c.zero_grad()
        loss.backward()
        opt_c.step()
        assert ex.step(x, y) == pytest.approx(loss.item(), rel=1e-4)
    _assert_close(cpu, gpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make_opt", [SGD, ADAM], ids=["sgd-momentum", "adam"])
def test_cuda_graph_leaves_the_same_parameters(make_opt):
    (plain, opt_p), (graphed, opt_g) = _models(["cuda", "cuda"], make_opt)
    ex_p = gg.Executor(plain, optimizer=opt_p)
    ex_g = gg.Executor(graphed, optimizer=opt_g, cuda_graph=True)
    for step in range(12):
        x, y = _batch(step)
        assert ex_g.step(x, y) == pytest.approx(ex_p.step(x, y), rel=1e-6)
    (only,) = ex_g._graphs.graphs.values()  # captured after the recordings, launched since
    # the replayed ops allocate their outputs inside the capture, from the graph's private pool;
    # it is held as long as the graph (the default pool does not grow: see the memory test)
    assert only.graph.allocated_bytes > 0
    _assert_close(plain, graphed, rtol=1e-6, atol=1e-7)


def test_cuda_graph_honours_a_scheduled_lr():
    (plain, opt_p), (graphed, opt_g) = _models(["cuda", "cuda"], SGD)
    ex_p = gg.Executor(plain, optimizer=opt_p)
    ex_g = gg.Executor(graphed, optimizer=opt_g, cuda_graph=True)
    sched_p, sched_g = optim.CosineLR(opt_p, 10), optim.CosineLR(opt_g, 10)
    for step in range(10):
        x, y = _batch(step)
        ex_p.step(x, y)
        ex_g.step(x, y)
        sched_p.step()
        sched_g.step()
    _assert_close(plain, graphed, rtol=1e-6, atol=1e-7)
    # after the schedule lr is 0: a replayed step must leave the parameters where they are
    assert opt_g.lr == 0.0
    before = [p.numpy() for p in graphed.parameters()]
    ex_g.step(*_batch(99))
    for p, b in zip(graphed.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)


def test_cuda_graph_does_not_grow_memory(cp):
    ((model, opt),) = _models(["cuda"], SGD)
    ex = gg.Executor(model, optimizer=opt, cuda_graph=True)
    for step in range(WARMUP_STEPS + 1):
        ex.step(*_batch(step))
    pool = cp.get_default_memory_pool()
    used = pool.used_bytes()
    for step in range(50):
        ex.step(*_batch(step))
    cp.cuda.runtime.deviceSynchronize()
    assert pool.used_bytes() == used


def test_replaced_parameters_are_captured_again_in_place_writes_are_not():
    (plain, opt_p), (graphed, opt_g) = _models(["cuda", "cuda"], SGD)
    ex_p = gg.Executor(plain, optimizer=opt_p)
    ex_g = gg.Executor(graphed, optimizer=opt_g, cuda_graph=True)
    step = 0

    def run(k):
        nonlocal step
        for _ in range(k):
            x, y = _batch(step)
            assert ex_g.step(x, y) == pytest.approx(ex_p.step(x, y), rel=1e-6)
            step += 1

    run(WARMUP_STEPS + 2)
    (first,) = ex_g._graphs.graphs.values()
    state = {k: v.numpy() * 0.5 for k, v in plain.state_dict().items()}
    plain.load_state_dict(state)
    graphed.load_state_dict(state)  # in place: the captured graph stays valid
    run(2)
    assert list(ex_g._graphs.graphs.values()) == [first]
    for model in (plain, graphed):  # new arrays on the same device: a new capture
        model.to("cpu").to("cuda")
    run(WARMUP_STEPS + 2)
    assert list(ex_g._graphs.graphs.values()) != [first]
    _assert_close(plain, graphed, rtol=1e-6, atol=1e-7)


def test_predict_in_graph_mode_matches_the_model():
    ((model, opt),) = _models(["cuda"], SGD)
    ex = gg.Executor(model, optimizer=opt, cuda_graph=True)
    for step in range(WARMUP_STEPS + 2):
        ex.step(*_batch(step))
    x, _ = _batch(7)
    with gg.no_grad():
        want = model(gg.tensor(x, device="cuda")).numpy()
    np.testing.assert_allclose(ex.predict(x).numpy(), want, rtol=1e-5, atol=1e-6)
