"""The NumPy twins of the CUDA kernels (the CPU backend, and the GPU tests' oracle): stable at the
extremes, agreeing with naive float64 formulas, gradcheck and PyTorch; plus the launchers' pure
Python parts (launch shapes), which need no GPU."""
import warnings

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import kernels
from gpugrad.kernels import (reduce_loss_ref, sigmoid_backward_ref, sigmoid_forward_ref,
                             softmax_cross_entropy_ref)

FLOATS = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def _strict_floats():
    """No overflow/invalid/divide warning may leak out of a reference, whatever the caller's
    errstate: every test here runs with warnings as errors and NumPy raising on all of them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            yield


def naive_xent(x, labels):
    """-log(softmax(x)[label]) and softmax - onehot, straight from the definitions in float64."""
    x = np.asarray(x, np.float64)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    rows = np.arange(len(x))
    grad = p.copy()
    grad[rows, labels] -= 1
    return -np.log(p[rows, labels]), grad


# ---- sigmoid ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_extremes_are_exact_limits(dtype):
    big = np.finfo(dtype).max
    x = np.array([-big, -1e4, -100.0, 0.0, 100.0, 1e4, big, np.inf, -np.inf], dtype)
    y = sigmoid_forward_ref(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[[0, 1, 6, 7, 8]], [0, 0, 1, 1, 0])
    assert y[3] == 0.5 and y[5] == 1
    if dtype == np.float64:  # a tiny output keeps full relative precision (no 1 - tiny)
        assert y[2] == pytest.approx(np.exp(-100.0), rel=1e-14)
    g = sigmoid_backward_ref(y, np.ones_like(y))
    assert np.isfinite(g).all() and g[0] == 0 and g[6] == 0


def test_sigmoid_nan_propagates_and_0d_works():
    assert np.isnan(sigmoid_forward_ref(np.array([np.nan]))).all()
    y = sigmoid_forward_ref(np.float64(0.5))
    assert y.shape == () and abs(y - 1 / (1 + np.exp(-0.5))) < 1e-16
    assert sigmoid_backward_ref(np.array(0.25), np.array(2.0)) == 2 * 0.25 * 0.75


@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_matches_float64_formula_and_backward_uses_the_output(dtype, rng):
    x = (rng.standard_normal(1000) * 10).astype(dtype)
    y = sigmoid_forward_ref(x)
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(y, exact, rtol=4 * np.finfo(dtype).eps)
    dy = rng.standard_normal(1000).astype(dtype)
    dx = sigmoid_backward_ref(y, dy)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, (dy * y) * (1 - y))  # the kernel's exact evaluation order


def test_sigmoid_of_integers_and_float16_computes_in_float32():
    y = sigmoid_forward_ref(np.array([0, 3], np.uint8))  # -x would wrap around for uint8
    assert y.dtype == np.float16 and y[0] == 0.5 and y[1] > 0.9
    y = sigmoid_forward_ref(np.array([-12.0, -14.0], np.float16))  # exp(12) > float16 max
    assert y.dtype == np.float16 and (y > 0).all()
    np.testing.assert_allclose(y, 1 / (1 + np.exp([12.0, 14.0])), rtol=1e-3, atol=6e-8)


@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
def test_sigmoid_out_in_place(dtype, rng):
    """The executor's calls: sigmoid_forward(z, out=z), sigmoid_backward(y, g, out=g)."""
    x = (rng.standard_normal((8, 5)) * 5).astype(dtype)
    want = sigmoid_forward_ref(x)
    z = x.copy()
    assert sigmoid_forward_ref(z, out=z) is z
    np.testing.assert_array_equal(z, want)
    g = rng.standard_normal((8, 5)).astype(dtype)
    want_dx = sigmoid_backward_ref(want, g)
    assert sigmoid_backward_ref(want, g, out=g) is g
    np.testing.assert_array_equal(g, want_dx)


def test_sigmoid_gradcheck_and_torch(rng, torch):
    x = gg.tensor(rng.standard_normal((4, 5)) * 3, requires_grad=True)
    assert gg.gradcheck(gg.sigmoid, [x])
    xs = rng.standard_normal(50).astype(np.float32) * 20
    t = torch.tensor(xs, requires_grad=True)
    torch.sigmoid(t).backward(torch.ones(50))
    g = gg.tensor(xs, requires_grad=True)
    gg.sigmoid(g).backward(np.ones(50, np.float32))
    np.testing.assert_allclose(sigmoid_forward_ref(xs), torch.sigmoid(t).detach().numpy(),
                               rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(g.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-30)


# ---- softmax cross-entropy -------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 2, 10, 33, 1000])
def test_xent_matches_naive_float64(c, rng):
    x = rng.standard_normal((17, c)) * 3
    labels = rng.integers(0, c, 17)
    loss, grad = softmax_cross_entropy_ref(x, labels, grad_scale=1.0)
    want_loss, want_grad = naive_xent(x, labels)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", FLOATS + [np.float16])
def test_xent_keeps_the_dtype_and_float16_accumulates_in_float32(dtype, rng):
    x = (rng.standard_normal((64, 300)) * 4).astype(dtype)
    labels = rng.integers(0, 300, 64)
    loss, grad = softmax_cross_entropy_ref(x, labels, grad_scale=1.0)
    assert loss.dtype == dtype and grad.dtype == dtype
    want_loss, want_grad = naive_xent(x, labels)
    tol = {np.float16: 2e-3, np.float32: 1e-6, np.float64: 1e-13}[dtype]
    np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol)


