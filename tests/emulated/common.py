"""What the emulated tests share: test data, the kernel-vs-twin tolerances, ulp distances, a
direct launch of a softmax kernel checked against its twin."""
import numpy as np

from gpugrad import kernels as K

from .cuemu import fakecupy

FLOATS = [np.float32, np.float64]

# Kernel vs NumPy twin: glibc's exp/log (here) or CUDA's (on a GPU) against NumPy's own SIMD
# exp/log, and a different summation order. The same bounds as tests/gpu/test_kernels_gpu.py.
LOSS_TOL = {np.float32: dict(rtol=1e-5, atol=5e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
GRAD_TOL = {np.float32: dict(rtol=1e-4, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-14)}

# Sigmoid forward: the kernel's expf/exp (glibc here, CUDA's on a GPU) against NumPy's own SIMD
# exp, which differ by up to 2 ulp; 1 / (1 + e) carries that into y. Measured here over dense
# sweeps of the normal range (test_ftz.py): float32 4 ulp, float64 3 ulp.
FORWARD_ULPS = {np.float32: 4, np.float64: 3}


def suffix(dtype):
    return {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]


def logits_and_labels(rng, n, c, dtype, spread=3.0):
    """(n, c) logits uniform in [-spread, spread) and labels that include the first and the last
    class."""
    x = ((rng.random((n, c), dtype=np.float32) - 0.5) * (2 * spread)).astype(dtype)
    labels = rng.integers(0, c, n)
    labels[0] = c - 1
    labels[-1] = 0
    return x, labels


def host(a):
    """A device array's values in host memory (CuPy's and fakecupy's arrays have .get())."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def assert_xent_close(got, want, dtype, scale=1.0):
    """(loss, grad) of a kernel against the twin's; either may be None (not computed)."""
    (loss, grad), (want_loss, want_grad) = got, want
    if want_loss is not None:
        np.testing.assert_allclose(host(loss), want_loss, **LOSS_TOL[dtype])
    if want_grad is not None:
        tol = dict(GRAD_TOL[dtype])
        tol["atol"] *= abs(scale)
        np.testing.assert_allclose(host(grad), want_grad, **tol)


def ulp_distance(a, b):
    """|a - b| in units in the last place, elementwise (0 for equal bits; +0 and -0 are 0 apart,
    NaN against NaN is 0)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.dtype.kind == "f", (a.dtype, b.dtype)
    signed = np.dtype(f"i{a.itemsize}")

    def ordered(v):  # the integers in the order of the floats they are the bits of
        i = v.view(signed).astype(np.int64)
        return np.where(i < 0, np.iinfo(signed).min - i, i)

    both_nan = np.isnan(a) & np.isnan(b)
    return np.where(both_nan, 0, np.abs(ordered(a) - ordered(b)))


def xent_args(x, labels, loss, grad, scale, error, extra=()):
    """Arguments of a direct softmax_xent_* launch: scale by value, loss and gradient wanted;
    `extra` is the small kernel's log2_group."""
    n, c = x.shape
    return (x, labels, x, np.int64(-1), x.dtype.type(scale), loss, grad, np.int32(1), np.int32(1),
            np.int64(n), np.int32(c), *extra, error)


def check_xent_launch(kernel, x, labels, grid, block, scale=1.0, **options):
    """Launch a softmax_xent_* kernel directly on host (x, labels) with this grid and block (and
    cuemu launch options: seed...) and check it against the twin: AssertionError when wrong."""
    n, c = x.shape
    loss, grad = fakecupy.empty(n, x.dtype), fakecupy.empty((n, c), x.dtype)
    error = np.zeros(1, np.int32)
    extra = (np.int32((c - 1).bit_length()),) if "_small_" in kernel.name else ()
    kernel((grid,), (block,), xent_args(x, labels, loss, grad, scale, error, extra), **options)
    assert error[0] == 0
    assert_xent_close((loss, grad), K.softmax_cross_entropy_ref(x, labels, grad_scale=scale),
                      x.dtype.type, scale)
