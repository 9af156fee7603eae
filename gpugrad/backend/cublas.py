"""Matrix products that a CUDA graph can capture: cuBLAS called through ctypes on gpugrad's own
handle.

Why not cupy.matmul: CuPy routes every GEMM through its cuBLAS wrapper, whose setStream raises
NotImplementedError('calling cuBLAS API during stream capture is currently unsupported') on a
capturing stream (cupy_backends/cuda/libs/cublas.pyx; cupy/cupy#6290). cuBLAS itself supports
capture (cuBLAS guide, "CUDA Graphs Support") when three things hold, and this module owns them:
- the handle is gpugrad's own, bound to the capture stream *before* capture begins
  (`prepare(stream)`), so no cublasSetStream happens inside the capture;
- the handle has a user workspace (cublasSetWorkspace, after every cublasSetStream, which resets
  it), allocated once per handle, so cuBLAS allocates nothing while capturing;
- alpha and beta are host scalars (the default pointer mode), read when the call is recorded:
  they are the constants 1 and 0 here, so the graph bakes in the right values.

The library is the libcublas that CuPy itself loaded (found in /proc/self/maps), else the one
cuda-pathfinder finds (how CuPy 14 locates CUDA's libraries), else the loader's search path.

Precision: float32 uses CUBLAS_COMPUTE_32F (no TF32; `allow_tf32=True` asks for
CUBLAS_COMPUTE_32F_FAST_TF32), float64 CUBLAS_COMPUTE_64F, float16 accumulates in float32: the
results equal cupy.matmul's to the dtype's rounding.

Row-major to column-major, without copies: a row-major C (m x n) = A (m x k) B (k x n) is, read
column-major, C^T (n x m) = B^T A^T. A C-contiguous operand read column-major *is* its transpose
(op N); an F-contiguous one (a `.T` view) is itself (op T). `plan()` works this out from shapes
and strides alone (pure Python, tested on the CPU against a NumPy model of the cuBLAS call).
"""
import ctypes
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError

# cuBLAS enums (cublas_api.h, library_types.h)
OP_N, OP_T = 0, 1
CUDA_R_16F, CUDA_R_32F, CUDA_R_64F = 2, 0, 1
COMPUTE_32F, COMPUTE_32F_FAST_TF32, COMPUTE_64F = 68, 77, 70
GEMM_DEFAULT = -1
_STATUS = {0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED",
           3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
           8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
           13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
           15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}

# dtype -> (cudaDataType, compute type, ctypes type of alpha/beta)
_TYPES = {np.dtype(np.float16): (CUDA_R_16F, COMPUTE_32F, ctypes.c_float),
          np.dtype(np.float32): (CUDA_R_32F, COMPUTE_32F, ctypes.c_float),
          np.dtype(np.float64): (CUDA_R_64F, COMPUTE_64F, ctypes.c_double)}
DTYPES = tuple(_TYPES)
_INT_MAX = 2**31 - 1


class CublasError(RuntimeError):
    """A cuBLAS call failed, or libcublas could not be found or used."""


# ---- planning: shapes and strides -> one cublasGemm(StridedBatched)Ex call ------------------

@dataclass(frozen=True)
class Plan:
    """The arguments of one column-major cuBLAS call computing row-major out = a @ b.

    cuBLAS's A is our b and its B is our a (C^T = B^T A^T). Offsets and strides in elements."""
    transa: int
    transb: int
    m: int      # = n of the row-major product
    n: int      # = m of the row-major product
    k: int
    lda: int
    ldb: int
    ldc: int
    stride_a: int   # batch strides: of b, of a, of out
    stride_b: int
    stride_c: int
    batch: int
    out_shape: tuple


def _matrix_layout(rows, cols, row_stride, col_stride):
    """(op, ld) reading a rows x cols row-major view as cuBLAS's column-major operand, or None
    when its strides fit neither layout (then it must be copied first).

    op N: the memory, read column-major, is the view's transpose (a row-major, C-ordered view);
    op T: the memory is the view itself (a column-major, F-ordered view, e.g. `x.T`)."""
    if (cols == 1 or col_stride == 1) and (rows == 1 or row_stride >= max(cols, 1)):
        return OP_N, (row_stride if rows > 1 else max(cols, 1))
    if (rows == 1 or row_stride == 1) and (cols == 1 or col_stride >= max(rows, 1)):
        return OP_T, (col_stride if cols > 1 else max(rows, 1))
    return None


