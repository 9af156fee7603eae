"""The CUDA kernels against their NumPy twins, on a GPU: every dtype, shape family and code path
(small/large C, vector/scalar loads), the extremes, bad labels, determinism, and the ops end to
end. Skipped, with the reason, where no CUDA GPU is usable."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import kernels
from gpugrad.backend import get_backend

if not gg.cuda.is_available():
    pytest.skip(f"needs a usable CUDA GPU: {gg.cuda.unavailable_reason()}",
                allow_module_level=True)

pytestmark = pytest.mark.gpu

NS = [1, 7, 1000, 100003]
CS = [2, 10, 33, 1000, 32768]
MAX_ELEMENTS = 10**9  # 100003 x 32768 would need ~26 GB in float64 on host and device
FULL_CHECK = 2 * 10**7  # above this many elements, compare a sample of rows (host time)
FLOATS = [np.float32, np.float64]
# kernel vs NumPy: different exp implementations and summation orders, a few ulp apart
LOSS_TOL = {np.float32: dict(rtol=1e-5, atol=5e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
GRAD_TOL = {np.float32: dict(rtol=1e-4, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-14)}


def logits_and_labels(rng, n, c, dtype, spread=3.0):
    x = ((rng.random((n, c), dtype=np.float32) - 0.5) * (2 * spread)).astype(dtype)
    labels = rng.integers(0, c, n)
    labels[0] = c - 1  # the last class and the first are always among the labels
    labels[-1] = 0
    return x, labels


def rows_to_check(rng, n, c):
    """Every row, or for the largest shapes 4096 random rows plus the first and the last (rows
    are independent, so the reference on those rows is the reference's rows)."""
    if n * c <= FULL_CHECK:
        return slice(None)
    return np.unique(np.concatenate([[0, n - 1], rng.choice(n, min(n, 4096), replace=False)]))


def xent_both(cp, x, labels, **kw):
    """(kernel loss, kernel grad) and (ref loss, ref grad) for host arrays x, labels."""
    got = kernels.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels), **kw)
    want = kernels.softmax_cross_entropy_ref(x.copy(), labels, **kw)
    return [None if a is None else cp.asnumpy(a) for a in got], want


def assert_xent_close(got, want, dtype, scale=1.0):
    (gl, gg_), (wl, wg) = got, want
    np.testing.assert_allclose(gl, wl, **LOSS_TOL[dtype])
    tol = dict(GRAD_TOL[dtype])
    tol["atol"] *= abs(scale)
    np.testing.assert_allclose(gg_, wg, **tol)


@pytest.mark.parametrize("c", CS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_xent_matches_ref(cp, host_rng, dtype, n, c):
    if n * c > MAX_ELEMENTS:
        pytest.skip(f"{n} x {c} is over {MAX_ELEMENTS:.0e} elements")
    x, labels = logits_and_labels(host_rng, n, c, dtype)
    loss, grad = kernels.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels),
                                                    grad_scale=1.0 / n)
    assert loss.dtype == dtype and grad.dtype == dtype and grad.shape == (n, c)
    rows = rows_to_check(host_rng, n, c)
    want = kernels.softmax_cross_entropy_ref(x[rows], labels[rows], grad_scale=1.0 / n)
    assert_xent_close([cp.asnumpy(loss)[rows], cp.asnumpy(grad)[rows]], want, dtype, 1.0 / n)


