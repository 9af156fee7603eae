"""The Executor (a recorded eager step, replayed) against the eager autograd path: any
shape-static Module, every loss, optimizer and scheduler, and the recording's own rules."""
import numpy as np
import pytest

import gpugrad as gg
from _training import eager_step
from gpugrad import nn, optim
from gpugrad.tracing import ReplayError


def _model(sizes, activation="relu", seed=0, dtype=None):
    gg.manual_seed(seed)
    return nn.mlp(sizes, activation=activation, dtype=dtype)


def _data(n=64, features=20, classes=5, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(dtype), rng.integers(0, classes, n)


def _twins(make, seed=0):
    """Two equal models made by `make` (one for eager, one for the Executor)."""
    gg.manual_seed(seed)
    a = make()
    gg.manual_seed(seed)
    b = make()
    b.load_state_dict({k: v.numpy() for k, v in a.state_dict().items()})
    return a, b


def _assert_same_params(a, b, rtol, atol):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=rtol, atol=atol, err_msg=name)


def _eager(model, opt, x, y, loss_fn):
    out = model(gg.tensor(x))
    loss = loss_fn(out, gg.tensor(y) if np.asarray(y).dtype.kind == "f" else y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_same_parameters_as_eager_after_10_momentum_steps(activation):
    sizes = [20, 32, 16, 5]
    eager, planned = _model(sizes, activation), _model(sizes, activation)
    opt_e = optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    opt_p = optim.SGD(planned.parameters(), lr=0.1, momentum=0.9)
    ex = gg.Executor(planned, loss="cross_entropy", optimizer=opt_p)
    for step in range(10):
        x, y = _data(seed=step)
        le = eager_step(eager, opt_e, x, y)
        lp = ex.step(x, y)
        assert isinstance(lp, float)
        np.testing.assert_allclose(lp, le, rtol=1e-5)
    _assert_same_params(eager, planned, rtol=1e-5, atol=1e-6)


def test_float64_adam_and_weight_decay_match_eager_to_1e12():
    sizes = [8, 16, 3]
    eager = _model(sizes, "tanh", dtype="float64")
    planned = _model(sizes, "tanh", dtype="float64")
    opt_e = optim.Adam(eager.parameters(), lr=0.01, weight_decay=1e-3)
    opt_p = optim.Adam(planned.parameters(), lr=0.01, weight_decay=1e-3)
    ex = gg.Executor(planned, optimizer=opt_p)
    for step in range(10):
        x, y = _data(32, 8, 3, seed=step, dtype=np.float64)
        assert ex.step(x, y) == pytest.approx(eager_step(eager, opt_e, x, y), rel=1e-12)
    _assert_same_params(eager, planned, rtol=1e-12, atol=1e-14)


OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.05),
    "momentum-wd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=1e-4),
}
SCHEDULERS = {"none": None, "step": lambda o: optim.StepLR(o, 2, gamma=0.5),
              "cosine": lambda o: optim.CosineLR(o, 8)}


@pytest.mark.parametrize("sched", sorted(SCHEDULERS))
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_every_optimizer_and_scheduler_matches_eager(opt_name, sched):
    eager, planned = _twins(lambda: nn.mlp([6, 8, 3], dtype="float64"))
    opt_e, opt_p = OPTIMIZERS[opt_name](eager.parameters()), OPTIMIZERS[opt_name](
        planned.parameters())
    scheds = [SCHEDULERS[sched](o) for o in (opt_e, opt_p)] if SCHEDULERS[sched] else []
    ex = gg.Executor(planned, optimizer=opt_p)
    for step in range(8):
        x, y = _data(10, 6, 3, seed=step, dtype=np.float64)
        assert ex.step(x, y) == pytest.approx(eager_step(eager, opt_e, x, y), rel=1e-12)
        for s in scheds:
            s.step()
    _assert_same_params(eager, planned, rtol=1e-12, atol=1e-14)


