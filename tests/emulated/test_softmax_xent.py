"""kernels/softmax_cross_entropy.cu (the softmax_xent_* kernels) on the CPU, through
softmax_cross_entropy_cuda, against softmax_cross_entropy_ref: every launch shape xent_launch can
choose, C from 1 to 200,000, the vector and scalar paths, in place, loss_out, every form of
grad_scale, loss only and gradient only, and bad labels."""
import numpy as np
import pytest

from gpugrad import kernels as K
from gpugrad.errors import ShapeError

from .common import FLOATS, GRAD_TOL, assert_xent_close, logits_and_labels

pytestmark = pytest.mark.emulated

# The small kernel (C <= 32): a lane group of 2^log2_group lanes per row, every group size.
SMALL_C = [1, 2, 3, 4, 5, 8, 9, 16, 17, 31, 32]
# The large kernel (C > 32): each thread count 32..512 at both ends of its range of C, each with
# C a multiple of 4 (the float32 16-byte vector path), even (float64's) and odd (scalar).
LARGE_C = [33, 34, 64, 527, 528, 1000, 1001, 1038, 1039, 1040, 1041, 1042, 2063, 2064, 2066, 4111,
           4112, 4113, 4114]


def shape_of(c):
    """(kind, block, extra args) that the launcher picks for C classes (the grid follows N)."""
    kind, _, block, extra = K.xent_launch(1, c)
    return kind, block, tuple(int(e) for e in extra)


def test_the_cases_cover_every_launch_shape():
    every = {shape_of(c) for c in range(1, 200_001)}
    assert {shape_of(c) for c in SMALL_C + LARGE_C} == every
    for block in {b for kind, b, _ in every if kind == "large"}:
        cs = [c for c in LARGE_C if shape_of(c)[1] == block]
        assert any(c % 4 == 0 for c in cs) and any(c % 4 == 2 for c in cs), block
        assert any(c % 2 for c in cs), block


def xent_both(cp, x, labels, **kw):
    """The launcher's (loss, grad) as host arrays, and the twin's, for host x and labels."""
    got = K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels), **kw)
    want = K.softmax_cross_entropy_ref(x.copy(), labels, **kw)
    return [None if a is None else cp.asnumpy(a) for a in got], want


# Rows: small C packs 8..256 rows per block (partial blocks and warps); large C has a block per
# row, so more rows add nothing new.
SHAPES = [(n, c) for c in SMALL_C for n in (1, 7, 300)] + [(n, c) for c in LARGE_C for n in (1, 6)]


@pytest.mark.parametrize("n, c", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_every_launch_shape(cp, rng, dtype, n, c):
    x, labels = logits_and_labels(rng, n, c, dtype)
    got, want = xent_both(cp, x, labels, grad_scale=1.0 / n)
    assert got[0].dtype == dtype and got[1].shape == (n, c)
    assert_xent_close(got, want, dtype, 1.0 / n)


@pytest.mark.parametrize("n, c", [(2, 32768), (3, 32772), (2, 100001), (3, 200000)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_huge_c(cp, rng, dtype, n, c):
    x, labels = logits_and_labels(rng, n, c, dtype, spread=10)
    got, want = xent_both(cp, x, labels, grad_scale=0.5)
    assert_xent_close(got, want, dtype, 0.5)


@pytest.mark.parametrize("c", [3, 10, 32, 33, 1000, 1001])
@pytest.mark.parametrize("dtype", FLOATS)
def test_layouts_in_place_and_loss_out(cp, rng, dtype, c):
    """In place (the executor's path), misaligned rows (scalar loads), strided logits (copied, and
    copied back in place), int32 and strided labels, and loss_out contiguous or strided."""
    n = 17
    x, labels = logits_and_labels(rng, n, c, dtype)
    want = K.softmax_cross_entropy_ref(x, labels, grad_scale=0.5)
    dev = cp.asarray(x)
    loss_out = cp.empty(n, dtype)
    loss, grad = K.softmax_cross_entropy_cuda(dev, cp.asarray(labels), grad_scale=0.5,
                                              inplace=True, loss_out=loss_out)
    assert grad is dev and loss is loss_out
    assert_xent_close((loss, grad), want, dtype, 0.5)
    shifted = cp.asarray(np.concatenate([[0], x.ravel()]).astype(dtype))[1:].reshape(n, c)
    assert_xent_close(K.softmax_cross_entropy_cuda(shifted, cp.asarray(labels), grad_scale=0.5),
                      want, dtype, 0.5)
    loss, grad = K.softmax_cross_entropy_cuda(shifted, cp.asarray(labels), grad_scale=0.5,
                                              inplace=True)
    assert grad is shifted
    assert_xent_close((loss, shifted), want, dtype, 0.5)
    wide = cp.asarray(np.repeat(x, 2, axis=1))[:, ::2]
    strided_loss = cp.empty(2 * n, dtype)[::2]
    loss, grad = K.softmax_cross_entropy_cuda(wide, cp.asarray(labels.astype(np.int32)),
                                              grad_scale=0.5, inplace=True, loss_out=strided_loss)
    assert grad is wide and loss is strided_loss
    assert_xent_close((loss, wide), want, dtype, 0.5)
    labels_view = cp.asarray(np.repeat(labels, 3))[::3]
    assert_xent_close(K.softmax_cross_entropy_cuda(cp.asarray(x), labels_view, grad_scale=0.5),
                      want, dtype, 0.5)
    with pytest.raises(ShapeError, match="out is"):
        K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels), loss_out=cp.empty(n, "i8"))


@pytest.mark.parametrize("c", [3, 32, 33, 1000, 1001])
@pytest.mark.parametrize("dtype", FLOATS)
def test_every_form_of_grad_scale(cp, rng, dtype, c):
    """A number goes by value; a 0-d device array is read by the kernel (stride 0); a per-row
    array, device or host, is read per row (stride 1); None: no gradient at all."""
    n = 12
    x, labels = logits_and_labels(rng, n, c, dtype)
    unit = K.softmax_cross_entropy_ref(x, labels, grad_scale=1.0)[1]
    per_row = rng.standard_normal(n)
    scales = [(0.25, 0.25), (2, 2.0), (np.float32(0.5), 0.5), (np.array(0.125), 0.125),
              (cp.asarray(np.float64(0.125)), 0.125), (cp.asarray(np.float32(-3.0)), -3.0),
              (cp.asarray(per_row), per_row[:, None]), (per_row, per_row[:, None]),
              (cp.asarray(per_row.astype(dtype)), per_row.astype(dtype)[:, None])]
    for scale, factor in scales:
        loss, grad = K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels),
                                                  grad_scale=scale, want_loss=False)
        assert loss is None
        np.testing.assert_allclose(cp.asnumpy(grad), unit * factor, **GRAD_TOL[dtype],
                                   err_msg=f"grad_scale={scale!r}")
    loss, grad = K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels))
    assert grad is None
    assert_xent_close((loss, None), (K.softmax_cross_entropy_ref(x, labels)[0], None), dtype)
    with pytest.raises(ShapeError, match="grad_scale"):
        K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels), grad_scale=per_row[:-1])