@pytest.mark.parametrize("c", CS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_matches_ref(cp, host_rng, dtype, n, c):
    if n * c > MAX_ELEMENTS:
        pytest.skip(f"{n} x {c} is over {MAX_ELEMENTS:.0e} elements")
    x = ((host_rng.random((n, c), dtype=np.float32) - 0.5) * 40).astype(dtype)
    y_dev = kernels.sigmoid_forward_cuda(cp.asarray(x))
    assert y_dev.dtype == dtype and y_dev.shape == (n, c)
    rows = rows_to_check(host_rng, n, c)
    y = cp.asnumpy(y_dev)[rows]
    np.testing.assert_allclose(y, kernels.sigmoid_forward_ref(x[rows]),
                               rtol=8 * np.finfo(dtype).eps, atol=0)
    dy = (host_rng.random((n, c), dtype=np.float32) - 0.5).astype(dtype)
    dx = cp.asnumpy(kernels.sigmoid_backward_cuda(y_dev, cp.asarray(dy)))[rows]
    # from the same stored output, the same three IEEE operations in the same order as the
    # twin: bit-identical
    np.testing.assert_array_equal(dx, kernels.sigmoid_backward_ref(y, dy[rows]))


@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_extremes(cp, dtype):
    big = np.finfo(dtype).max
    x = np.array([-big, -1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4, big, np.inf, -np.inf, np.nan] * 3,
                 dtype)  # 36 values: vector body and a scalar tail
    y = cp.asnumpy(kernels.sigmoid_forward_cuda(cp.asarray(x)))
    want = kernels.sigmoid_forward_ref(x)
    np.testing.assert_allclose(y, want, rtol=8 * np.finfo(dtype).eps, atol=0, equal_nan=True)
    assert np.isnan(y[11::12]).all() and not np.isnan(np.delete(y, np.s_[11::12])).any()
    assert y[0] == 0 and y[1] == 0 and y[7] == 1 and y[8] == 1 and y[4] == 0.5
    dx = cp.asnumpy(kernels.sigmoid_backward_cuda(cp.asarray(y), cp.ones(36, dtype)))
    assert dx[0] == 0 and dx[8] == 0 and np.isfinite(np.delete(dx, np.s_[11::12])).all()


@pytest.mark.parametrize("c", [2, 10, 32, 33, 1000, 1001])
@pytest.mark.parametrize("dtype", FLOATS)
def test_extreme_logits_and_edge_labels(cp, host_rng, dtype, c):
    n = 64
    x = host_rng.choice(np.array([-1e4, 0.0, 1e4], dtype), size=(n, c))
    labels = np.where(np.arange(n) % 2 == 0, 0, c - 1)
    got, want = xent_both(cp, x, labels, grad_scale=1.0)
    assert np.isfinite(got[0]).all() and np.isfinite(got[1]).all()
    assert_xent_close(got, want, dtype)


@pytest.mark.parametrize("c", [10, 33, 1000])
def test_non_contiguous_and_misaligned_inputs(cp, host_rng, c):
    x, labels = logits_and_labels(host_rng, 50, 2 * c, np.float32)
    labels %= c  # labels for the c columns actually used
    dev = cp.asarray(x)
    strided = dev[:, ::2]  # every other column
    want = kernels.softmax_cross_entropy_ref(x[:, ::2].copy(), labels, grad_scale=0.5)
    got = kernels.softmax_cross_entropy_cuda(strided, cp.asarray(labels), grad_scale=0.5)
    assert_xent_close([cp.asnumpy(a) for a in got], want, np.float32, 0.5)
    transposed = cp.asarray(np.ascontiguousarray(x[:, :c].T)).T  # F-ordered (50, c)
    got = kernels.softmax_cross_entropy_cuda(transposed, cp.asarray(labels), grad_scale=0.5)
    want = kernels.softmax_cross_entropy_ref(x[:, :c].copy(), labels, grad_scale=0.5)
    assert_xent_close([cp.asnumpy(a) for a in got], want, np.float32, 0.5)
    # contiguous but one element past a 16-byte boundary: the scalar path
    flat = cp.asarray(np.concatenate([[0], x[:, :c].ravel()]).astype(np.float32))
    shifted = flat[1:].reshape(50, c)
    got = kernels.softmax_cross_entropy_cuda(shifted, cp.asarray(labels), grad_scale=0.5)
    assert_xent_close([cp.asnumpy(a) for a in got], want, np.float32, 0.5)
    # in place into a strided buffer: the result lands in that very buffer
    loss, grad = kernels.softmax_cross_entropy_cuda(strided, cp.asarray(labels), grad_scale=0.5,
                                                    inplace=True)
    assert grad is strided
    want = kernels.softmax_cross_entropy_ref(x[:, ::2].copy(), labels, grad_scale=0.5)
    assert_xent_close([cp.asnumpy(loss), cp.asnumpy(dev[:, ::2])], want, np.float32, 0.5)
    np.testing.assert_array_equal(cp.asnumpy(dev[:, 1::2]), x[:, 1::2])  # untouched


@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_non_contiguous_and_misaligned(cp, host_rng, dtype):
    x = host_rng.standard_normal((40, 30)).astype(dtype)
    dev = cp.asarray(x)
    for view, host in [(dev[:, ::3], x[:, ::3]), (dev.T, x.T), (dev.ravel()[1:], x.ravel()[1:])]:
        y = kernels.sigmoid_forward_cuda(view)
        np.testing.assert_allclose(cp.asnumpy(y), kernels.sigmoid_forward_ref(host),
                                   rtol=8 * np.finfo(dtype).eps)
        dx = kernels.sigmoid_backward_cuda(y, view)
        np.testing.assert_array_equal(cp.asnumpy(dx),
                                      kernels.sigmoid_backward_ref(cp.asnumpy(y), host))


@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_out_in_place_and_strided(cp, host_rng, dtype):
    x = host_rng.standard_normal((64, 33)).astype(dtype)
    g = host_rng.standard_normal((64, 33)).astype(dtype)
    want_y = kernels.sigmoid_forward_ref(x)
    z = cp.asarray(x)
    assert kernels.sigmoid_forward_cuda(z, out=z) is z  # in place, as the executor calls it
    np.testing.assert_allclose(cp.asnumpy(z), want_y, rtol=8 * np.finfo(dtype).eps)
    y_host = cp.asnumpy(z)
    dg = cp.asarray(g)
    assert kernels.sigmoid_backward_cuda(z, dg, out=dg) is dg
    np.testing.assert_array_equal(cp.asnumpy(dg), kernels.sigmoid_backward_ref(y_host, g))
    wide = cp.zeros((64, 66), dtype)
    out = wide[:, ::2]  # a strided out is filled through a temporary
    assert kernels.sigmoid_forward_cuda(cp.asarray(x), out=out) is out
    np.testing.assert_allclose(cp.asnumpy(wide[:, ::2]), want_y, rtol=8 * np.finfo(dtype).eps)
    assert not cp.asnumpy(wide[:, 1::2]).any()
    with pytest.raises(gg.ShapeError, match="out is"):
        kernels.sigmoid_forward_cuda(cp.asarray(x), out=cp.zeros((64, 32), dtype))
    bk = get_backend("cuda")  # the backend: float16 computes in float32, written into out
    h = cp.asarray(x.astype(np.float16))
    assert bk.sigmoid_forward(h, out=h) is h
    np.testing.assert_allclose(cp.asnumpy(h), kernels.sigmoid_forward_ref(x.astype(np.float16)),
                               rtol=2e-3)


@pytest.mark.parametrize("c", [10, 1000])
def test_bad_labels(cp, host_rng, c):
    x, labels = logits_and_labels(host_rng, 20, c, np.float32)
    for bad in (-1, c):
        labels_bad = labels.copy()
        labels_bad[5] = bad
        with pytest.raises(ValueError, match=rf"cross_entropy: label {bad} is out of range for "
                                             rf"{c} classes"):
            kernels.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels_bad),
                                               grad_scale=1.0)
        # unchecked (the executor validated on the host): no sync, the row is NaN, others fine
        loss, grad = kernels.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels_bad),
                                                        grad_scale=1.0, check=False)
        loss, grad = cp.asnumpy(loss), cp.asnumpy(grad)
        assert np.isnan(loss[5]) and np.isnan(grad[5]).all()
        want = kernels.softmax_cross_entropy_ref(x, labels_bad, grad_scale=1.0, check=False)
        keep = np.arange(20) != 5
        assert_xent_close([loss[keep], grad[keep]], [want[0][keep], want[1][keep]], np.float32)
    # a later checked call is not confused by the error an unchecked one left behind
    kernels.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels), grad_scale=1.0)


