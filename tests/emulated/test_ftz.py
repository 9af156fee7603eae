"""The float32 subnormal contract of the kernels, pinned.

CuPy compiles every kernel with -ftz=true: each float32 instruction reads a subnormal operand as
zero and writes a subnormal result as zero (sign kept), and so do the float32 <-> float64
conversions; float64 instructions keep subnormals. The NumPy twins keep them in both dtypes.
So for float32, with flush(v) = 0 where |v| < 2^-126:
  - exact arithmetic (sigmoid backward: two multiplies and a subtract) is the twin on flushed
    inputs, flushed:  kernel(a, b) == flush(twin(flush(a), flush(b))), bit for bit;
  - where a libm function is involved (sigmoid forward's exp, softmax's exp and log) the kernel
    is within that function's error of the twin for normal results, and 0 where the twin's
    result is subnormal;
and float64 agrees with its twin down to the smallest subnormal.

What is compared, and why this is the GPU's contract too: fakecupy runs float32 kernels with the
CPU's MXCSR FTZ|DAZ, the same rule as PTX's .ftz, so the flushes here are exactly a GPU's. The exp
and log are glibc's here and CUDA's on a GPU, both within ~2 ulp of correctly rounded but not the
same function, so results involving them are compared with the twin in ulps (FORWARD_ULPS,
measured here over the sweeps below), never bit for bit; a flushed value is compared exactly
(0, not "small").
"""
import numpy as np
import pytest

from gpugrad import kernels as K

from .common import FORWARD_ULPS, GRAD_TOL, LOSS_TOL, ulp_distance

pytestmark = pytest.mark.emulated

TINY32 = np.finfo(np.float32).tiny  # 2^-126, the smallest normal float32


def flush(a):
    """What -ftz=true makes of a float32 value: subnormals become zero."""
    a = np.asarray(a)
    return np.where(np.abs(a) < np.finfo(a.dtype).tiny, a.dtype.type(0), a)


def every_nth_float32(lo, hi, step):
    """Every `step`-th float32 bit pattern from lo to hi (both >= 0): a sweep dense in every
    binade, unlike a uniform draw."""
    bits = np.arange(np.float32(lo).view(np.int32), np.float32(hi).view(np.int32), step)
    return bits.astype(np.int32).view(np.float32)


def test_sigmoid_forward_float32_is_within_ulps_over_its_normal_range(cp, rng):
    """y = sigmoid(x) is a normal float32 for x >= -87.33 (1 + exp(-x) <= 2^126)."""
    sweep = every_nth_float32(0, 88.72, 2048)
    x = np.concatenate([sweep, -sweep[sweep <= 87.33],
                        rng.uniform(-87.33, 88.72, 2**20).astype(np.float32)])
    want = K.sigmoid_forward_ref(x)
    assert (want >= TINY32).all()
    got = cp.asnumpy(K.sigmoid_forward_cuda(cp.asarray(x)))
    assert ulp_distance(got, want).max() <= FORWARD_ULPS[np.float32]


def test_sigmoid_forward_float32_subnormal_results_are_zero(cp):
    """For x in (-88.72, -87.34) the twin's y is a subnormal; the kernel's is +0."""
    x = np.linspace(-88.72, -87.34, 4096, dtype=np.float32)
    want = K.sigmoid_forward_ref(x)
    assert ((want > 0) & (want < TINY32)).all()
    got = cp.asnumpy(K.sigmoid_forward_cuda(cp.asarray(x)))
    assert (got == 0).all() and not np.signbit(got).any()


def test_sigmoid_float32_subnormal_inputs_are_read_as_zero(cp):
    sub = np.array([1e-45, -1e-45, 1e-40, -1e-40, 1.1e-38, -1.1e-38], np.float32)
    assert (np.abs(sub) < TINY32).all()
    assert (cp.asnumpy(K.sigmoid_forward_cuda(cp.asarray(sub))) == 0.5).all()  # as the twin
    # y subnormal: the twin's dy * y is a normal float32, the kernel's is 0 * dy
    y = np.array([1e-39, 1e-45, 0.5, 0.5], np.float32)
    dy = np.array([1e30, 1e30, 1e-40, -1e-39], np.float32)
    want = K.sigmoid_backward_ref(y, dy)
    assert (np.abs(want[:2]) >= TINY32).all()
    got = cp.asnumpy(K.sigmoid_backward_cuda(cp.asarray(y), cp.asarray(dy)))
    np.testing.assert_array_equal(got, [0, 0, 0, 0])


def test_sigmoid_backward_float32_is_the_twin_with_subnormals_flushed(cp, rng):
    n = 200_000
    y = K.sigmoid_forward_ref(rng.uniform(-100, 100, n).astype(np.float32))  # 0, subnormal, normal
    dy = (rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-45, 38, n)).astype(np.float32)
    got = cp.asnumpy(K.sigmoid_backward_cuda(cp.asarray(y), cp.asarray(dy)))
    np.testing.assert_array_equal(got, flush(K.sigmoid_backward_ref(flush(y), flush(dy))))
    plain = K.sigmoid_backward_ref(y, dy)
    normal = (np.abs(plain) >= TINY32) & (np.abs(y) >= TINY32) & (np.abs(dy) >= TINY32)
    np.testing.assert_array_equal(got[normal], plain[normal])  # normal in and out: the twin
    assert (got != plain).sum() > 1000  # ... and elsewhere it differs: the data reach subnormals