class Residual(nn.Module):
    """x + relu(linear(x)) blocks: not a Sequential, and the input is used twice."""

    def __init__(self, width, depth, classes):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Linear(width, width, dtype="float64")
                                      for _ in range(depth)])
        self.head = nn.Linear(width, classes, dtype="float64")

    def forward(self, x):
        for block in self.blocks:
            x = x + gg.relu(block(x))
        return self.head(x)


class Tied(nn.Module):
    """One Linear applied twice (tied weights): its gradients must be summed."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(6, 6, dtype="float64")
        self.out = nn.Linear(6, 3, dtype="float64")

    def forward(self, x):
        return self.out(gg.tanh(self.shared(gg.tanh(self.shared(x)))))


class Swish(nn.Linear):
    """A Linear subclass with its own forward: it must run as written, not as a plain Linear."""

    def forward(self, x):
        z = super().forward(x)
        return z * gg.sigmoid(z)


def _swish_model():
    return nn.Sequential(Swish(6, 8, dtype="float64"), nn.Linear(8, 3, dtype="float64"))


@pytest.mark.parametrize("make", [lambda: Residual(6, 3, 3), Tied, _swish_model],
                         ids=["residual", "tied-weights", "subclassed-linear"])
def test_custom_modules_match_eager(make):
    eager, planned = _twins(make)
    opt_e = optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    opt_p = optim.SGD(planned.parameters(), lr=0.1, momentum=0.9)
    ex = gg.Executor(planned, optimizer=opt_p)
    for step in range(6):
        x, y = _data(12, 6, 3, seed=step, dtype=np.float64)
        assert ex.step(x, y) == pytest.approx(eager_step(eager, opt_e, x, y), rel=1e-12)
    _assert_same_params(eager, planned, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", ["mse", "l1-penalty", "user-expression"])
def test_every_kind_of_loss_matches_eager(loss):
    eager, planned = _twins(lambda: nn.mlp([4, 8, 2], dtype="float64"))

    def loss_fn(model):
        weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        return {"mse": lambda out, t: gg.mse_loss(out, t),
                "l1-penalty": lambda out, t: gg.cross_entropy(out, t) +
                optim.l1_penalty(weights, 1e-2),
                "user-expression": lambda out, t: (gg.log_softmax(out) * -1.0).mean()
                + ((out * out).sum() * 1e-3)}[loss]

    opt_e, opt_p = optim.SGD(eager.parameters(), lr=0.05), optim.SGD(planned.parameters(),
                                                                       lr=0.05)
    ex = gg.Executor(planned, loss=loss_fn(planned), optimizer=opt_p)
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.standard_normal((16, 4))
        t = rng.standard_normal((16, 2)) if loss == "mse" else rng.integers(0, 2, 16)
        assert ex.step(x, t) == pytest.approx(_eager(eager, opt_e, x, t, loss_fn(eager)),
                                              rel=1e-12)
    _assert_same_params(eager, planned, rtol=1e-12, atol=1e-14)


def test_a_subset_optimizer_and_an_eager_backward_between_steps():
    """Only the head trains; an eager backward in between must not leave later steps writing
    gradients nobody reads: p.grad after a step is that step's gradient."""
    eager, planned = _twins(lambda: nn.mlp([6, 8, 3], dtype="float64"))
    opt_e, opt_p = optim.SGD(eager[2].parameters(), lr=0.1), optim.SGD(planned[2].parameters(),
                                                                       lr=0.1)
    ex = gg.Executor(planned, optimizer=opt_p)
    for step in range(5):
        x, y = _data(10, 6, 3, seed=step, dtype=np.float64)
        if step == 2:
            gg.cross_entropy(planned(gg.tensor(x)), y).backward()  # accumulates into .grad
        for p in eager.parameters():
            p.grad = None
        loss = gg.cross_entropy(eager(gg.tensor(x)), y)
        loss.backward()
        opt_e.step()
        assert ex.step(x, y) == pytest.approx(loss.item(), rel=1e-12)
        for (name, p), (_, q) in zip(eager.named_parameters(), planned.named_parameters()):
            np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-12, err_msg=name)
    _assert_same_params(eager, planned, rtol=1e-12, atol=1e-14)