def test_xent_extreme_logits_and_edge_labels():
    x = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [5.0, 5.0, 5.0]])
    labels = np.array([0, 1, 2, 2])  # the max, the min, the last class (C-1), a tie
    loss, grad = softmax_cross_entropy_ref(x, labels, grad_scale=1.0)
    np.testing.assert_array_equal(loss[:3], [0.0, 2e4, 0.0])
    assert abs(loss[3] - np.log(3)) < 1e-15
    np.testing.assert_array_equal(grad[:3], [[0, 0, 0], [1, -1, 0], [0, 0, 0]])
    np.testing.assert_allclose(grad[3], [1 / 3, 1 / 3, -2 / 3], rtol=1e-15)
    x32 = x.astype(np.float32)
    loss32, grad32 = softmax_cross_entropy_ref(x32, labels, grad_scale=1.0)
    assert np.isfinite(loss32).all() and np.isfinite(grad32).all()


@pytest.mark.parametrize("bad", [-1, 5, 2**40, -2**63])
def test_bad_labels_raise_naming_op_value_and_classes(bad):
    x = np.zeros((3, 5))
    with pytest.raises(ValueError, match=rf"cross_entropy: label {bad} is out of range for 5 "):
        softmax_cross_entropy_ref(x, np.array([0, bad, 4]), grad_scale=1.0)


@pytest.mark.parametrize("dtype,bad", [
    (d, b) for d in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64)
    for b in (None, -1, -128, 5, 127) if b is None or b >= np.iinfo(d).min])
def test_label_check_every_integer_dtype(dtype, bad):
    """The check reads signed labels as unsigned (one reduction): negatives must still fail."""
    labels = np.array([0, 4, 2] if bad is None else [0, bad, 4]).astype(dtype)[::-1]  # strided
    if bad is None:
        softmax_cross_entropy_ref(np.zeros((3, 5)), labels, grad_scale=1.0)
    else:
        with pytest.raises(ValueError, match=rf"label {bad} is out of range for 5 classes"):
            softmax_cross_entropy_ref(np.zeros((3, 5)), labels, grad_scale=1.0)


def test_unchecked_bad_labels_give_nan_rows_only():
    x = np.arange(12.0).reshape(3, 4)
    loss, grad = softmax_cross_entropy_ref(x, np.array([0, 4, 3]), grad_scale=1.0, check=False)
    good_loss, good_grad = softmax_cross_entropy_ref(x[[0, 2]], np.array([0, 3]), grad_scale=1.0)
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
    np.testing.assert_array_equal(loss[[0, 2]], good_loss)
    np.testing.assert_array_equal(grad[[0, 2]], good_grad)


def test_grad_scale_forms_want_loss_and_inplace(rng):
    x = rng.standard_normal((6, 7))
    labels = rng.integers(0, 7, 6)
    _, unit = softmax_cross_entropy_ref(x, labels, grad_scale=1.0)
    per_row = rng.standard_normal(6)
    for scale, want in [(0.25, unit * 0.25), (np.array(0.5), unit * 0.5),
                        (np.float32(2.0), unit * 2), (per_row, unit * per_row[:, None])]:
        loss, grad = softmax_cross_entropy_ref(x, labels, grad_scale=scale, want_loss=False)
        assert loss is None
        np.testing.assert_allclose(grad, want, rtol=1e-15)
    loss, grad = softmax_cross_entropy_ref(x, labels)
    assert grad is None and loss.shape == (6,)
    buf = x.copy()
    loss_in, grad_in = softmax_cross_entropy_ref(buf, labels, grad_scale=1.0, inplace=True)
    assert grad_in is buf
    np.testing.assert_array_equal(grad_in, unit)
    np.testing.assert_array_equal(loss_in, loss)  # the loss saw the logits, not the gradient


