"""gpugrad's cuBLAS call plan (backend/cublas.py), checked on the CPU: a NumPy model of what
cublasGemmStridedBatchedEx computes (column-major, op N/T, leading dimensions, batch strides,
with cuBLAS's own argument checks) is run on each plan over the operands' real memory, and must
equal np.matmul. The GPU tests run the same layouts through libcublas (tests/gpu/test_cublas_gpu.py).
"""
import ctypes
import sys
import types

import numpy as np
import pytest

from _matmul_layouts import buffer, layouts
from gpugrad.backend import cublas
from gpugrad.errors import ShapeError


def _memory(x, elements):
    """The `elements` items of memory that start at x's first element (what a pointer sees)."""
    raw = (ctypes.c_char * (elements * x.itemsize)).from_address(x.__array_interface__["data"][0])
    return np.frombuffer(raw, dtype=x.dtype)


def _op(buf, off, trans, rows, cols, ld):
    """op(X) (rows x cols) of a column-major matrix at buf[off:] with leading dimension ld."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return buf[off + (r + c * ld if trans == cublas.OP_N else c + r * ld)]


def _extent(p, which):
    """Elements cuBLAS may read from an operand's pointer: batch strides plus the last column."""
    trans, rows, cols, ld, stride = ((p.transa, p.m, p.k, p.lda, p.stride_a) if which == "A"
                                     else (p.transb, p.k, p.n, p.ldb, p.stride_b))
    if trans == cublas.OP_T:
        rows, cols = cols, rows
    return (p.batch - 1) * stride + ld * (cols - 1) + rows


def model_gemm(p, a, b, out):
    """What cublasGemmStridedBatchedEx does with plan p on the memory behind the arrays (its A is
    our b, its B our a), with cuBLAS's own argument checks; writes into C-contiguous `out`."""
    assert p.lda >= max(1, p.m if p.transa == cublas.OP_N else p.k), "cuBLAS: lda too small"
    assert p.ldb >= max(1, p.k if p.transb == cublas.OP_N else p.n), "cuBLAS: ldb too small"
    assert p.ldc >= max(1, p.m), "cuBLAS: ldc too small"
    assert out.flags.c_contiguous and out.size == p.batch * p.m * p.n
    A, B, C = _memory(b, _extent(p, "A")), _memory(a, _extent(p, "B")), out.reshape(-1)
    r, col = np.meshgrid(np.arange(p.m), np.arange(p.n), indexing="ij")
    for i in range(p.batch):
        C[i * p.stride_c + r + col * p.ldc] = (
            _op(A, i * p.stride_a, p.transa, p.m, p.k, p.lda) @
            _op(B, i * p.stride_b, p.transb, p.k, p.n, p.ldb))
    return out


def run_model(p, a, b):
    return model_gemm(p, a, b, np.full(p.out_shape, np.nan, a.dtype))


@pytest.mark.parametrize("name, a, a_base, b, b_base", layouts(np),
                         ids=[case[0] for case in layouts(np)])
def test_plan_computes_matmul_without_copies(name, a, a_base, b, b_base):
    p = cublas.plan(a.shape, a.strides, b.shape, b.strides, a.itemsize)
    assert p is not None, f"{name}: no copy-free plan"
    np.testing.assert_array_equal(run_model(p, a, b), np.matmul(a, b))


def test_layouts_that_need_a_copy_are_refused():
    base = buffer(np, 400, 3)
    every_other = base[:48].reshape(6, 8)[:, ::2]  # neither unit row nor unit column stride
    assert cublas.plan(every_other.shape, every_other.strides, (4, 2), (16, 8), 8) is None
    # batch axes that do not step evenly through memory: (2, 1) x (1, 3) broadcast
    a, b = base[:24].reshape(2, 1, 3, 4), base[:60].reshape(1, 3, 4, 5)
    assert cublas.plan(a.shape, a.strides, b.shape, b.strides, 8) is None
    # after the backend's copy (batch axes expanded, C order) a plan exists and is right
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a2 = np.ascontiguousarray(np.broadcast_to(a, batch + a.shape[-2:]))
    b2 = np.ascontiguousarray(np.broadcast_to(b, batch + b.shape[-2:]))
    p = cublas.plan(a2.shape, a2.strides, b2.shape, b2.strides, 8)
    np.testing.assert_array_equal(run_model(p, a2, b2), np.matmul(a, b))


def test_plan_rejects_what_matmul_rejects():
    with pytest.raises(ShapeError, match=r"inner sizes differ: \(3, 4\) @ \(5, 2\)"):
        cublas.plan((3, 4), (32, 8), (5, 2), (16, 8), 8)
    with pytest.raises(ShapeError, match="batch shapes .* cannot be broadcast"):
        cublas.plan((2, 3, 4), (96, 32, 8), (3, 4, 5), (160, 40, 8), 8)


def test_compute_types_keep_tf32_off_unless_asked():
    assert cublas._TYPES[np.dtype(np.float32)][1] == cublas.COMPUTE_32F
    assert cublas._TYPES[np.dtype(np.float64)][1] == cublas.COMPUTE_64F
    assert cublas._TYPES[np.dtype(np.float16)][1] == cublas.COMPUTE_32F  # float32 accumulation
    assert not cublas.allow_tf32()