def test_without_optimizer_step_leaves_gradients_like_backward():
    eager, planned = _model([6, 5, 4], "sigmoid"), _model([6, 5, 4], "sigmoid")
    x, y = _data(10, 6, 4)
    gg.cross_entropy(eager(gg.tensor(x)), y).backward()
    gg.Executor(planned).step(x, y)
    for (name, p), (_, q) in zip(eager.named_parameters(), planned.named_parameters()):
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=name)


def test_records_twice_then_replays_without_building_graphs(monkeypatch):
    model = _model([6, 8, 3])
    ex = gg.Executor(model, optimizer=optim.SGD(model.parameters(), lr=0.1))
    applied = []
    original = gg.Function.apply.__func__

    def counting(cls, *args, **params):
        applied.append(cls.__name__)
        return original(cls, *args, **params)

    monkeypatch.setattr(gg.Function, "apply", classmethod(counting))
    for step in range(5):
        ex.step(*_data(10, 6, 3, seed=step))
        assert bool(applied) == (step < 2), step  # steps 0 and 1 record, the rest replay
        applied.clear()


def test_data_dependent_steps_are_detected():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

        def forward(self, x):
            return self.a(x) if float(x.sum().item()) > 0 else self.b(x)  # host read

    class Baked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 3)

        def forward(self, x):
            return self.a(x) * float(np.abs(x.numpy()).max())  # a constant from the data

    rng = np.random.default_rng(0)
    x_pos, x_neg = np.abs(rng.standard_normal((4, 6))), -np.abs(rng.standard_normal((4, 6)))
    ex = gg.Executor(Branchy())
    ex.step(x_pos.astype(np.float32), [0, 1, 2, 0])
    with pytest.raises(ReplayError, match="differs between two recordings"):
        ex.step(x_neg.astype(np.float32), [0, 1, 2, 0])
    ex = gg.Executor(Baked())
    ex.step(x_pos.astype(np.float32), [0, 1, 2, 0])
    # op 0 is the layer (one 'linear' op), op 1 the product with the baked-in constant
    with pytest.raises(ReplayError, match="op 1 \\('mul'\\).*constant input changed"):
        ex.step((x_pos * 2).astype(np.float32), [0, 1, 2, 0])


def test_plans_are_bounded_and_cleared_and_re_recorded_on_new_shapes():
    model = _model([6, 8, 3])
    ex = gg.Executor(model, optimizer=optim.SGD(model.parameters(), lr=0.01), max_plans=2)
    for n in (4, 5, 6, 5):
        ex.step(*_data(n, 6, 3))
    assert [k[0][0] for k in ex._plans] == [6, 5]  # least recently used (4) dropped
    ex.clear()
    assert not ex._plans
    with pytest.raises(ValueError, match="max_plans"):
        gg.Executor(model, max_plans=0)


def test_predict_matches_the_model():
    model = _model([20, 32, 5], "relu")
    ex = gg.Executor(model)
    for n in (1, 7, 64):
        x, _ = _data(n)
        out = ex.predict(x)
        assert isinstance(out, gg.Tensor) and out.shape == (n, 5) and not out.requires_grad
        with gg.no_grad():
            np.testing.assert_array_equal(out.numpy(), model(gg.tensor(x)).numpy())


def test_wrong_feature_size_names_the_shapes():
    ex = gg.Executor(_model([20, 8, 5], "relu"))
    with pytest.raises(gg.ShapeError, match=r"Linear: input has 7 features \(shape \(4, 7\)\), expected 20"):
        ex.step(np.zeros((4, 7), np.float32), [0, 1, 2, 3])