def test_xent_argument_errors():
    x = np.zeros((3, 4))
    with pytest.raises(gg.ShapeError, match="labels have shape"):
        softmax_cross_entropy_ref(x, np.array([0, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
        softmax_cross_entropy_ref(x, np.zeros(3))
    with pytest.raises(gg.ShapeError, match="grad_scale"):
        softmax_cross_entropy_ref(x, np.zeros(3, int), grad_scale=np.ones(4))
    with pytest.raises(gg.ShapeError, match="2-D"):
        softmax_cross_entropy_ref(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match="no classes"):
        softmax_cross_entropy_ref(np.zeros((3, 0)), np.zeros(3, int))
    loss, grad = softmax_cross_entropy_ref(np.zeros((0, 4)), np.zeros(0, int), grad_scale=1.0)
    assert loss.shape == (0,) and grad.shape == (0, 4)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_xent_gradcheck_and_torch(reduction, rng, torch):
    x = rng.standard_normal((5, 4)) * 2
    labels = np.array([0, 3, 1, 3, 0])
    assert gg.gradcheck(lambda z: gg.cross_entropy(z, labels, reduction=reduction),
                        [gg.tensor(x, requires_grad=True)])
    for dtype, tol in [(np.float64, 1e-12), (np.float32, 1e-5)]:
        xs = (rng.standard_normal((32, 10)) * 5).astype(dtype)
        ys = rng.integers(0, 10, 32)
        t = torch.tensor(xs, requires_grad=True)
        tl = torch.nn.functional.cross_entropy(t, torch.tensor(ys), reduction=reduction)
        tl.backward(torch.ones_like(tl))
        g = gg.tensor(xs, requires_grad=True)
        gl = gg.cross_entropy(g, ys, reduction=reduction)
        gl.backward(np.ones(gl.shape, dtype))
        np.testing.assert_allclose(gl.numpy(), tl.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(g.grad.numpy(), t.grad.numpy(), rtol=tol, atol=tol)


def test_reduce_loss(rng):
    rows = rng.standard_normal(1001).astype(np.float32)
    total = reduce_loss_ref(rows, "sum")
    assert total.shape == () and total.dtype == np.float32
    assert total == np.float32(rows.astype(np.float64).sum())
    assert reduce_loss_ref(rows, "mean") == np.float32(rows.astype(np.float64).sum() / 1001)
    assert reduce_loss_ref(np.zeros(0), "sum") == 0
    with pytest.raises(ValueError, match="reduction"):
        reduce_loss_ref(rows, "none")


# ---- launch shapes (pure Python; the GPU tests run them) -------------------------------------

def test_grid_1d_covers_the_array_in_at_most_one_full_wave():
    assert kernels.grid_1d(1, 4, 132) == 1
    assert kernels.grid_1d(256 * 4 * 4, 4, 132) == 1  # one block: 256 threads x 4 float4
    assert kernels.grid_1d(256 * 4 * 4 + 1, 4, 132) == 2
    assert kernels.grid_1d(2**30, 8, 132) == 8 * 132  # then the grid-stride loop takes over


@pytest.mark.parametrize("c, kind, block, group", [
    (1, "small", 256, 0), (2, "small", 256, 1), (10, "small", 256, 4), (32, "small", 256, 5),
    (33, "large", 32, None), (1000, "large", 64, None), (4096, "large", 256, None),
    (32768, "large", 512, None)])
def test_xent_launch_shapes(c, kind, block, group):
    k, grid, b, extra = kernels.xent_launch(100003, c)
    assert (k, b) == (kind, block)
    if kind == "small":
        assert 2 ** int(extra[0]) >= c and int(extra[0]) == group
        rows_per_block = 8 * (32 >> group)
        assert (grid - 1) * rows_per_block < 100003 <= grid * rows_per_block
    else:
        assert grid == 100003 and extra == ()


@pytest.mark.parametrize("inplace", [False, True])
def test_underflow_is_not_an_error_whatever_numpy_is_told(inplace):
    """exp(x - max) of a far-below-max logit underflows to 0: the same result when the caller
    made NumPy raise on underflow (the common case runs without np.errstate and runs again with
    it only when NumPy raises)."""
    x = np.array([[0.0, -200.0, 1.0], [-300.0, 2.0, 0.5]], np.float32)
    labels = np.array([0, 1])
    want = softmax_cross_entropy_ref(x.copy(), labels, grad_scale=0.5, inplace=inplace)
    with np.errstate(under="raise"):
        np.testing.assert_raises(FloatingPointError, np.exp, np.float32(-200.0))  # it would raise
        got = softmax_cross_entropy_ref(x.copy(), labels, grad_scale=0.5, inplace=inplace)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert want[1][0, 1] == want[1][1, 0] == 0.0 and np.isfinite(want[0]).all()
