"""gg.from_dlpack: zero-copy import from any DLPack producer (NumPy, CuPy, PyTorch, JAX, ...).

Export is Tensor.__dlpack__ / __dlpack_device__ (tensor.py), so np.from_dlpack(t),
torch.from_dlpack(t) and cupy.from_dlpack(t) share a gpugrad tensor's memory; np.asarray(t) does
too for CPU tensors (Tensor.__array__). Exchange is data only: no graph and no gradient cross
(export a tensor that requires grad and the consumer gets its values, as from .detach()).

Which array library consumes which DLPack device is `_consume`, one small function. It belongs in
the backend layer (a Backend.from_dlpack); it lives here until that layer is free to change.
"""
import numpy as np

from . import backend as _backend
from .errors import DeviceError
from .tensor import Tensor, _dtype

__all__ = ["from_dlpack"]

# DLPack device types (dlpack.h, DLDeviceType) that gpugrad can hold
_HOST = {1: "CPU", 3: "CUDA host (pinned)"}
_CUDA = {2: "CUDA", 13: "CUDA managed"}


def from_dlpack(obj):
    """A Tensor sharing `obj`'s memory, on the device where that memory is: no copy.

    obj: an object with __dlpack__ and __dlpack_device__ (numpy.ndarray, cupy.ndarray,
    torch.Tensor, a gpugrad Tensor...). Writes through either side are seen by the other. The
    result is a leaf that does not require grad; call .requires_grad_() to train it. Strides are
    kept (a transposed view stays a view). A read-only NumPy array gives a tensor whose data is
    read-only: ops work, in-place updates (an optimizer step) raise. PyTorch refuses to export a
    tensor that requires grad: pass t.detach().
    """
    if not (hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")):
        hint = (" (a DLPack capsule: pass the array itself, whose __dlpack__ makes the capsule)"
                if type(obj).__name__ == "PyCapsule" else "")
        raise TypeError(f"gg.from_dlpack: expected an object implementing the DLPack protocol "
                        f"(__dlpack__ and __dlpack_device__), such as a NumPy/CuPy array or a "
                        f"torch.Tensor; got {type(obj).__name__}{hint}")
    bk, array = _consume(obj)
    _dtype(array.dtype, "gg.from_dlpack")  # gpugrad holds bool, int and float arrays only
    return Tensor._make(array, bk)


def _consume(obj):
    """(backend, array viewing obj's memory): NumPy consumes host memory, CuPy CUDA memory."""
    kind, device_id = (int(v) for v in obj.__dlpack_device__())
    if kind in _HOST:
        return _backend.get_backend("cpu"), np.from_dlpack(obj)
    if kind in _CUDA:
        bk = _backend.get_backend("cuda")  # DeviceError saying why, when CUDA is unusable
        current = bk.xp.cuda.runtime.getDevice()
        if device_id != current:
            raise DeviceError(f"gg.from_dlpack: the array is on CUDA device {device_id}, gpugrad "
                              f"uses device {current}; copy it there first")
        return bk, bk.xp.from_dlpack(obj)
    raise DeviceError(f"gg.from_dlpack: DLPack device type {kind} (device {device_id}) is not "
                      f"supported; gpugrad holds CPU and CUDA memory")