def _batch_stride(batch_shape, shape, strides):
    """The one stride s with offset(batch index i) = i * s over the broadcast batch, or None."""
    lead = len(batch_shape) - len(shape)
    s, span = None, 1  # span: batch elements per step of the current axis
    for axis in range(len(batch_shape) - 1, -1, -1):
        size = batch_shape[axis]
        if size > 1:
            own = axis - lead
            stride = strides[own] if own >= 0 and shape[own] == size else 0  # broadcast: 0
            if s is None:
                s = stride // span if stride % span == 0 else None
                if s is None:
                    return None
            if stride != s * span:
                return None
        span *= size
    return 0 if s is None else s


def plan(a_shape, a_strides, b_shape, b_strides, itemsize):
    """The cuBLAS call for `a @ b` (each at least 2-D; strides in bytes), or None when a layout
    needs a copy first. Raises ShapeError for shapes matmul rejects."""
    m, k = a_shape[-2:]
    k2, n = b_shape[-2:]
    if k != k2:
        raise ShapeError(f"matmul: inner sizes differ: {tuple(a_shape)} @ {tuple(b_shape)} "
                         f"({k} != {k2})")
    try:
        batch_shape = np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    except ValueError:
        raise ShapeError(f"matmul: batch shapes {tuple(a_shape[:-2])} and "
                         f"{tuple(b_shape[:-2])} cannot be broadcast together "
                         f"({tuple(a_shape)} @ {tuple(b_shape)})") from None
    batch = int(np.prod(batch_shape, dtype=np.int64))
    out_shape = tuple(batch_shape) + (m, n)
    if 0 in (batch, m, n, k):  # nothing to read (the caller skips or zero-fills): any valid call
        return Plan(OP_N, OP_N, n, m, k, max(n, 1), max(k, 1), max(n, 1), 0, 0, m * n, batch,
                    out_shape)
    if any(s % itemsize for s in (*a_strides, *b_strides)):
        return None
    a_el = [s // itemsize for s in a_strides]
    b_el = [s // itemsize for s in b_strides]
    la = _matrix_layout(m, k, a_el[-2], a_el[-1])
    lb = _matrix_layout(k, n, b_el[-2], b_el[-1])
    sa = _batch_stride(batch_shape, a_shape[:-2], a_el[:-2])
    sb = _batch_stride(batch_shape, b_shape[:-2], b_el[:-2])
    if la is None or lb is None or sa is None or sb is None or sa < 0 or sb < 0:
        return None
    if max(m, n, k, la[1], lb[1], batch) > _INT_MAX:
        return None
    return Plan(transa=lb[0], transb=la[0], m=n, n=m, k=k, lda=lb[1], ldb=la[1],
                ldc=max(n, 1), stride_a=sb, stride_b=sa, stride_c=m * n, batch=batch,
                out_shape=out_shape)


# ---- the library and the handles -------------------------------------------------------------

_lib = None
_lib_lock = threading.Lock()


def _loaded_cublas_path():
    """The libcublas already mapped into this process (by CuPy), if any."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip().rpartition(" ")[2]
                if "/libcublas.so" in path:  # not libcublasLt
                    return path
    except OSError:
        pass
    return None


def _find_library():
    """(ctypes.CDLL, path): CuPy's libcublas, else cuda-pathfinder's, else the loader's."""
    tried = []
    try:
        from cupy_backends.cuda.libs import cublas as _  # noqa: F401  (makes CuPy load it)
    except Exception as e:  # a missing libcublas shows up here first
        tried.append(f"CuPy's cuBLAS module: {str(e).strip()}")
    path = _loaded_cublas_path()
    if path:
        return ctypes.CDLL(path), path
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
        loaded = load_nvidia_dynamic_lib("cublas")
        return ctypes.CDLL(loaded.abs_path), loaded.abs_path
    except Exception as e:
        tried.append(f"cuda-pathfinder: {e}")
    for name in ("libcublas.so.13", "libcublas.so.12", "libcublas.so"):
        try:
            return ctypes.CDLL(name), name
        except OSError as e:
            tried.append(str(e))
    raise CublasError("libcublas was not found (" + "; ".join(tried) + "); install cuBLAS "
                      "with CuPy's toolkit extra: pip install 'cupy-cuda12x[ctk]' (or "
                      "'cupy-cuda13x[ctk]'), or pip install \".[cuda12]\" from gpugrad's checkout")


def _bind(lib):
    p, i, ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    sigs = {
        "cublasCreate_v2": [ctypes.POINTER(p)],
        "cublasDestroy_v2": [p],
        "cublasSetStream_v2": [p, p],
        "cublasSetWorkspace_v2": [p, p, ctypes.c_size_t],
        "cublasSetMathMode": [p, i],
        "cublasGemmEx": [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i],
        "cublasGemmStridedBatchedEx": [p, i, i, i, i, i, p, p, i, i, ll, p, i, i, ll, p, p, i,
                                       i, ll, i, i, i],
    }
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


def library():
    """The bound libcublas (loaded once per process)."""
    global _lib
    if _lib is None:
        with _lib_lock:
            if _lib is None:
                lib, path = _find_library()
                try:
                    _lib = _bind(lib)
                except AttributeError as e:
                    raise CublasError(f"{path} lacks a cuBLAS entry point gpugrad needs: {e}")
                _lib.gpugrad_path = path
    return _lib


def _check(status, what):
    if status != 0:
        raise CublasError(f"{what} failed: {_STATUS.get(status, status)}")


class Handle:
    """gpugrad's cuBLAS handle for one device and thread, with its own workspace."""

    def __init__(self, cupy):
        self.cupy = cupy
        self.lib = library()
        self.device = cupy.cuda.runtime.getDevice()
        self.ptr = ctypes.c_void_p()
        _check(self.lib.cublasCreate_v2(ctypes.byref(self.ptr)), "cublasCreate")
        _check(self.lib.cublasSetMathMode(self.ptr, 0), "cublasSetMathMode")  # default math
        cc = int(cupy.cuda.Device(self.device).compute_capability)  # "90" on Hopper
        # cuBLAS's guidance: 32 MiB on Hopper and later, 4 MiB before
        self.workspace_bytes = (32 if cc >= 90 else 4) << 20
        # one workspace per stream: a graph captured on one stream and kernels queued on another
        # may run at once, and must not share scratch memory
        self.workspaces = {}
        self.stream = None

    def prepare(self, stream_ptr):
        """Bind the handle to a stream and attach that stream's workspace (cublasSetStream
        drops it). Call before capture begins; a no-op when already bound there."""
        if stream_ptr != self.stream:
            ws = self.workspaces.get(stream_ptr)
            if ws is None:
                ws = self.workspaces[stream_ptr] = self.cupy.empty(self.workspace_bytes, np.uint8)
            _check(self.lib.cublasSetStream_v2(self.ptr, ctypes.c_void_p(stream_ptr)),
                   "cublasSetStream")
            _check(self.lib.cublasSetWorkspace_v2(self.ptr, ctypes.c_void_p(ws.data.ptr),
                                                  ws.nbytes), "cublasSetWorkspace")
            self.stream = stream_ptr

    def gemm(self, p, a, b, out, allow_tf32=False):
        """Run plan `p` on the device arrays a, b into the C-contiguous `out`."""
        dtype, compute, scalar = _TYPES[out.dtype]
        if allow_tf32 and compute == COMPUTE_32F and out.dtype == np.float32:
            compute = COMPUTE_32F_FAST_TF32
        self.prepare(self.cupy.cuda.get_current_stream().ptr)
        one, zero = scalar(1), scalar(0)
        A, B, C = ctypes.c_void_p(b.data.ptr), ctypes.c_void_p(a.data.ptr), \
            ctypes.c_void_p(out.data.ptr)
        if p.batch == 1:
            status = self.lib.cublasGemmEx(
                self.ptr, p.transa, p.transb, p.m, p.n, p.k, ctypes.byref(one), A, dtype, p.lda,
                B, dtype, p.ldb, ctypes.byref(zero), C, dtype, p.ldc, compute, GEMM_DEFAULT)
        else:
            status = self.lib.cublasGemmStridedBatchedEx(
                self.ptr, p.transa, p.transb, p.m, p.n, p.k, ctypes.byref(one), A, dtype, p.lda,
                p.stride_a, B, dtype, p.ldb, p.stride_b, ctypes.byref(zero), C, dtype, p.ldc,
                p.stride_c, p.batch, compute, GEMM_DEFAULT)
        _check(status, f"cublasGemm{'' if p.batch == 1 else 'StridedBatched'}Ex "
                       f"({out.dtype}, m={p.n} n={p.m} k={p.k} batch={p.batch})")


_local = threading.local()  # one handle per thread and device: a handle is bound to one stream


def handle(cupy):
    """This thread's handle on the current device (created on first use)."""
    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    dev = cupy.cuda.runtime.getDevice()
    h = handles.get(dev)
    if h is None:
        h = handles[dev] = Handle(cupy)
    return h


def allow_tf32():
    """Whether float32 products may use TF32 (GPUGRAD_ALLOW_TF32=1; off by default)."""
    return os.environ.get("GPUGRAD_ALLOW_TF32", "0") not in ("", "0")
