"""The Executor's graph mode (cuda_graph=True) on the CPU: the bookkeeping around capture.

The CUDA specifics (stream capture, replay, memory) are tested on a GPU in
tests/gpu/test_executor_gpu.py. Here a NumPy backend that "captures" by keeping the function and
"replays" by calling it exercises everything else: warm-up, one graph per batch size, the
optimizer's per-step numbers read from a device array (scheduled lr, Adam's step count), capture
again when parameters are replaced or settings change, and not when load_state_dict writes in
place. On the plain CPU backend cuda_graph=True is a no-op.
"""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import nn, optim
from gpugrad.backend.numpy_backend import NumpyBackend
from gpugrad.executor_graph import WARMUP_STEPS


class Replay:
    """Calls fn again on each launch, with the optimizer's host-side lr poisoned (NaN): a real
    graph replays the kernels it captured, so the replayed step must take every number that
    changes between steps from the device array, never from Python attributes."""

    def __init__(self, fn, poisoned):
        self.fn, self.poisoned, self.launches = fn, poisoned, 0

    def launch(self):
        self.launches += 1
        saved = [(opt, opt.lr) for opt in self.poisoned]
        for opt, _ in saved:
            opt.lr = float("nan")
        try:
            self.fn()
        finally:
            for opt, lr in saved:
                opt.lr = lr


class ReplayBackend(NumpyBackend):
    """A CPU backend with 'graphs': capture records fn (running nothing), launch calls it."""
    graphs = True

    def __init__(self):
        super().__init__()
        self.captured, self.poisoned = [], []

    def capture(self, fn):
        self.captured.append(Replay(fn, self.poisoned))
        return self.captured[-1]


def _pair(sizes, bk, make_opt, seed=0):
    """Two equal models: one on the replay backend (graph mode), one on the CPU (plain)."""
    gg.manual_seed(seed)
    plain = nn.mlp(sizes)
    graphed = nn.mlp(sizes, device=bk)
    graphed.load_state_dict({k: v.numpy() for k, v in plain.state_dict().items()})
    opt_g, opt_p = make_opt(graphed.parameters()), make_opt(plain.parameters())
    bk.poisoned.append(opt_g)
    return (gg.Executor(graphed, optimizer=opt_g, cuda_graph=True), opt_g,
            gg.Executor(plain, optimizer=opt_p), opt_p)


def _batch(step, n=8, features=12, classes=4):
    rng = np.random.default_rng(step)
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, classes, n)


def _assert_same(a, b):
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)


@pytest.mark.parametrize("make_opt, sched", [
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda o: optim.CosineLR(o, 12)),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
     lambda o: optim.StepLR(o, 3, gamma=0.5)),
    (lambda ps: optim.Adam(ps, lr=0.01), lambda o: optim.CosineLR(o, 12)),
], ids=["sgd-cosine", "nesterov-step", "adam-cosine"])
def test_graph_mode_leaves_the_same_parameters_with_a_schedule(make_opt, sched):
    bk = ReplayBackend()
    ex_g, opt_g, ex_p, opt_p = _pair([12, 16, 16, 4], bk, make_opt)
    sched_g, sched_p = sched(opt_g), sched(opt_p)
    for step in range(12):
        x, y = _batch(step)
        assert ex_g.step(x, y) == ex_p.step(x, y)
        sched_g.step()
        sched_p.step()
    _assert_same(ex_g, ex_p)
    # the lr changed every step, yet one capture served them all: it was never baked in
    assert len(bk.captured) == 1 and bk.captured[0].launches == 12 - WARMUP_STEPS
    if isinstance(opt_g, optim.Adam):
        assert [st["t"] for st in opt_g.state] == [12] * len(opt_g.params)


def test_one_graph_per_batch_size_and_gradients_like_the_plain_executor():
    bk = ReplayBackend()
    ex_g, _, ex_p, _ = _pair([12, 8, 4], bk, lambda ps: optim.SGD(ps, lr=0.05))
    for step in range(4):
        for n in (8, 5):
            x, y = _batch(step, n)
            assert ex_g.step(x, y) == ex_p.step(x, y)
    assert len(bk.captured) == 2
    for p, q in zip(ex_g.model.parameters(), ex_p.model.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())
    _assert_same(ex_g, ex_p)