@pytest.mark.parametrize("n, c", [(1000, 10), (1000, 1000), (64, 32768)])
def test_repeated_runs_are_bit_identical(cp, host_rng, n, c):
    x, labels = logits_and_labels(host_rng, n, c, np.float32)
    dx, dl = cp.asarray(x), cp.asarray(labels)
    runs = []
    for _ in range(3):
        loss, grad = kernels.softmax_cross_entropy_cuda(dx, dl, grad_scale=1.0 / n)
        total = kernels.reduce_loss_cuda(loss, "mean")
        runs.append((cp.asnumpy(loss), cp.asnumpy(grad), float(total)))
    for loss, grad, total in runs[1:]:
        np.testing.assert_array_equal(loss, runs[0][0])
        np.testing.assert_array_equal(grad, runs[0][1])
        assert total == runs[0][2]


@pytest.mark.parametrize("dtype", FLOATS)
def test_grad_scale_forms_and_optional_outputs(cp, host_rng, dtype):
    n, c = 300, 40
    x, labels = logits_and_labels(host_rng, n, c, dtype)
    dx, dl = cp.asarray(x), cp.asarray(labels)
    _, unit = kernels.softmax_cross_entropy_ref(x, labels, grad_scale=1.0)
    per_row = host_rng.standard_normal(n)
    forms = [(cp.asarray(np.float64(0.125)), unit * 0.125),   # 0-d device scalar, other dtype
             (cp.asarray(per_row), unit * per_row[:, None]),  # per-row on the device
             (per_row, unit * per_row[:, None]),               # per-row on the host
             (np.float32(2.0), unit * 2), (3, unit * 3)]
    for scale, want in forms:
        loss, grad = kernels.softmax_cross_entropy_cuda(dx, dl, grad_scale=scale,
                                                        want_loss=False)
        assert loss is None
        np.testing.assert_allclose(cp.asnumpy(grad), want, **GRAD_TOL[dtype])
    loss, grad = kernels.softmax_cross_entropy_cuda(dx, dl)
    assert grad is None
    np.testing.assert_allclose(cp.asnumpy(loss), kernels.softmax_cross_entropy_ref(x, labels)[0],
                               **LOSS_TOL[dtype])
    loss, grad = kernels.softmax_cross_entropy_cuda(dx[:0], dl[:0], grad_scale=1.0)
    assert loss.shape == (0,) and grad.shape == (0, c)


