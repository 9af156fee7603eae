"""gg.detect_anomaly(): the first NaN/Inf, forward or backward, names the op, its input shapes and
the user's line that created it; off by default; nests and restores."""
import inspect
import sys

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import anomaly
from gpugrad.tensor import grad_mode

HERE = __file__


def _next_line():
    """The line number after the caller's line: write the op on the line below the call."""
    return inspect.currentframe().f_back.f_lineno + 1



@pytest.fixture(autouse=True)
def _quiet_numpy():
    with np.errstate(all="ignore"):  # the NaNs are the point; NumPy's warnings are noise here
        yield


# -- forward -------------------------------------------------------------------------------------

def test_forward_log_of_negative_names_op_shapes_and_line():
    x = gg.tensor([1.0, -1.0, 2.0], requires_grad=True)
    with gg.detect_anomaly(), pytest.raises(gg.AnomalyError) as info:
        line = _next_line()
        gg.log(x)
    msg = str(info.value)
    assert "forward of 'log' produced NaN" in msg
    assert "input shapes: (3,) float32" in msg
    assert f"{HERE}:{line} in test_forward_log_of_negative" in msg and "gg.log(x)" in msg
    assert "already contained" not in msg


@pytest.mark.parametrize("num, kind", [(0.0, "NaN"), (1.0, "Inf")])
def test_forward_division_by_zero_even_without_grad(num, kind):
    a, b = gg.tensor(num, dtype="float64"), gg.tensor(0.0, dtype="float64")  # no graph at all
    with gg.detect_anomaly(), pytest.raises(gg.AnomalyError,
                                            match=rf"forward of 'div' produced {kind} \(input "
                                                  r"shapes: \(\) float64, \(\) float64\)"):
        a / b


def test_forward_inside_a_layer_points_at_the_users_call():
    model = gg.nn.Sequential(gg.nn.Linear(2, 3))
    x = gg.tensor([[np.inf, 1.0]])
    with gg.detect_anomaly(), pytest.raises(gg.AnomalyError) as info:
        line = _next_line()
        model(x)
    msg = str(info.value)
    assert "forward of 'linear'" in msg and "(1, 2) float32, (2, 3) float32, (3,) float32" in msg
    assert f"{HERE}:{line}" in msg and "nn.py" not in msg
    assert "an input already contained NaN/Inf" in msg  # the Inf came with the data


def test_site_is_found_in_a_checkout_named_gpugrad(tmp_path):
    # the user's file lives under a directory called "gpugrad" (as CI clones do): still user code
    user_file = str(tmp_path / "gpugrad" / "tests" / "user_code.py")
    code = compile("with gg.detect_anomaly():\n    gg.sqrt(gg.tensor(-1.0))\n", user_file, "exec")
    with pytest.raises(gg.AnomalyError, match=rf"created at {user_file}:2 in <module>"):
        exec(code, {"gg": gg})


# -- backward ------------------------------------------------------------------------------------

def test_backward_sqrt_at_zero_gives_inf_gradient():
    x = gg.tensor([0.0, 4.0], requires_grad=True)
    with gg.detect_anomaly():
        line = _next_line()
        y = gg.sqrt(x).sum()
        assert np.isfinite(y.item())  # the forward pass is fine
        with pytest.raises(gg.AnomalyError) as info:
            y.backward()
    msg = str(info.value)
    assert "backward of 'sqrt' produced Inf in the gradient of input 0" in msg
    assert "input shapes: (2,) float32; gradient shape (2,)" in msg
    assert f"{HERE}:{line} in test_backward_sqrt_at_zero" in msg and "gg.sqrt(x)" in msg
    assert x.grad is None  # raised before anything reached the leaf


def test_nan_that_appears_only_in_backward():
    def f(x):
        return gg.sqrt(x) * 0.0  # forward: 0; backward: sqrt's 0 / (2 * 0) = NaN

    x = gg.tensor(0.0, dtype="float64", requires_grad=True)
    f(x).backward()
    assert np.isnan(x.grad.item())  # without detect_anomaly the NaN passes silently
    x.grad = None
    with gg.detect_anomaly():
        y = f(x)
        assert y.item() == 0.0
        with pytest.raises(gg.AnomalyError, match=r"backward of 'sqrt' produced NaN .*input "
                                                  r"shapes: \(\) float64.* in f: return "
                                                  r"gg.sqrt\(x\) \* 0.0"):
            y.backward()
    assert x.grad is None


