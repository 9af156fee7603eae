"""The CUDA backend: CuPy arrays, CuPy's generator, and the hand-written kernels in ../kernels/.

This is the only module that imports CuPy, and it is imported only when CUDA is asked for or probed.
"""
import cupy
import cupyx
import numpy as np

from .. import kernels
from . import cublas
from .base import Backend


class CaptureError(RuntimeError):
    """A captured step called an operation that a CUDA graph cannot record."""


class CupyBackend(Backend):
    name = "cuda"
    xp = cupy

    def __init__(self, seed=None):
        self.rs = cupy.random.RandomState(seed)
        self._ones = {}  # (n, dtype, device) -> ones vector of sum_rows' GEMV

    def asarray(self, data, dtype=None):
        return cupy.asarray(data, dtype=dtype)

    def to_numpy(self, array):
        return cupy.asnumpy(array)

    def is_array(self, obj):
        return isinstance(obj, cupy.ndarray)

    def device_name(self):
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return (f"{name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, "
                f"sm_{props['major']}{props['minor']}")

    def synchronize(self):
        cupy.cuda.get_current_stream().synchronize()

    def seed(self, n):
        self.rs = cupy.random.RandomState(n)

    def randn(self, shape, dtype):
        dtype = np.dtype(dtype)
        if dtype in (np.float32, np.float64):
            return self.rs.standard_normal(shape, dtype=dtype)
        return self.rs.standard_normal(shape).astype(dtype)

    def rand(self, shape, dtype):
        dtype = np.dtype(dtype)
        if dtype in (np.float32, np.float64):
            return self.rs.random_sample(shape, dtype=dtype)
        return self.rs.random_sample(shape).astype(dtype)

    def permutation(self, n):
        return self.rs.permutation(n)

    def index_add(self, target, index, values):
        cupyx.scatter_add(target, index, values)

    def matmul(self, a, b, out=None):
        if a.dtype != b.dtype or a.dtype not in cublas.DTYPES or a.ndim == 0 or b.ndim == 0:
            _refuse_in_capture(f"matmul of {a.dtype} {a.shape} @ {b.dtype} {b.shape} (only "
                               f"float16/32/64 of one dtype use gpugrad's cuBLAS handle)")
            return cupy.matmul(a, b, out=out)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        p = cublas.plan(a2.shape, a2.strides, b2.shape, b2.strides, a.itemsize)
        if p is None:  # strides fit no single strided call: copy once, batch axes expanded
            _refuse_in_capture(f"matmul of strided views {a.shape} @ {b.shape} (needs a copy)")
            batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
            a2, b2 = (cupy.ascontiguousarray(cupy.broadcast_to(x, batch + x.shape[-2:]))
                      for x in (a2, b2))
            p = cublas.plan(a2.shape, a2.strides, b2.shape, b2.strides, a.itemsize)
            if p is None:  # e.g. sizes past cuBLAS's 32-bit arguments
                return cupy.matmul(a, b, out=out)
        m, n = p.out_shape[-2:]  # drop the axes that 1-D promotion added, as NumPy does
        shape = p.out_shape[:-2] + ((m,) if a.ndim > 1 else ()) + ((n,) if b.ndim > 1 else ())
        direct = (out is not None and out.dtype == a.dtype and out.shape == shape
                  and out.flags.c_contiguous)
        if out is not None and not direct:
            _refuse_in_capture(f"matmul into out {out.dtype} {out.shape} (expected a "
                               f"C-contiguous {a.dtype} {shape})")
        c = out if direct else cupy.empty(shape, a.dtype)
        if c.size and p.k == 0:
            c.fill(0)
        elif c.size:
            cublas.handle(cupy).gemm(p, a2, b2, c, allow_tf32=cublas.allow_tf32())
        return _into(c, None if direct else out)

    def sum_rows(self, a, out=None):
        if a.ndim != 2 or a.dtype not in cublas.DTYPES:
            return a.sum(axis=0, out=out)
        key = (a.shape[0], a.dtype, cupy.cuda.runtime.getDevice())
        ones = self._ones.get(key)
        if ones is None:
            _refuse_in_capture("sum_rows' first call for this size (allocates its ones vector)")
            if len(self._ones) > 64:
                self._ones.clear()
            ones = self._ones[key] = cupy.ones(a.shape[0], a.dtype)
        return self.matmul(ones, a, out=out)

    # The fused kernels take float32/float64. Other dtypes compute in float32 (float64 where NumPy
    # would give float64) and are cast back, so results have the dtypes the NumPy twins give.

    def sigmoid_forward(self, x, out=None):
        if x.dtype in _KERNEL_DTYPES and (out is None or out.dtype == x.dtype):
            return kernels.sigmoid_forward_cuda(x, out=out)
        dtype = np.result_type(x.dtype, np.float16)  # what NumPy's exp gives ints, bools, float16
        y = kernels.sigmoid_forward_cuda(x.astype(_work_dtype(dtype), copy=False))
        return _into(y.astype(dtype, copy=False), out)

    def sigmoid_backward(self, y, dy, out=None):
        dtype = np.result_type(y.dtype, dy.dtype)
        work = _work_dtype(dtype)
        if dy.shape != y.shape:
            dy = cupy.broadcast_to(dy, y.shape)
        direct = out is not None and out.dtype == work
        dx = kernels.sigmoid_backward_cuda(y.astype(work, copy=False), dy.astype(work, copy=False),
                                           out=out if direct else None)
        return dx if direct else _into(dx.astype(dtype, copy=False), out)

    def softmax_cross_entropy(self, logits, labels, grad_scale=None, want_loss=True, inplace=False,
                              check=True, loss_out=None):
        if logits.dtype in _KERNEL_DTYPES or logits.dtype.kind != "f":
            return kernels.softmax_cross_entropy_cuda(logits, labels, grad_scale, want_loss,
                                                      inplace, check, loss_out)
        # float16: accumulate in float32, as the NumPy twin does
        loss, grad = kernels.softmax_cross_entropy_cuda(
            logits.astype(np.float32), labels, grad_scale, want_loss, True, check)
        if loss is not None:
            loss = _into(loss.astype(logits.dtype), loss_out)
        if grad is not None:
            if inplace:
                logits[...] = grad
                grad = logits
            else:
                grad = grad.astype(logits.dtype)
        return loss, grad

    def reduce_loss(self, rows, reduction="sum", out=None):
        """Deterministic sum / mean of per-row losses (kernels/softmax_cross_entropy.cu)."""
        if rows.dtype in _KERNEL_DTYPES:
            return kernels.reduce_loss_cuda(rows, reduction, out)
        total = kernels.reduce_loss_cuda(rows.astype(np.float32), reduction)
        return _into(total.astype(rows.dtype), out)

    graphs = True
    capture_unsafe = {
        "to_numpy": "copies to the host and waits for the device",
        "upload, asarray of host data": "copies from pageable host memory (not recordable)",
        "randn, rand, permutation, seed": "CuPy's cuRAND generator allocates its output",
        "index_add": "cupyx.scatter_add allocates index arrays",
        "softmax_cross_entropy(check=True)": "reads the kernel's error flag back to the host",
        "matmul other than float16/32/64 of one dtype, or into a non-contiguous out":
            "goes through cupy.matmul or a copy; CuPy refuses cuBLAS calls during capture",
        "any op without out=, on non-contiguous input, or its first call":
            "allocates its result or a contiguous copy; first calls compile kernels",
        "xp reductions (sum, max, ...)": "CuPy's CUB reductions may allocate workspace; "
                                         "use sum_rows / reduce_loss",
    }

    _graph_status = None

    def graph_status(self):
        """Probed once: a GEMM + kernel + reductions captured, replayed and compared."""
        if self._graph_status is None:
            from .probe import probe_graphs
            self._graph_status = probe_graphs(self)
        return self._graph_status

    def capture(self, fn):
        from .cuda_graph import CudaGraph
        return CudaGraph(fn)

    def upload(self, dst, host):
        # one cudaMemcpyAsync straight from host memory, on the current stream: ordered with the
        # kernels (and graph replays) queued there
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype), stream=cupy.cuda.get_current_stream())


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _refuse_in_capture(what):
    """Raise CaptureError when the current stream is capturing: `what` cannot be recorded."""
    if cupy.cuda.runtime.streamIsCapturing(cupy.cuda.get_current_stream().ptr):
        raise CaptureError(f"{what} cannot be captured into a CUDA graph (see "
                           f"CupyBackend.capture_unsafe)")


def _work_dtype(dtype):
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _into(result, out):
    if out is None:
        return result
    out[...] = result
    return out
