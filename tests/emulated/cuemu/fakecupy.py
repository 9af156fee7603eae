"""The slice of CuPy that gpugrad/kernels.py's launchers use, on host memory, with RawModule
compiling through cuemu: the project's own launchers (launch shapes, argument packing, the error
flag, in-place and strided paths) run their kernels on the CPU, unmodified.

    with fakecupy.installed(gpugrad.kernels, sms=2):
        gpugrad.kernels.sigmoid_forward_cuda(fakecupy.asarray(x))

It reaches into the launchers through their hooks only: `kernels._cupy()` (returns the cupy
module), `kernels._loaded` (compiled kernels and the device info, per device); when those move,
this must follow.

What a real device does and a plain NumPy stand-in would hide:
- "Device" arrays are an ndarray subclass, so the launchers' isinstance checks tell them from host
  arrays.
- New device memory is poisoned (every byte 0xFF: NaN for floats, -1 for integers), as
  uninitialised memory holds garbage: an element a kernel fails to write shows up.
- Every allocation has guard bytes on both sides, checked after each launch: a kernel writing out
  of bounds fails the launch in every sanitizer mode, not only under ASan.
- CuPy compiles with -ftz=true, so float32 arithmetic flushes subnormal inputs and results to zero
  (PTX .ftz on every f32 instruction and on f32<->f64 conversions; f64 instructions never flush).
  A kernel taking float32 arrays runs with MXCSR FTZ|DAZ. On the CPU that mode flushes double
  arithmetic too, which only matters for doubles below 2.2e-308: none arise from float32 data.
"""
import contextlib
import re
import types

import numpy as np

from . import cuemu

POISON = 0xFF
GUARD, GUARD_BYTES = 0xA5, 64  # 64: keeps the data as aligned as the allocation itself


class ndarray(np.ndarray):
    """A device array: a NumPy array the launchers cannot mistake for a host one."""

    def __getitem__(self, key):
        """An element is a 0-d device array (a view), as in CuPy, never a NumPy scalar."""
        out = super().__getitem__(key)
        if isinstance(out, np.generic):
            out = super().__getitem__((*key, ...) if isinstance(key, tuple) else (key, ...))
        return out

    def get(self, stream=None):
        return np.array(self, copy=True).view(np.ndarray)

    def set(self, arr, stream=None):
        self[...] = arr

    # copies are new device allocations (poisoned, guarded), as cupy's are
    def copy(self, order="C"):
        out = empty(self.shape, self.dtype)
        out[...] = self
        return out

    def astype(self, dtype, copy=True, **kw):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        out = empty(self.shape, dtype)
        out[...] = self
        return out


class _Allocation(np.ndarray):
    """The bytes behind device arrays: [guard | data | guard]."""

    def check(self, what):
        front, back = self[:GUARD_BYTES], self[-GUARD_BYTES:]
        for side, guard in (("before", front[::-1]), ("past", back)):
            hit = np.flatnonzero(guard != GUARD)
            if hit.size:
                guard[...] = GUARD  # report each overrun once
                raise cuemu.EmulationError(
                    f"{what}: wrote {hit[-1] + 1} byte(s) {side} the end of its allocation "
                    "(out of bounds: a GPU would corrupt memory or fault)")


def _allocation_of(a):
    """The _Allocation under a device array or a view of one; None for host memory."""
    while isinstance(a, np.ndarray) and not isinstance(a, _Allocation):
        a = a.base
    return a if isinstance(a, _Allocation) else None


def empty(shape, dtype=np.float64):
    dtype = np.dtype(dtype)
    shape = (shape,) if np.ndim(shape) == 0 else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = _Allocation(nbytes + 2 * GUARD_BYTES, np.uint8)  # owns its memory: views end here
    raw.fill(GUARD)
    data = raw.view(np.ndarray)[GUARD_BYTES:GUARD_BYTES + nbytes]  # its .base is `raw`
    data.fill(POISON)
    return data.view(dtype).reshape(shape).view(ndarray)


def empty_like(a, dtype=None):
    return empty(a.shape, dtype or a.dtype)


def zeros(shape, dtype=np.float64):
    out = empty(shape, dtype)
    out.fill(0)
    return out


def asarray(a, dtype=None):
    if isinstance(a, ndarray) and (dtype is None or a.dtype == np.dtype(dtype)):
        return a
    host = np.asarray(a, dtype=dtype)
    out = empty(host.shape, host.dtype)
    out[...] = host
    return out


def asnumpy(a):
    return np.array(a, copy=True).view(np.ndarray) if isinstance(a, np.ndarray) else np.asarray(a)


class CompileException(Exception):
    pass


class RawModule:
    def __init__(self, code, options=(), **kw):
        first = re.match(r"//\s*(\w+\.cu)\b", code)  # each .cu opens with "// name.cu: ..."
        try:
            self._module = cuemu.Module(code, first.group(1) if first else "kernel.cu", options)
        except cuemu.EmulationError as e:
            raise CompileException(str(e)) from None

    def get_function(self, name):
        return RawKernel(self._module.get_function(name))


class RawKernel:
    """A cuemu.Kernel launched as CuPy would run it (float32 flush-to-zero), then the guard
    check. RawModule.get_function makes them; a test may wrap a mutant's kernel in one."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.ftz = any(p.is_ptr and p.elem_kind == 3 and p.elem_size == 4 for p in kernel.params)

    def __call__(self, grid, block, args, shared_mem=0, stream=None, **options):
        self.kernel(grid, block, args, shared_mem, stream, **{"ftz": self.ftz, **options})
        for i, a in enumerate(args):
            allocation = _allocation_of(a)
            if allocation is not None:
                allocation.check(f"{self.kernel.name} argument {i}")


class _Device:
    sms = 2

    def __init__(self, i=0):
        self.id = i

    @property
    def attributes(self):
        return {"MultiProcessorCount": _Device.sms}


cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(getDevice=lambda: 0),
    Device=_Device,
    compiler=types.SimpleNamespace(CompileException=CompileException),
)


@contextlib.contextmanager
def installed(kernels_module, sms=2):
    """Point gpugrad.kernels at this module (its `_cupy()` hook) with an empty kernel cache, and
    put both back afterwards. sms: the SM count the launchers size grids by (2: the elementwise
    grid is at most 16 blocks, so its grid-stride loop runs)."""
    import sys
    saved_hook, saved_loaded = kernels_module._cupy, dict(kernels_module._loaded)
    _Device.sms = sms
    kernels_module._cupy = lambda: sys.modules[__name__]
    kernels_module._loaded.clear()
    try:
        yield sys.modules[__name__]
    finally:
        kernels_module._cupy = saved_hook
        kernels_module._loaded.clear()
        kernels_module._loaded.update(saved_loaded)