def test_missing_libcublas_names_the_fix(monkeypatch):
    """Without libcublas anywhere, the error says what to install (the probe shows it)."""
    monkeypatch.setattr(cublas, "_lib", None)
    monkeypatch.setattr(cublas, "_loaded_cublas_path", lambda: None)
    monkeypatch.setattr(cublas.ctypes, "CDLL", _no_library)
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", None)
    with pytest.raises(cublas.CublasError, match=r"(?s)libcublas was not found.*\[ctk\]"):
        cublas.library()


def _no_library(name, *args, **kwargs):
    raise OSError(f"{name}: cannot open shared object file")


@pytest.mark.parametrize("sa, sb", [((4, 0), (0, 3)), ((0, 4), (4, 3)), ((4, 3), (3, 0)),
                                    ((0, 2, 3), (3, 5))])
def test_empty_operands_get_a_plan_and_the_right_shape(sa, sb):
    a, b = np.ones(sa), np.ones(sb)
    p = cublas.plan(a.shape, a.strides, b.shape, b.strides, 8)
    assert p is not None and p.out_shape == np.matmul(a, b).shape


class _Stream:
    ptr = 0


class _ModelHandle:
    """Stands in for gpugrad's cuBLAS handle: runs each planned call through model_gemm."""
    calls = 0

    def gemm(self, p, a, b, out, allow_tf32=False):
        _ModelHandle.calls += 1
        model_gemm(p, a, b, out)


@pytest.fixture
def cpu_cupy_backend(monkeypatch):
    """The real CupyBackend.matmul / sum_rows code, on NumPy arrays, with the cuBLAS call
    executed by the model: checks the result shapes, 1-D promotion, out= and the copy paths."""
    cb = pytest.importorskip("gpugrad.backend.cupy_backend")
    fake = types.SimpleNamespace(
        empty=np.empty, ones=np.ones, matmul=np.matmul, broadcast_to=np.broadcast_to,
        ascontiguousarray=np.ascontiguousarray,
        cuda=types.SimpleNamespace(get_current_stream=lambda: _Stream(),
                                   runtime=types.SimpleNamespace(streamIsCapturing=lambda s: 0,
                                                                 getDevice=lambda: 0)))
    monkeypatch.setattr(cb, "cupy", fake)
    monkeypatch.setattr(cb.cublas, "handle", lambda cupy: _ModelHandle())
    bk = cb.CupyBackend.__new__(cb.CupyBackend)
    bk._ones = {}
    return bk


@pytest.mark.parametrize("sa, sb", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)),
                                    ((4,), (4,)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 2, 4)),
                                    ((0, 3), (3, 2)), ((3, 0), (0, 2))])
def test_backend_matmul_shapes_and_out(cpu_cupy_backend, sa, sb):
    bk = cpu_cupy_backend
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64, np.float16):
        a = rng.integers(-3, 4, sa).astype(dtype)
        b = rng.integers(-3, 4, sb).astype(dtype)
        if len(sb) > 2:
            b = b.swapaxes(-1, -2)  # a batch of transposed views
        want = np.matmul(a, b)
        got = bk.matmul(a, b)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        out = np.full(want.shape, np.nan, dtype)
        assert bk.matmul(a, b, out=out) is out
        np.testing.assert_array_equal(out, want)
    strided_out = np.full(want.shape + (2,), np.nan, dtype)[..., 0]  # not contiguous: a copy
    if want.ndim:
        assert bk.matmul(a, b, out=strided_out) is strided_out
        np.testing.assert_array_equal(strided_out, want)


def test_backend_matmul_copies_or_falls_back(cpu_cupy_backend):
    bk = cpu_cupy_backend
    x = np.arange(48, dtype=np.float32).reshape(6, 8)
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(bk.matmul(x[:, ::2], w), x[:, ::2] @ w)  # copied, then GEMM
    a, b = np.ones((2, 1, 3, 4)), np.ones((1, 3, 4, 5))  # uneven batch: expanded, then GEMM
    np.testing.assert_array_equal(bk.matmul(a, b), np.matmul(a, b))
    ints = np.arange(6).reshape(2, 3)
    calls = _ModelHandle.calls
    np.testing.assert_array_equal(bk.matmul(ints, ints.T), ints @ ints.T)  # cupy.matmul
    np.testing.assert_array_equal(bk.matmul(x[:2, :3].astype(np.float64), w[:3]),
                                  x[:2, :3].astype(np.float64) @ w[:3])  # mixed dtypes: cupy.matmul
    assert _ModelHandle.calls == calls
    g = np.arange(15, dtype=np.float32).reshape(5, 3)
    col = np.empty(3, np.float32)
    assert bk.sum_rows(g, out=col) is col
    np.testing.assert_array_equal(col, g.sum(axis=0))


def test_a_real_libcublas_binds_every_entry_point():
    """Where a libcublas is installed (the nvidia-cublas wheel; not in CI's venv), gpugrad binds
    every entry point it calls; without a driver cublasCreate reports NOT_INITIALIZED, which
    becomes a CublasError naming the call."""
    try:
        lib = cublas.library()
    except cublas.CublasError as e:
        pytest.skip(f"no libcublas here: {e}")
    handle = ctypes.c_void_p()
    status = lib.cublasCreate_v2(ctypes.byref(handle))
    if status == 0:
        lib.cublasDestroy_v2(handle)
        pytest.skip("a GPU is usable: tests/gpu/test_cublas_gpu.py covers the real calls")
    with pytest.raises(cublas.CublasError, match="cublasCreate failed: CUBLAS_STATUS_"):
        cublas._check(status, "cublasCreate")