def test_launchers_reject_other_dtypes_and_host_arrays(cp):
    for dtype in (np.float16, np.int32):
        with pytest.raises(TypeError, match="float32 or float64"):
            kernels.sigmoid_forward_cuda(cp.zeros(4, dtype))
        with pytest.raises(TypeError, match="float32 or float64"):
            kernels.softmax_cross_entropy_cuda(cp.zeros((2, 3), dtype), cp.zeros(2, np.int64))
    with pytest.raises(TypeError, match="CuPy array"):
        kernels.sigmoid_forward_cuda(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="y is float32 but dy is float64"):
        kernels.sigmoid_backward_cuda(cp.zeros(4, np.float32), cp.zeros(4, np.float64))
    with pytest.raises(gg.ShapeError):
        kernels.softmax_cross_entropy_cuda(cp.zeros((2, 3), np.float32), cp.zeros(3, np.int64))


@pytest.mark.parametrize("n", [1, 7, 1000, 100003])
@pytest.mark.parametrize("dtype", FLOATS)
def test_reduce_loss(cp, host_rng, dtype, n):
    rows = (host_rng.random(n) * 5).astype(dtype)
    for reduction in ("sum", "mean"):
        got = kernels.reduce_loss_cuda(cp.asarray(rows), reduction)
        assert got.shape == () and got.dtype == dtype
        np.testing.assert_allclose(float(got), kernels.reduce_loss_ref(rows, reduction),
                                   rtol=2 * np.finfo(dtype).eps)


def test_float16_through_the_backend(cp, host_rng):
    bk = get_backend("cuda")
    x, labels = logits_and_labels(host_rng, 100, 50, np.float16)
    loss, grad = bk.softmax_cross_entropy(cp.asarray(x), cp.asarray(labels), grad_scale=1.0)
    want = kernels.softmax_cross_entropy_ref(x, labels, grad_scale=1.0)
    assert loss.dtype == np.float16 and grad.dtype == np.float16
    np.testing.assert_allclose(cp.asnumpy(loss), want[0], rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(cp.asnumpy(grad), want[1], rtol=2e-3, atol=2e-3)
    y = bk.sigmoid_forward(cp.asarray(x))
    assert y.dtype == np.float16
    np.testing.assert_allclose(cp.asnumpy(y), kernels.sigmoid_forward_ref(x), rtol=2e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_ops_end_to_end_match_cpu(host_rng, dtype, reduction):
    x, labels = logits_and_labels(host_rng, 257, 40, dtype)
    results = {}
    for device in ("cpu", "cuda"):
        t = gg.tensor(x, device=device, requires_grad=True)
        loss = gg.cross_entropy(gg.sigmoid(t) * 4 - t, gg.tensor(labels, device=device),
                                reduction=reduction)
        loss.backward(np.ones(loss.shape, dtype) if device == "cpu"
                      else gg.ones(*loss.shape, dtype=dtype, device="cuda"))
        results[device] = (loss.numpy(), t.grad.numpy())
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], **tol)
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], **tol)


def test_status_says_every_kernel_loads():
    for name, entry in kernels.status().items():
        assert entry["loads"] is True and entry["compiles"] is True, (name, entry)