def test_rejected_step_changes_no_parameter():
    model = _model([20, 8, 5], "relu")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ex = gg.Executor(model, optimizer=opt)
    x, y = _data()
    for _ in range(3):
        ex.step(x, y)  # past the recordings: the bad labels hit the replayed plan
    snapshot = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    bad = y.copy()
    bad[3] = 5
    with pytest.raises(ValueError, match="label 5 is out of range for 5 classes"):
        ex.step(x, bad)
    with pytest.raises(gg.ShapeError, match=r"labels have shape \(63,\), expected \(64,\)"):
        ex.step(x, y[:-1])
    with pytest.raises(TypeError, match="labels must be integers"):
        ex.step(x, y.astype(np.float32))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), snapshot[k], err_msg=k)


def test_what_it_refuses():
    with pytest.raises(TypeError, match="gg.nn.Module"):
        gg.Executor(lambda x: x)
    with pytest.raises(ValueError, match="loss must be one of"):
        gg.Executor(nn.Linear(3, 2), loss="hinge")
    with pytest.raises(ValueError, match="no parameters"):
        gg.Executor(nn.Sequential(nn.ReLU()))


def test_linear_softmax_classifier_without_hidden_layers():
    eager, planned = _model([20, 5], "relu"), _model([20, 5], "relu")
    ex = gg.Executor(planned, optimizer=optim.SGD(planned.parameters(), lr=0.5))
    opt = optim.SGD(eager.parameters(), lr=0.5)
    for step in range(3):
        x, y = _data(seed=step)
        ex.step(x, y)
        eager_step(eager, opt, x, y)
    _assert_same_params(eager, planned, rtol=1e-5, atol=1e-6)


def test_a_model_moved_after_planning_is_refused():
    model = _model([4, 3], "relu")
    ex = gg.Executor(model)
    other = gg.backend.numpy_backend.NumpyBackend()
    other.name = "elsewhere"
    model[0].weight._bk = other  # what Module.to(device) does to each parameter
    with pytest.raises(gg.DeviceError, match="moved to 'elsewhere'.*new Executor"):
        ex.step(np.zeros((2, 4), np.float32), [0, 1])


def _replayed(sizes=(6, 8, 3)):
    """A model, its Executor after three steps (a trusted plan), the batch, the plan's entry."""
    model = _model(list(sizes))
    ex = gg.Executor(model, optimizer=optim.SGD(model.parameters(), lr=0.1))
    x, y = _data(10, sizes[0], sizes[-1])
    for _ in range(3):
        ex.step(x, y)
    (entry,) = ex._plans.values()
    return model, ex, x, y, entry


def test_parameters_that_change_dtype_or_shape_are_recorded_again():
    model, ex, x, y, entry = _replayed()
    assert entry.trusted is not None
    for p in model.parameters():  # what model.to(dtype) would do: new arrays, new dtype
        p.data = p.data.astype(np.float64)
    loss = ex.step(x.astype(np.float64), y)
    (entry,) = ex._plans.values()
    assert entry.trusted is None and np.isfinite(loss)  # a fresh recording, not the old plan
    with gg.no_grad():
        out = model(gg.tensor(x.astype(np.float64)))
    assert out.dtype == np.float64


def test_replaced_parameter_arrays_of_the_same_shape_are_read_afresh():
    """p.data = new array (same shape and dtype): the trusted plan stays and replays on it."""
    eager, planned = _twins(lambda: nn.mlp([6, 8, 3], dtype="float64"))
    opt_e, opt_p = (optim.SGD(m.parameters(), lr=0.1) for m in (eager, planned))
    ex = gg.Executor(planned, optimizer=opt_p)
    for step in range(3):
        x, y = _data(10, 6, 3, seed=step, dtype=np.float64)
        ex.step(x, y)
        eager_step(eager, opt_e, x, y)
    (entry,) = ex._plans.values()
    plan = entry.trusted
    for p, q in zip(eager.parameters(), planned.parameters()):
        p.data = p.data * 0.5  # new arrays
        q.data = q.data * 0.5
    x, y = _data(10, 6, 3, seed=9, dtype=np.float64)
    assert ex.step(x, y) == pytest.approx(eager_step(eager, opt_e, x, y), rel=1e-12)
    assert next(iter(ex._plans.values())).trusted is plan
    _assert_same_params(eager, planned, rtol=1e-12, atol=1e-14)


