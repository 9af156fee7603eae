"""gpugrad's own cuBLAS GEMM on a GPU: every layout against cupy.matmul, in float16/32/64, and
captured into a CUDA graph (what CuPy's own matmul cannot do). Skipped, with the reason, where no
CUDA GPU is usable; the call plan itself is tested on the CPU (tests/test_cublas_plan.py)."""
import numpy as np
import pytest

import gpugrad as gg
from _matmul_layouts import layouts
from gpugrad.backend import cublas, get_backend

if not gg.cuda.is_available():
    pytest.skip(f"needs a usable CUDA GPU: {gg.cuda.unavailable_reason()}",
                allow_module_level=True)

import cupy  # noqa: E402

from gpugrad.backend.cupy_backend import CaptureError  # noqa: E402

pytestmark = pytest.mark.gpu
DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_layout_equals_cupy_matmul(dtype):
    bk = get_backend("cuda")
    for name, a, _, b, _ in layouts(cupy, dtype):
        got = bk.matmul(a, b)
        want = cupy.matmul(a, b)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_array_equal(cupy.asnumpy(got), cupy.asnumpy(want), err_msg=name)


@pytest.mark.parametrize("dtype, rtol", [(np.float16, 2e-3), (np.float32, 1e-5),
                                         (np.float64, 1e-13)])
def test_random_products_match_cupy_and_float64(dtype, rtol, host_rng):
    bk = get_backend("cuda")
    a = host_rng.standard_normal((96, 256)).astype(dtype)
    b = host_rng.standard_normal((256, 80)).astype(dtype)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    for x, y in ((a, b), (np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T)):
        got = cupy.asnumpy(bk.matmul(cupy.asarray(x), cupy.asarray(y))).astype(np.float64)
        want = cupy.asnumpy(cupy.matmul(cupy.asarray(x), cupy.asarray(y))).astype(np.float64)
        scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
        assert np.max(np.abs(got - ref) / scale) < rtol
        assert np.max(np.abs(got - want) / scale) < rtol


def test_out_vectors_empty_and_fallbacks(host_rng):
    bk = get_backend("cuda")
    a = cupy.asarray(host_rng.standard_normal((5, 7)).astype(np.float32))
    b = cupy.asarray(host_rng.standard_normal((7, 3)).astype(np.float32))
    out = cupy.empty((5, 3), np.float32)
    assert bk.matmul(a, b, out=out) is out
    np.testing.assert_allclose(cupy.asnumpy(out), cupy.asnumpy(a @ b), rtol=1e-6)
    v = cupy.asarray(host_rng.standard_normal(7).astype(np.float32))
    np.testing.assert_allclose(cupy.asnumpy(bk.matmul(a, v)), cupy.asnumpy(a @ v), rtol=1e-6)
    np.testing.assert_allclose(cupy.asnumpy(bk.matmul(v, b)), cupy.asnumpy(v @ b), rtol=1e-6)
    assert bk.matmul(v, v).shape == ()
    zero_k = bk.matmul(cupy.ones((4, 0), np.float32), cupy.ones((0, 3), np.float32))
    assert zero_k.shape == (4, 3) and not zero_k.any()
    assert bk.matmul(cupy.ones((0, 4), np.float32), cupy.ones((4, 3), np.float32)).shape == (0, 3)
    ints = bk.matmul(cupy.arange(6).reshape(2, 3), cupy.arange(6).reshape(3, 2))  # cupy.matmul
    np.testing.assert_array_equal(cupy.asnumpy(ints), np.arange(6).reshape(2, 3) @
                                  np.arange(6).reshape(3, 2))
    strided = a[:, ::2]  # needs a copy: still right (to float32 rounding of a 4-term sum: on
    # the H200 one element with cancellation differed from cupy.matmul by 1.2e-6 relative)
    np.testing.assert_allclose(cupy.asnumpy(bk.matmul(strided, b[:4])),
                               cupy.asnumpy(strided @ b[:4]), rtol=1e-5, atol=1e-6)
    col = cupy.empty(7, np.float32)
    assert bk.sum_rows(a, out=col) is col
    np.testing.assert_allclose(cupy.asnumpy(col), cupy.asnumpy(a.sum(axis=0)), rtol=1e-5)


def test_cupy_matmul_cannot_be_captured_but_ours_can(host_rng):
    """The premise (CuPy refuses cuBLAS on a capturing stream) and the fix, side by side."""
    bk = get_backend("cuda")
    a = cupy.asarray(host_rng.standard_normal((64, 48)).astype(np.float32))
    b = cupy.asarray(host_rng.standard_normal((48, 32)).astype(np.float32))
    out = cupy.empty((64, 32), np.float32)
    cupy.matmul(a, b, out=out)  # warm CuPy's own path outside capture
    with pytest.raises(NotImplementedError, match="stream capture"):
        bk.capture(lambda: cupy.matmul(a, b, out=out))
    bk.matmul(a, b, out=out)
    want = cupy.asnumpy(out).copy()
    out.fill(0)
    graph = bk.capture(lambda: bk.matmul(a, b, out=out))
    assert not cupy.asnumpy(out).any() and graph.allocated_bytes == 0
    graph.launch()
    np.testing.assert_array_equal(cupy.asnumpy(out), want)
    # batched and transposed operands replay too
    x = cupy.asarray(host_rng.standard_normal((3, 16, 8)).astype(np.float64))
    y = cupy.asarray(host_rng.standard_normal((3, 16, 4)).astype(np.float64))
    z = cupy.empty((3, 8, 4), np.float64)
    bk.matmul(x.swapaxes(-1, -2), y, out=z)
    want = cupy.asnumpy(z).copy()
    z.fill(0)
    g2 = bk.capture(lambda: bk.matmul(x.swapaxes(-1, -2), y, out=z))
    g2.launch()
    np.testing.assert_array_equal(cupy.asnumpy(z), want)


def test_uncapturable_operations_raise_capture_error():
    bk = get_backend("cuda")
    ints = cupy.arange(6).reshape(2, 3)
    with pytest.raises(CaptureError, match="matmul of int64"):
        bk.capture(lambda: bk.matmul(ints, ints.T))
    assert "to_numpy" in bk.capture_unsafe and "matmul" in " ".join(bk.capture_unsafe)


def test_graph_probe_passes_and_reports():
    assert gg.cuda.graphs_available(), gg.cuda.graphs_unavailable_reason()
    names = [row[0] for row in gg.cuda.probe_report()]
    assert names == ["cupy", "device", "nvrtc", "cublas", "curand"]
    assert all(ok for _, ok, _ in gg.cuda.probe_report())
    assert "libcublas" in cublas.library().gpugrad_path


def test_tf32_is_off_unless_asked(host_rng, monkeypatch):
    """TF32 rounds the inputs to 10 mantissa bits: relative error ~1e-3 instead of ~1e-6."""
    bk = get_backend("cuda")
    a = host_rng.standard_normal((256, 512)).astype(np.float32)
    b = host_rng.standard_normal((512, 256)).astype(np.float32)
    ref = a.astype(np.float64) @ b
    err = lambda got: np.max(np.abs(cupy.asnumpy(got) - ref)) / np.max(np.abs(ref))  # noqa: E731
    assert err(bk.matmul(cupy.asarray(a), cupy.asarray(b))) < 1e-5
    monkeypatch.setenv("GPUGRAD_ALLOW_TF32", "1")
    assert err(bk.matmul(cupy.asarray(a), cupy.asarray(b))) < 5e-3  # allowed, not forced