def test_float64_keeps_subnormals(cp, rng):
    x = np.linspace(-709.78, -708.40, 4096)  # the twin's y is a float64 subnormal
    want = K.sigmoid_forward_ref(x)
    assert (want < np.finfo(np.float64).tiny).all() and (want > 0).all()
    got = cp.asnumpy(K.sigmoid_forward_cuda(cp.asarray(x)))
    assert ulp_distance(got, want).max() <= FORWARD_ULPS[np.float64]
    y = np.concatenate([want, rng.random(4096)])
    dy = np.concatenate([rng.standard_normal(4096), 10.0 ** rng.uniform(-320, -300, 4096)])
    got = cp.asnumpy(K.sigmoid_backward_cuda(cp.asarray(y), cp.asarray(dy)))
    np.testing.assert_array_equal(got, K.sigmoid_backward_ref(y, dy))
    assert (got[got != 0] < 1e-300).all() and (got != 0).sum() > 4000


# Softmax rows whose probabilities span the float32 and float64 subnormal ranges: row max 0, the
# rest spaced so that some exp(x - max) / s are normal, some subnormal (float32: below -87.3;
# float64: between -745 and -708) and some 0. The label is column 0 (the max).
GAPS = {np.float32: [0, -1, -10, -50, -80, -87, -90, -95, -100, -103, -120, -200],
        np.float64: [0, -1, -10, -100, -600, -700, -710, -720, -730, -740, -800, -1000]}


@pytest.mark.parametrize("c", [12, 48, 1000, 1001])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_gradient_flushes_tiny_probabilities_in_float32_only(cp, rng, dtype, c):
    n = 6
    x = np.resize(np.array(GAPS[dtype], dtype), (n, c))
    for row in x:
        rng.shuffle(row[1:])
    labels = np.zeros(n, np.int64)
    loss, grad = K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels), grad_scale=1.0)
    want_loss, want = K.softmax_cross_entropy_ref(x, labels, grad_scale=1.0)
    np.testing.assert_allclose(cp.asnumpy(loss), want_loss, **LOSS_TOL[dtype])
    grad = cp.asnumpy(grad)
    tiny = np.finfo(dtype).tiny
    subnormal = (want != 0) & (np.abs(want) < tiny)
    assert subnormal.any()
    if dtype == np.float32:  # exactly 0 where the twin has a subnormal
        np.testing.assert_array_equal(grad[subnormal], 0)
    else:  # the same subnormals, to the exp's few ulp
        assert (grad[subnormal] != 0).all()
        assert ulp_distance(grad[subnormal], want[subnormal]).max() <= 8
    np.testing.assert_allclose(grad[~subnormal], want[~subnormal], **GRAD_TOL[dtype])


@pytest.mark.parametrize("c", [12, 1000])
def test_softmax_float32_scaled_gradients_below_the_normal_range_are_zero(cp, rng, c):
    x = rng.standard_normal((8, c)).astype(np.float32)
    labels = rng.integers(0, c, 8)
    scale = 4 * TINY32  # normal, but (probability - onehot) * scale is subnormal below 1/4
    grad = cp.asnumpy(K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels),
                                                   grad_scale=scale, want_loss=False)[1])
    want = K.softmax_cross_entropy_ref(x, labels, grad_scale=scale, want_loss=False)[1]
    subnormal = (want != 0) & (np.abs(want) < TINY32)
    assert subnormal.mean() > 0.5
    np.testing.assert_array_equal(grad[subnormal], 0)
    np.testing.assert_allclose(grad[~subnormal], want[~subnormal], rtol=GRAD_TOL[np.float32]["rtol"])
    # a subnormal scale is read as 0: no gradient at all, where the twin's is subnormal
    grad = cp.asnumpy(K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels),
                                                   grad_scale=np.float32(1e-40),
                                                   want_loss=False)[1])
    assert (grad == 0).all() and K.softmax_cross_entropy_ref(
        x, labels, grad_scale=np.float32(1e-40), want_loss=False)[1].any()


def test_loss_sum_float32_reads_subnormal_losses_as_zero(cp):
    """loss_sum_f32 widens each value to float64 (cvt.ftz.f64.f32: a subnormal becomes 0) and
    rounds the total back to float32 once (a subnormal total becomes 0)."""
    rows = np.full(1000, 1e-40, np.float32)
    assert K.reduce_loss_ref(rows) >= TINY32  # 1e-37: the twin's sum is normal
    assert cp.asnumpy(K.reduce_loss_cuda(cp.asarray(rows))) == 0
    rows = np.array([1.5 * TINY32, 0, 0, 0], np.float32)
    assert 0 < K.reduce_loss_ref(rows, "mean") < TINY32
    assert cp.asnumpy(K.reduce_loss_cuda(cp.asarray(rows), "mean")) == 0
    rows = np.full(1000, 1e-310)  # float64: kept
    np.testing.assert_allclose(cp.asnumpy(K.reduce_loss_cuda(cp.asarray(rows))),
                               K.reduce_loss_ref(rows), rtol=1e-12)
