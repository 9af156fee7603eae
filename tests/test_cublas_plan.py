"""gpugrad's cuBLAS call plan (backend/cublas.py), checked on the CPU: a NumPy model of what
cublasGemmStridedBatchedEx computes (column-major, op N/T, leading dimensions, batch strides,
with cuBLAS's own argument checks) is run on each plan over the operands' real memory, and must
equal np.matmul. The GPU tests run the same layouts through libcublas (tests/gpu/test_cublas_gpu.py).
"""
import numpy as np
import pytest

from _matmul_layouts import buffer, layouts
from gpugrad.backend import cublas
from gpugrad.errors import ShapeError


def _offset(x, base):
    return (x.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // x.itemsize


def _op(buf, off, trans, rows, cols, ld):
    """op(X) (rows x cols) of a column-major matrix at buf[off:] with leading dimension ld."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return buf[off + (r + c * ld if trans == cublas.OP_N else c + r * ld)]


def run_model(p, a, a_base, b, b_base):
    """What cuBLAS computes for plan p (its A is our b, its B our a), as a row-major result."""
    assert p.lda >= max(1, p.m if p.transa == cublas.OP_N else p.k), "cuBLAS: lda too small"
    assert p.ldb >= max(1, p.k if p.transb == cublas.OP_N else p.n), "cuBLAS: ldb too small"
    assert p.ldc >= max(1, p.m), "cuBLAS: ldc too small"
    c = np.full(int(np.prod(p.out_shape)), np.nan)
    oa, ob = _offset(b, b_base), _offset(a, a_base)
    for i in range(p.batch):
        A = _op(b_base, oa + i * p.stride_a, p.transa, p.m, p.k, p.lda)
        B = _op(a_base, ob + i * p.stride_b, p.transb, p.k, p.n, p.ldb)
        r, col = np.meshgrid(np.arange(p.m), np.arange(p.n), indexing="ij")
        c[i * p.stride_c + r + col * p.ldc] = A @ B
    return c.reshape(p.out_shape)


@pytest.mark.parametrize("name, a, a_base, b, b_base", layouts(np),
                         ids=[case[0] for case in layouts(np)])
def test_plan_computes_matmul_without_copies(name, a, a_base, b, b_base):
    p = cublas.plan(a.shape, a.strides, b.shape, b.strides, a.itemsize)
    assert p is not None, f"{name}: no copy-free plan"
    np.testing.assert_array_equal(run_model(p, a, a_base, b, b_base), np.matmul(a, b))


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
    np.testing.assert_array_equal(run_model(p, a2, a2.reshape(-1), b2, b2.reshape(-1)),
                                  np.matmul(a, b))


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
    monkeypatch.setitem(__import__("sys").modules, "cuda.pathfinder", None)
    with pytest.raises(cublas.CublasError, match=r"(?s)libcublas was not found.*\[ctk\]"):
        cublas.library()


def _no_library(name, *args, **kwargs):
    raise OSError(f"{name}: cannot open shared object file")