def test_backward_of_graph_built_outside_says_so():
    x = gg.tensor([0.0], requires_grad=True)
    y = gg.sqrt(x).sum()
    with gg.detect_anomaly(), pytest.raises(gg.AnomalyError,
                                            match="built outside detect_anomaly"):
        y.backward()


def test_bad_upstream_gradient_is_blamed_on_the_caller():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    with gg.detect_anomaly():
        y = x * 2
        with pytest.raises(gg.AnomalyError, match="upstream gradient already contained"):
            y.backward(np.array([1.0, np.nan], dtype=np.float32))


def test_detection_changes_no_result():
    gg.manual_seed(3)
    model = gg.nn.mlp([4, 8, 3], activation="tanh")
    x, labels = gg.randn(5, 4), [0, 1, 2, 1, 0]
    gg.cross_entropy(model(x), labels).backward()
    plain = [p.grad.numpy().copy() for p in model.parameters()]
    model.zero_grad()
    with gg.detect_anomaly():
        gg.cross_entropy(model(x), labels).backward()
    for g, p in zip(plain, model.parameters()):
        np.testing.assert_array_equal(g, p.grad.numpy())


# -- off by default, nesting, restoring ----------------------------------------------------------

def test_off_by_default_costs_no_check_and_never_raises(monkeypatch):
    assert not anomaly.is_enabled()

    def called(*args):
        raise AssertionError("an anomaly check ran while detect_anomaly() was off")
    for name in ("check_forward", "check_backward", "record"):
        monkeypatch.setattr(anomaly, name, called)
    x = gg.tensor([0.0, -1.0], requires_grad=True)
    y = gg.log(x) + gg.sqrt(x)
    y.sum().backward()
    assert np.isnan(y.numpy()).any() and not np.isfinite(x.grad.numpy()).all()
    assert not hasattr(y._ctx, "anomaly_site")


def test_nested_contexts_restore_the_outer_state():
    with gg.detect_anomaly():
        with gg.detect_anomaly():
            assert anomaly.is_enabled()
        assert anomaly.is_enabled()  # the inner exit keeps the outer one on
        with pytest.raises(gg.AnomalyError):
            gg.log(gg.tensor(-1.0))
        assert anomaly.is_enabled()  # an error inside does not switch it off either
    assert not anomaly.is_enabled()
    with pytest.raises(ZeroDivisionError):
        with gg.detect_anomaly():
            1 / 0
    assert not anomaly.is_enabled()


def test_one_instance_entered_recursively_and_as_decorator():
    guard = gg.detect_anomaly()

    def depth(n):
        with guard:
            return n if n == 0 else depth(n - 1)
    depth(3)
    assert not anomaly.is_enabled()

    @gg.detect_anomaly()
    def bad():
        """Docstring kept."""
        assert anomaly.is_enabled()
        return gg.log(gg.tensor(-1.0))
    assert bad.__doc__ == "Docstring kept."
    with pytest.raises(gg.AnomalyError):
        bad()
    assert not anomaly.is_enabled()


@pytest.mark.parametrize("make, flag, inside", [
    (gg.detect_anomaly, "anomaly", True),
    (gg.no_grad, "enabled", False),
    (gg.enable_grad, "enabled", True),
])
def test_reentering_one_instance_restores_state(make, flag, inside):
    before = getattr(grad_mode, flag)
    if flag == "enabled":
        setattr(grad_mode, flag, not inside)  # start from the state the manager changes
        before = not inside
    ctx = make()
    try:
        with ctx:
            with ctx:
                assert getattr(grad_mode, flag) is inside
        assert getattr(grad_mode, flag) is before
    finally:
        grad_mode.enabled, grad_mode.anomaly = True, False


def test_error_holds_no_frames():
    # the recorded site is plain data: nothing keeps the user's frame (and its locals) alive
    x = gg.tensor([1.0], requires_grad=True)
    with gg.detect_anomaly():
        y = x * 2
    site = y._ctx.anomaly_site
    assert isinstance(site, tuple) and [type(v) for v in site] == [str, int, str]
    assert site[0] == HERE and site[2] == "test_error_holds_no_frames"
    assert not any(isinstance(v, type(sys._getframe())) for v in vars(y._ctx).values())
