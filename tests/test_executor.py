"""The Executor (planned fast path) against the eager autograd path, and its contract."""
import tracemalloc

import numpy as np
import pytest

import gpugrad as gg
from _training import eager_step
from gpugrad import nn, optim


def _model(sizes, activation, seed=0, dtype=None):
    gg.manual_seed(seed)
    return nn.mlp(sizes, activation=activation, dtype=dtype)


def _data(n=64, features=20, classes=5, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(dtype), rng.integers(0, classes, n)


def _assert_same_params(a, b, rtol, atol):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=rtol, atol=atol, err_msg=name)


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


def test_float64_adam_and_weight_decay_match_eager_tightly():
    sizes = [8, 16, 3]
    eager = _model(sizes, "tanh", dtype="float64")
    planned = _model(sizes, "tanh", dtype="float64")
    opt_e = optim.Adam(eager.parameters(), lr=0.01, weight_decay=1e-3)
    opt_p = optim.Adam(planned.parameters(), lr=0.01, weight_decay=1e-3)
    ex = gg.Executor(planned, optimizer=opt_p)
    for step in range(10):
        x, y = _data(32, 8, 3, seed=step, dtype=np.float64)
        assert ex.step(x, y) == pytest.approx(eager_step(eager, opt_e, x, y), rel=1e-12)
    _assert_same_params(eager, planned, rtol=1e-11, atol=1e-13)


def test_mse_loss_matches_eager():
    eager, planned = _model([4, 8, 2], "relu"), _model([4, 8, 2], "relu")
    opt_e = optim.SGD(eager.parameters(), lr=0.05)
    ex = gg.Executor(planned, loss="mse", optimizer=optim.SGD(planned.parameters(), lr=0.05))
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.standard_normal((16, 4)).astype(np.float32)
        t = rng.standard_normal((16, 2)).astype(np.float32)
        np.testing.assert_allclose(ex.step(x, t), eager_step(eager, opt_e, x, t, "mse"),
                                   rtol=1e-5)
    _assert_same_params(eager, planned, rtol=1e-5, atol=1e-6)


def test_without_optimizer_step_leaves_gradients_like_backward():
    eager, planned = _model([6, 5, 4], "sigmoid"), _model([6, 5, 4], "sigmoid")
    x, y = _data(10, 6, 4)
    gg.cross_entropy(eager(gg.tensor(x)), y).backward()
    gg.Executor(planned).step(x, y)
    for (name, p), (_, q) in zip(eager.named_parameters(), planned.named_parameters()):
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=name)


def test_predict_matches_the_model_and_varies_batch_size():
    model = _model([20, 32, 5], "relu")
    ex = gg.Executor(model)
    for n in (1, 7, 64):
        x, _ = _data(n)
        out = ex.predict(x)
        assert isinstance(out, gg.Tensor) and out.shape == (n, 5)
        with gg.no_grad():
            np.testing.assert_allclose(out.numpy(), model(gg.tensor(x)).numpy(), rtol=1e-6)
    assert sorted(ex._buffers) == [1, 7, 64]


def test_buffers_are_reused_and_steps_do_not_allocate():
    model = _model([64, 128, 128, 10], "relu")
    ex = gg.Executor(model, optimizer=optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    x, y = _data(256, 64, 10)
    ex.step(x, y)  # first step of this batch size: buffers and optimizer state are made here
    before = [id(b) for b in ex._buffers[256].out]
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(5):
        ex.step(x, y)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert [id(b) for b in ex._buffers[256].out] == before
    # one (256, 128) float32 activation is 128 KiB; a step must not allocate anything that size
    # (NumPy's own iteration buffers for broadcasting the bias take up to 32 KiB)
    assert peak < 64 * 1024, f"a step allocated {peak} bytes"


def test_wrong_feature_size_names_expected_and_actual():
    ex = gg.Executor(_model([20, 8, 5], "relu"))
    with pytest.raises(gg.ShapeError, match=r"\(N, 20\).*got \(4, 7\)"):
        ex.step(np.zeros((4, 7), np.float32), [0, 1, 2, 3])
    with pytest.raises(gg.ShapeError, match=r"\(N, 20\)"):
        ex.predict(np.zeros(20, np.float32))


def test_rejected_step_changes_no_parameter():
    model = _model([20, 8, 5], "relu")
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ex = gg.Executor(model, optimizer=opt)
    x, y = _data()
    ex.step(x, y)
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


def test_plans_only_what_it_can_run():
    with pytest.raises(TypeError, match="Sequential"):
        gg.Executor(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="end with a Linear"):
        gg.Executor(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))
    with pytest.raises(ValueError, match="must follow a Linear"):
        gg.Executor(nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
    with pytest.raises(gg.ShapeError, match="do not chain"):
        gg.Executor(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match="loss must be one of"):
        gg.Executor(nn.Sequential(nn.Linear(3, 2)), loss="hinge")

    class Custom(nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(TypeError, match="unsupported layer Custom"):
        gg.Executor(nn.Sequential(nn.Linear(3, 2), Custom()))


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
