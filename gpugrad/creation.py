"""Making tensors: gg.tensor from data, and the filled/random factories.

Python data defaults to float32 (floats) or int64 (ints); NumPy/CuPy arrays keep their dtype; a
new tensor always owns a copy of its data.
"""
import numpy as np

from . import backend as _backend
from .errors import ShapeError
from .tensor import Tensor


def _dtype(dtype, op="tensor"):
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{op}: unknown dtype {dtype!r}") from e
    if dt.kind not in "biuf":
        raise TypeError(f"{op}: unsupported dtype {dt}; use a float, int or bool dtype")
    return dt


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new leaf tensor holding a copy of `data` (scalar, nested list, NumPy/CuPy array, Tensor).

    Arrays keep their dtype; Python floats become float32 and ints int64; `dtype` overrides.
    Device: `device` if given, else the data's own device for a Tensor or CuPy array, else the
    default device (gg.set_device).
    """
    if isinstance(data, Tensor):
        src, arr = data._bk, data.data
    else:
        src = _backend.backend_for_array(data)
        arr = data
    if device is not None:
        bk = _backend.get_backend(device)
    elif src is not None and (isinstance(data, Tensor) or src.name != "cpu"):
        bk = src
    else:
        bk = _backend.get_backend(None)
    if src is None:  # Python data: scalars, nested lists
        if isinstance(data, str) or data is None:
            raise TypeError(f"tensor: cannot make a tensor from {type(data).__name__}")
        try:
            arr = np.array(data)
        except ValueError as e:
            raise ShapeError(f"tensor: nested sequences of unequal lengths ({e})") from None
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"tensor: cannot make a tensor from {type(data).__name__} holding "
                            f"{arr.dtype} values")
        if dtype is None and arr.dtype == np.float64 and not isinstance(data, np.generic):
            arr = arr.astype(np.float32)
    dt = _dtype(dtype) if dtype is not None else _dtype(arr.dtype)
    if src is not None and src is not bk:
        arr = bk.asarray(src.to_numpy(arr), dtype=dt)  # to_numpy of a device array is a copy
    else:
        arr = bk.xp.array(arr, dtype=dt)  # always a copy: the tensor owns its data
    t = Tensor._make(arr, bk)
    if requires_grad:
        t.requires_grad = True
    return t


def _shape_arg(shape, op):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if not all(isinstance(s, (int, np.integer)) and s >= 0 for s in shape):
        raise TypeError(f"{op}: shape must be non-negative ints, got {shape!r}")
    return tuple(int(s) for s in shape)


def _filled(op, fill, shape, dtype, device, requires_grad):
    bk = _backend.get_backend(device)
    dt = _dtype(dtype if dtype is not None else np.float32, op)
    shape = _shape_arg(shape, op)
    arr = fill(bk, shape, dt)
    t = Tensor._make(arr, bk)
    if requires_grad:
        t.requires_grad = True
    return t


def zeros(*shape, dtype=None, device=None, requires_grad=False):
    return _filled("zeros", lambda bk, s, d: bk.xp.zeros(s, d), shape, dtype, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    return _filled("ones", lambda bk, s, d: bk.xp.ones(s, d), shape, dtype, device, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False):
    """Standard normal samples from the device's generator (seeded by gg.manual_seed)."""
    return _filled("randn", lambda bk, s, d: bk.randn(s, d), shape, dtype, device, requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False):
    """Uniform samples in [0, 1) from the device's generator (seeded by gg.manual_seed)."""
    return _filled("rand", lambda bk, s, d: bk.rand(s, d), shape, dtype, device, requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    return zeros(*t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return ones(*t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