def test_replaced_parameters_and_changed_settings_capture_again():
    bk = ReplayBackend()
    ex_g, opt_g, ex_p, opt_p = _pair([12, 8, 4], bk,
                                     lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9))
    step = 0

    def run(k):
        nonlocal step
        for _ in range(k):
            x, y = _batch(step)
            assert ex_g.step(x, y) == ex_p.step(x, y)
            step += 1

    run(WARMUP_STEPS + 1)
    assert len(bk.captured) == 1
    # load_state_dict writes into the same arrays: the graph stays valid and sees the values
    state = {k: v.numpy() * 0.5 for k, v in ex_p.model.state_dict().items()}
    ex_g.model.load_state_dict(state)
    ex_p.model.load_state_dict(state)
    run(2)
    assert len(bk.captured) == 1
    # new parameter arrays (what model.to() does): the old graph would write to the old ones
    for p in ex_g.model.parameters():
        p.data = p.data.copy()
    run(WARMUP_STEPS + 1)
    assert len(bk.captured) == 2
    # a setting that decides which array operations run: capture again
    opt_g.momentum = opt_p.momentum = 0.5
    run(WARMUP_STEPS + 1)
    assert len(bk.captured) == 3
    _assert_same(ex_g, ex_p)


def test_rejected_step_in_graph_mode_changes_nothing():
    bk = ReplayBackend()
    ex_g, _, _, _ = _pair([12, 8, 4], bk, lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9))
    for step in range(WARMUP_STEPS + 1):
        ex_g.step(*_batch(step))
    snapshot = [p.numpy().copy() for p in ex_g.model.parameters()]
    x, y = _batch(9)
    y[2] = 4
    with pytest.raises(ValueError, match="label 4 is out of range for 4 classes"):
        ex_g.step(x, y)
    for p, s in zip(ex_g.model.parameters(), snapshot):
        np.testing.assert_array_equal(p.numpy(), s)


def test_cuda_graph_is_a_no_op_on_the_cpu_backend():
    gg.manual_seed(0)
    a = nn.mlp([12, 8, 4])
    b = nn.mlp([12, 8, 4])
    b.load_state_dict(a.state_dict())
    ex_a = gg.Executor(a, optimizer=optim.SGD(a.parameters(), lr=0.1), cuda_graph=True)
    ex_b = gg.Executor(b, optimizer=optim.SGD(b.parameters(), lr=0.1))
    assert ex_a._graphs is None
    for step in range(4):
        assert ex_a.step(*_batch(step)) == ex_b.step(*_batch(step))
    _assert_same(ex_a, ex_b)


def test_graph_mode_takes_any_loss_and_residual_modules():
    """The captured step is the recorded step: an MSE loss and a custom Module replay the same."""
    class Block(nn.Module):
        def __init__(self, device):
            super().__init__()
            self.inner = nn.Linear(12, 12, device=device)
            self.head = nn.Linear(12, 4, device=device)

        def forward(self, x):
            return self.head(x + gg.tanh(self.inner(x)))

    bk = ReplayBackend()
    gg.manual_seed(0)
    plain, graphed = Block(None), Block(bk)
    graphed.load_state_dict({k: v.numpy() for k, v in plain.state_dict().items()})
    opt_p, opt_g = (optim.Adam(m.parameters(), lr=0.01) for m in (plain, graphed))
    bk.poisoned.append(opt_g)
    ex_p = gg.Executor(plain, loss="mse", optimizer=opt_p)
    ex_g = gg.Executor(graphed, loss="mse", optimizer=opt_g, cuda_graph=True)
    rng = np.random.default_rng(0)
    for _ in range(6):
        x, t = rng.standard_normal((8, 12)), rng.standard_normal((8, 4))
        assert ex_g.step(x, t) == ex_p.step(x, t)
    assert len(bk.captured) == 1 and bk.captured[0].launches == 6 - WARMUP_STEPS
    _assert_same(ex_g, ex_p)


def test_graph_mode_rejects_what_it_cannot_capture():
    model = nn.mlp([12, 8, 4])
    other = gg.zeros(3, requires_grad=True)
    opt = optim.SGD(list(model.parameters()) + [other], lr=0.1)
    with pytest.raises(ValueError, match="exactly the model's parameters"):
        gg.Executor(model, optimizer=opt, cuda_graph=True)


def test_device_where_capture_does_not_work_is_refused_at_construction():
    """The graph probe failed (e.g. cuBLAS cannot be captured there): a clear error now, not a
    failure at the third step."""
    class NoCapture(ReplayBackend):
        def graph_status(self):
            return False, "CUDA-graph capture failed: simulated"

    model = nn.mlp([12, 8, 4], device=NoCapture())
    with pytest.raises(gg.DeviceError, match="cuda_graph=True.*capture does not work.*simulated"):
        gg.Executor(model, optimizer=optim.SGD(model.parameters(), lr=0.1), cuda_graph=True)
    assert gg.Executor(model, optimizer=optim.SGD(model.parameters(), lr=0.1))._graphs is None
