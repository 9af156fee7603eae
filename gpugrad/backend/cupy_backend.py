"""The CUDA backend: CuPy arrays, CuPy's generator, and the hand-written kernels in ../kernels/.

This is the only module that imports CuPy, and it is imported only when CUDA is asked for or probed.
"""
import cupy
import cupyx
import numpy as np

from .. import kernels
from .base import Backend


class CupyBackend(Backend):
    name = "cuda"
    xp = cupy

    def __init__(self, seed=None):
        self.rs = cupy.random.RandomState(seed)

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

    def capture(self, fn):
        from .cuda_graph import CudaGraph
        return CudaGraph(fn)

    def upload(self, dst, host):
        # one cudaMemcpyAsync straight from host memory, on the current stream: ordered with the
        # kernels (and graph replays) queued there
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype), stream=cupy.cuda.get_current_stream())


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _work_dtype(dtype):
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _into(result, out):
    if out is None:
        return result
    out[...] = result
    return out