def test_a_replayed_step_leaves_no_arrays_in_the_plan():
    """Between steps the plan's ops hold only their settings: what forward saved for backward
    (activations, masks, the batch's labels) is dropped after the replayed backward."""
    model = _model([6, 8, 8, 3])
    ex = gg.Executor(model, optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    x, y = _data(10, 6, 3)
    for _ in range(4):
        ex.step(x, y)
    (entry,) = ex._plans.values()
    held = [(fn.name, k) for fn, _, _ in entry.trusted.forward_ops
            for k, v in vars(fn).items() if isinstance(v, np.ndarray)]
    assert held == []
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_a_plan_is_straight_line_code_whose_lines_tracebacks_show():
    """The trusted plan is two Python functions, one call per op; an error raised inside a
    replay points at the plan's line, and the plan's source leaves linecache with the plan."""
    import gc
    import linecache
    import traceback
    _, ex, x, y, entry = _replayed()
    code = entry.trusted.code
    assert code.startswith("def forward(params, inputs):") and "def backward(seed):" in code
    # Linear, ReLU, Linear, cross-entropy: one call each way per op, one gradient per leaf
    assert code.count(" = f") == 4 and code.count("g = b") == 4
    assert "return [l0, l1, l2, l3]" in code
    bad = y.copy()
    bad[3] = 7
    with pytest.raises(ValueError, match="label 7 is out of range") as info:
        ex.step(x, bad)
    frames = traceback.extract_tb(info.tb)
    plan_frames = [f for f in frames if f.filename.startswith("<gpugrad plan")]
    assert [f.line for f in plan_frames] == ["o3 = f3(o2)"]
    name = plan_frames[0].filename
    assert name in linecache.cache
    del entry, info, frames, plan_frames
    ex.clear()
    gc.collect()
    assert name not in linecache.cache


class _OddGradients(nn.Module):
    """Parameters whose gradients the plan hands over as a view (m, through a reshape), as one
    array for two parameters (a and b, through a + b), or not at all (unused)."""

    def __init__(self):
        super().__init__()
        gg.manual_seed(3)
        self.w = gg.randn(6, 4, dtype="float64", requires_grad=True)
        self.m = gg.randn(24, dtype="float64", requires_grad=True)
        self.a = gg.randn(5, 4, dtype="float64", requires_grad=True)
        self.b = gg.randn(5, 4, dtype="float64", requires_grad=True)
        self.unused = gg.randn(3, dtype="float64", requires_grad=True)

    def forward(self, x):
        return (x @ (self.w + self.m.reshape(6, 4))) * (self.a + self.b)


def _mlp64():
    return _model([6, 8, 4], dtype="float64")


@pytest.mark.parametrize("make, plain", [(_OddGradients, False), (_mlp64, True)])
def test_gradients_that_are_views_shared_or_missing_are_handed_over_as_eager(make, plain):
    """A replayed step's .grad arrays are the step's gradients, each its own array, as after
    eager backward, whichever path (the plain one, settled when recording, or the checked one)
    the plan takes; an unused parameter's .grad stays None."""
    eager, planned = _twins(make)
    x, y = _data(5, 6, 4, dtype=np.float64)
    ex = gg.Executor(planned, loss="mse", optimizer=None)
    target = np.random.default_rng(1).standard_normal((5, 4))
    for _ in range(3):
        ex.step(x, target)
    (entry,) = ex._plans.values()
    assert entry.trusted is not None and entry.plain is plain
    out = gg.mse_loss(eager(gg.tensor(x)), gg.tensor(target))
    out.backward()
    arrays = []
    for (name, p), q in zip(eager.named_parameters(), planned.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-12, err_msg=name)
        assert q.grad.numpy().base is None, name
        arrays.append(q.grad.numpy())
    assert len({id(a) for a in arrays}) == len(arrays) >= 4
