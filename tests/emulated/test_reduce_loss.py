"""loss_sum_* (kernels/softmax_cross_entropy.cu) on the CPU through reduce_loss_cuda, against
reduce_loss_ref: both reductions, sizes around the block's 1024 threads and its 8-load unroll,
`out`, strided and empty rows."""
import numpy as np
import pytest

from gpugrad import kernels as K
from gpugrad.errors import ShapeError

from .common import FLOATS

pytestmark = pytest.mark.emulated


@pytest.mark.parametrize("n", [1, 1023, 1025, 8191, 8192, 8193, 100003])
@pytest.mark.parametrize("dtype", FLOATS)
def test_sum_and_mean(cp, rng, dtype, n):
    """Both accumulate in float64 and round once; only the order of the additions differs."""
    rows = (rng.random(n) * 5).astype(dtype)
    for reduction in ("sum", "mean"):
        got = K.reduce_loss_cuda(cp.asarray(rows), reduction)
        assert got.shape == () and got.dtype == dtype
        np.testing.assert_allclose(cp.asnumpy(got), K.reduce_loss_ref(rows, reduction),
                                   rtol=2 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_strided_and_empty(cp, rng, dtype):
    rows = (rng.random(3001) * 5).astype(dtype)
    out = cp.empty((), dtype)
    assert K.reduce_loss_cuda(cp.asarray(rows), "mean", out=out) is out
    np.testing.assert_allclose(cp.asnumpy(out), K.reduce_loss_ref(rows, "mean"),
                               rtol=2 * np.finfo(dtype).eps)
    strided = cp.asarray(rows)[::3]
    np.testing.assert_allclose(cp.asnumpy(K.reduce_loss_cuda(strided)),
                               K.reduce_loss_ref(rows[::3]), rtol=2 * np.finfo(dtype).eps)
    empty = cp.asarray(np.zeros(0, dtype))
    assert cp.asnumpy(K.reduce_loss_cuda(empty, "sum")) == 0
    assert np.isnan(cp.asnumpy(K.reduce_loss_cuda(empty, "mean")))
    with pytest.raises(ValueError, match="'sum' or 'mean'"):
        K.reduce_loss_cuda(cp.asarray(rows), "max")
    with pytest.raises(ShapeError, match="1-D"):
        K.reduce_loss_cuda(cp.asarray(rows[:3000].reshape(30, 100)))