@pytest.mark.parametrize("c", [2, 33, 1001])
@pytest.mark.parametrize("dtype", FLOATS)
def test_nothing_to_compute_launches_nothing(cp, dtype, c):
    x, labels = np.zeros((0, c), dtype), np.zeros(0, np.int64)
    loss, grad = K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels), grad_scale=1.0)
    assert loss.shape == (0,) and grad.shape == (0, c)
    x, labels = cp.asarray(np.zeros((3, c), dtype)), cp.asarray(np.array([0, 1, c]))
    assert K.softmax_cross_entropy_cuda(x, labels, want_loss=False, check=False) == (None, None)
    with pytest.raises(ValueError, match=f"label {c} is out of range"):  # checked all the same
        K.softmax_cross_entropy_cuda(x, labels, want_loss=False)


@pytest.mark.parametrize("c", [5, 32, 33, 1000, 1001])
@pytest.mark.parametrize("dtype", FLOATS)
def test_extreme_and_masked_logits(cp, rng, dtype, c):
    """Logits of +-1e4 (exp overflows without the max subtracted) and -inf (masked classes) give
    finite losses and gradients, as in the twin."""
    n = 12
    x, labels = logits_and_labels(rng, n, c, dtype)
    x = np.where(rng.random((n, c)) < 0.5, x, rng.choice(np.array([-1e4, 1e4], dtype), (n, c)))
    got, want = xent_both(cp, x, labels, grad_scale=1.0)
    assert np.isfinite(got[0]).all() and np.isfinite(got[1]).all()
    assert_xent_close(got, want, dtype)
    x[rng.random((n, c)) < 0.3] = -np.inf
    x[np.arange(n), labels] = 1.0  # the label's class is never masked
    got, want = xent_both(cp, x, labels, grad_scale=1.0)
    assert np.isfinite(got[0]).all() and np.isfinite(got[1]).all()
    assert_xent_close(got, want, dtype)


@pytest.mark.parametrize("c", [1, 10, 32, 33, 1000, 1001])
@pytest.mark.parametrize("dtype", FLOATS)
def test_bad_labels(cp, rng, dtype, c):
    """check=True: ValueError naming the label; check=False: that row's loss and gradient are
    NaN and the other rows are right, in place or not, loss or gradient alone."""
    n = 12
    x, labels = logits_and_labels(rng, n, c, dtype)
    keep = np.ones(n, bool)
    for row, bad in ((5, -1), (0, c), (n - 1, 2**40), (7, -2**40)):
        lb = labels.copy()
        lb[row] = bad
        keep[:] = True
        keep[row] = False
        with pytest.raises(ValueError, match=rf"label {bad} is out of range for {c} classes"):
            K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(lb), grad_scale=1.0)
        want = K.softmax_cross_entropy_ref(x, lb, grad_scale=1.0, check=False)
        for kw in (dict(grad_scale=1.0), dict(grad_scale=1.0, inplace=True),
                   dict(grad_scale=cp.asarray(np.ones(n))), dict(), dict(grad_scale=1.0,
                                                                         want_loss=False)):
            dev = cp.asarray(x)
            loss, grad = K.softmax_cross_entropy_cuda(dev, cp.asarray(lb), check=False, **kw)
            if loss is not None:
                loss = cp.asnumpy(loss)
                assert np.isnan(loss[row]) and not np.isnan(loss[keep]).any()
                assert_xent_close((loss[keep], None), (want[0][keep], None), dtype)
            if grad is not None:
                assert (grad is dev) == kw.get("inplace", False)
                grad = cp.asnumpy(grad)
                assert np.isnan(grad[row]).all() and not np.isnan(grad[keep]).any()
                assert_xent_close((None, grad[keep]), (None, want[1][keep]), dtype)
    # the error flag of a failed call is not left set for the next one
    assert_xent_close(K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels),
                                                   grad_scale=1.0),
                      K.softmax_cross_entropy_ref(x, labels, grad_scale=1.0), dtype)
