"""kernels/sigmoid.cu on the CPU against sigmoid_forward_ref / sigmoid_backward_ref: through the
launchers (every size class of the vector loop and its scalar tail, aligned and misaligned views,
in place, strided outputs, the grids the launcher picks for small and large GPUs) and by direct
launches with grids and blocks the launcher never picks."""
import numpy as np
import pytest

from gpugrad import kernels as K
from gpugrad.errors import ShapeError

from .common import FLOATS, FORWARD_ULPS, host, suffix, ulp_distance
from .cuemu import fakecupy

pytestmark = pytest.mark.emulated

# Sizes: below one 16-byte vector, every remainder mod the vector width (4 floats, 2 doubles),
# one block's trip (256 threads x 4 vectors), and several grid-stride trips of the 16-block grid
# that 2 SMs give (65536 floats per trip).
SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 33, 1000, 1001, 1023, 4099, 16385, 70001, 262147]


def check_forward(x_host, y):
    assert ulp_distance(host(y), K.sigmoid_forward_ref(x_host)).max() \
        <= FORWARD_ULPS[x_host.dtype.type]


@pytest.mark.parametrize("offset", [0, 1, 3], ids=["aligned", "off1", "off3"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_forward_and_backward_match_the_twins(cp, rng, dtype, n, offset):
    """offset k: a view k elements past a 16-byte boundary, so the kernel takes its scalar loop
    (every offset of a float32 and a float64 vector)."""
    host = ((rng.random(n + offset, dtype=np.float32) - 0.5) * 40).astype(dtype)
    x = cp.asarray(host)[offset:]
    y = K.sigmoid_forward_cuda(x)
    check_forward(host[offset:], y)
    # Backward: two multiplies and a subtract in the twin's order, nothing libm: bit-identical
    # (the data keeps every value and result normal; see test_ftz.py for subnormals).
    dy_host = (rng.random(n + offset, dtype=np.float32) + 0.5).astype(dtype)
    dy = cp.asarray(dy_host)[offset:]
    dx = K.sigmoid_backward_cuda(y, dy)
    np.testing.assert_array_equal(cp.asnumpy(dx),
                                  K.sigmoid_backward_ref(cp.asnumpy(y), dy_host[offset:]))
    # in place, as the executor calls them
    z = cp.asarray(host[offset:])
    assert K.sigmoid_forward_cuda(z, out=z) is z
    np.testing.assert_array_equal(cp.asnumpy(z), cp.asnumpy(y))
    assert K.sigmoid_backward_cuda(z, dy, out=dy) is dy
    np.testing.assert_array_equal(cp.asnumpy(dy), cp.asnumpy(dx))


@pytest.mark.parametrize("dtype", FLOATS)
def test_mixed_alignment_takes_the_scalar_loop(cp, rng, dtype):
    """The vector loop needs every pointer aligned: y aligned with dy or dx not, and the reverse."""
    n = 4099
    y_host = rng.random(n + 1).astype(dtype)
    dy_host = (rng.random(n + 1) - 0.5).astype(dtype)
    want = K.sigmoid_backward_ref(y_host[:n], dy_host[1:])
    aligned_y, shifted_dy = cp.asarray(y_host)[:n], cp.asarray(dy_host)[1:]
    np.testing.assert_array_equal(cp.asnumpy(K.sigmoid_backward_cuda(aligned_y, shifted_dy)), want)
    out = cp.empty(n + 1, dtype)[1:]
    got = K.sigmoid_backward_cuda(aligned_y, cp.asarray(dy_host[1:]), out=out)
    assert got is out
    np.testing.assert_array_equal(cp.asnumpy(out), want)
    x = cp.asarray(y_host)[:n]
    check_forward(y_host[:n], K.sigmoid_forward_cuda(x, out=cp.empty(n + 3, dtype)[3:]))


@pytest.mark.parametrize("dtype", FLOATS)
def test_shapes_strides_and_outputs(cp, rng, dtype):
    host = rng.standard_normal((37, 21)).astype(dtype)
    x = cp.asarray(host)
    y = K.sigmoid_forward_cuda(x)
    assert y.shape == (37, 21) and y.dtype == dtype
    check_forward(host, y)
    # a non-contiguous input is copied; a non-contiguous `out` receives the result
    check_forward(host[:, ::2], K.sigmoid_forward_cuda(x[:, ::2]))
    out = cp.empty((21, 37), dtype).T
    assert K.sigmoid_forward_cuda(x, out=out) is out
    check_forward(host, out)
    dy = cp.asarray(rng.standard_normal((37, 21)).astype(dtype))
    out = cp.empty((37, 42), dtype)[:, ::2]
    assert K.sigmoid_backward_cuda(y, dy, out=out) is out
    np.testing.assert_array_equal(cp.asnumpy(out),
                                  K.sigmoid_backward_ref(cp.asnumpy(y), cp.asnumpy(dy)))
    # empty and 0-d
    assert K.sigmoid_forward_cuda(cp.empty((0, 3), dtype)).shape == (0, 3)
    check_forward(host[0, :1].reshape(()), K.sigmoid_forward_cuda(x[0, 0]))
    with pytest.raises(ShapeError, match="out is"):
        K.sigmoid_forward_cuda(x, out=cp.empty((37, 20), dtype))
    with pytest.raises(TypeError, match="float32 or float64"):
        K.sigmoid_forward_cuda(cp.asarray(host.astype(np.float16)))


@pytest.mark.parametrize("dtype", FLOATS)
def test_extremes_are_exact_limits(cp, dtype):
    big = np.finfo(dtype).max
    x = np.array([-big, -1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4, big, np.inf, -np.inf, np.nan] * 3,
                 dtype)
    y = cp.asnumpy(K.sigmoid_forward_cuda(cp.asarray(x)))
    assert (ulp_distance(y, K.sigmoid_forward_ref(x)) <= FORWARD_ULPS[dtype]).all()
    np.testing.assert_array_equal(y[[0, 1, 4, 7, 8, 9, 10]], [0, 0, 0.5, 1, 1, 1, 0])
    assert np.isnan(y[11::12]).all()
    dx = cp.asnumpy(K.sigmoid_backward_cuda(cp.asarray(y), cp.asarray(np.ones(36, dtype))))
    assert dx[0] == 0 and dx[8] == 0 and np.isfinite(np.delete(dx, np.s_[11::12])).all()


@pytest.mark.parametrize("sms", [1, 132])
def test_the_grids_of_small_and_large_gpus(cp, rng, sms):
    """grid_1d: at most 8 blocks per SM. One SM: 8 blocks loop many times; 132 SMs (an H100):
    enough blocks that each thread makes one trip or none."""
    x_host = rng.standard_normal(300001).astype(np.float32)
    with fakecupy.installed(K, sms=sms):
        assert K.grid_1d(x_host.size, 4, sms) == (8 if sms == 1 else 74)
        check_forward(x_host, K.sigmoid_forward_cuda(cp.asarray(x_host)))
        check_forward(x_host[1:], K.sigmoid_forward_cuda(cp.asarray(x_host)[1:]))


@pytest.mark.parametrize("grid, block", [(1, 32), (1, 256), (3, 96), (7, 33), (100, 64)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_direct_launches_with_any_grid_and_block(modules, rng, dtype, grid, block):
    """The index arithmetic does not assume the launcher's block of 256 or its grid: partial warps
    and odd block sizes are legal here (no collectives), and so are idle blocks."""
    mod = modules["sigmoid.cu"]
    for n in (1, 4099):
        x = rng.standard_normal(n + 1).astype(dtype)
        for view in (x[:n], x[1:]):
            y = fakecupy.empty(n, dtype)
            mod.get_function(f"sigmoid_forward_{suffix(dtype)}")((grid,), (block,),
                                                                 (view, y, np.int64(n)))
            assert ulp_distance(y, K.sigmoid_forward_ref(view)).max() <= FORWARD_ULPS[dtype]
            dx = fakecupy.empty(n, dtype)
            mod.get_function(f"sigmoid_backward_{suffix(dtype)}")((grid,), (block,),
                                                                  (y, view, dx, np.int64(n)))
            np.testing.assert_array_equal(dx, K.sigmoid_backward_ref(np.asarray(y), view))
