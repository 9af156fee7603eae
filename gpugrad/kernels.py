"""The fused primitives: NumPy reference twins (CPU backend) and the CUDA kernels' loader and
launchers (CuPy backend).

Each `*_ref` function has the same math, stable formula and semantics as its kernel in
kernels/*.cu and its `*_cuda` launcher here, so the CPU backend is the oracle the GPU tests compare
against. CuPy is imported only inside the CUDA functions: the CPU backend imports this module too.
"""
import re
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import ShapeError

# ---- NumPy reference twins -------------------------------------------------------------------

# The reductions as ufunc methods: ndarray.max/.sum go through a Python wrapper each call, which
# the executor's small-batch step pays several times (the twins only ever see NumPy arrays).
_max, _min, _sum = np.maximum.reduce, np.minimum.reduce, np.add.reduce
_F16 = np.dtype(np.float16)


def sigmoid_forward_ref(x, out=None):
    """y = 1 / (1 + exp(-x)), into `out` when given (which may be x itself).

    exp(-x) overflows to inf for very negative x, and 1/(1+inf) = 0 is the right limit, so the
    overflow warning is silenced rather than the input clipped; unlike 0.5*tanh(x/2)+0.5 this keeps
    full relative precision for tiny outputs. The result has the dtype NumPy's exp gives (ints
    and bools become floats); float16 computes in float32 (in float16, exp(-x) overflows already
    at x = -11.1), as the CUDA backend does.
    """
    x = np.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.result_type(x.dtype, np.float16)
    work = dtype if dtype.itemsize >= 4 else np.dtype(np.float32)
    direct = out is not None and out.dtype == work  # compute in `out`: no temporary
    with np.errstate(over="ignore", under="ignore"):
        t = np.asarray(np.negative(x, dtype=work, out=out if direct else None))  # 0-d stays array
        np.exp(t, out=t)
        t += 1
        np.reciprocal(t, out=t)
        if out is None:
            return t.astype(dtype, copy=False)
        if not direct:
            out[...] = t
        return out


def sigmoid_backward_ref(y, dy, out=None):
    """dx = (dy * y) * (1 - y), from the stored output: no exp recomputed, no inf*0 for large |x|.
    The kernel performs the same three operations in the same order: bit-identical results in
    float64, and in float32 wherever y, dy and dx are normal numbers (the kernel is compiled with
    CuPy's -ftz=true, so it reads and writes float32 subnormals as 0; see kernels/sigmoid.cu).
    `out` may be dy itself."""
    with np.errstate(under="ignore"):  # a tiny gradient flushing to 0 is not an error
        t = np.asarray(np.multiply(dy, y, out=out))
        t *= 1 - y
    return t


def check_labels(labels, num_classes, op="cross_entropy"):
    """Raise ValueError naming the first label outside [0, C)."""
    if _labels_in_range(labels, num_classes):
        return
    lo, hi = int(_min(labels, axis=None)), int(_max(labels, axis=None))
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{op}: label {bad} is out of range for {num_classes} classes "
                         f"(labels must lie in [0, {num_classes}))")


def _xent_shapes(logits, labels, grad_scale, op):
    """(N, C) after checking what the reference and the kernel both need (metadata only)."""
    if logits.ndim != 2:
        raise ShapeError(f"{op}: logits must be 2-D (N, C), got shape {logits.shape}")
    n, c = logits.shape
    if c == 0:
        raise ValueError(f"{op}: logits of shape {logits.shape} have no classes")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ShapeError(f"{op}: labels have shape {labels.shape}, expected ({n},) for logits "
                         f"of shape {logits.shape}")
    if grad_scale is not None and not _is_scalar(grad_scale) and np.shape(grad_scale) != (n,):
        raise ShapeError(f"{op}: grad_scale must be a scalar or have shape ({n},), got shape "
                         f"{np.shape(grad_scale)}")
    return n, c


def _is_scalar(v):
    return type(v) is float or type(v) is int or np.ndim(v) == 0  # the common case: no call


_rows_cache = {}


def _rows(n):
    """np.arange(n), cached read-only: the row index of every fancy-indexed label access."""
    rows = _rows_cache.get(n)
    if rows is None:
        if len(_rows_cache) > 64:
            _rows_cache.clear()
        rows = _rows_cache[n] = np.arange(n)
        rows.flags.writeable = False
    return rows


def softmax_cross_entropy_ref(logits, labels, grad_scale=None, want_loss=True, inplace=False,
                              check=True, loss_out=None):
    """Per-row loss logsumexp(x) - x[label] and gradient (softmax(x) - onehot) * grad_scale.

    grad_scale: None (no gradient), a number or 0-d array, or an (N,) array of per-row scales.
    inplace: the gradient is written into `logits` (and returned). check=True: a label outside
    [0, C) raises ValueError; check=False: that row's loss and gradient are NaN (as on the GPU).
    loss_out: an (N,) array of the logits' dtype that receives the per-row losses (the executor's
    buffer: no allocation per step). The row max is subtracted before exp (no overflow for any
    finite logits); float16 is accumulated in float32. Returns (loss_rows or None, dlogits or None).
    """
    n, c = _xent_shapes(logits, labels, grad_scale, "softmax_cross_entropy")
    if check:
        if not _labels_in_range(labels, c):
            check_labels(labels, c)  # raises, naming the label
        bad = None
    else:
        bad = _bad_rows(labels, c)
    safe = labels if bad is None else np.where(bad, 0, labels)  # bad rows become NaN below
    args = logits, n, safe, bad, grad_scale, want_loss, inplace, loss_out
    if not inplace:
        # Tiny probabilities flush to 0, as they should. NumPy's default already ignores
        # underflow, so the common case pays for no np.errstate (the hot path of every training
        # step); where np.seterr makes underflow raise, the pass (which wrote only arrays of its
        # own) runs again with underflow ignored. Under seterr(under="warn") NumPy warns.
        try:
            return _xent_ref(*args)
        except FloatingPointError:
            pass
    with np.errstate(under="ignore"):
        return _xent_ref(*args)


def _labels_in_range(labels, c):
    """Whether every label lies in [0, C), in one reduction: read as unsigned, a negative label
    is larger than any class count (two's complement)."""
    if labels.size == 0:
        return True
    if labels.dtype.kind == "i":
        labels = labels.view(f"u{labels.itemsize}")
    return int(_max(labels, axis=None)) < c


def _bad_rows(labels, c):
    """Mask of labels outside [0, C), or None when every label is valid (the common case costs
    two reductions, not a mask and two masked writes)."""
    if labels.size == 0 or (_min(labels, axis=None) >= 0 and _max(labels, axis=None) < c):
        return None
    return (labels < 0) | (labels >= c)


def _xent_ref(logits, n, safe, bad, grad_scale, want_loss, inplace, loss_out):
    rows = _rows(n)
    x = logits.astype(np.float32) if logits.dtype is _F16 else logits
    m = _max(x, axis=1, keepdims=True)
    want_grad = grad_scale is not None
    grad = (logits if inplace else np.empty_like(logits)) if want_grad else None
    # exp(x - m) goes straight into the gradient buffer: no (N, C) temporary for the executor
    e = grad if want_grad and grad.dtype == x.dtype else np.empty_like(x)
    np.subtract(x, m, out=e)
    z_label = e[rows, safe]  # x[label] - max, read before exp overwrites it
    np.exp(e, out=e)
    s = _sum(e, axis=1, keepdims=True)
    loss = None
    if want_loss:
        if loss_out is not None and loss_out.dtype == x.dtype:
            loss = np.log(s[:, 0], out=loss_out)
            loss -= z_label
        else:
            loss = _into((np.log(s[:, 0]) - z_label).astype(logits.dtype, copy=False), loss_out)
        if bad is not None:
            loss[bad] = np.nan
    if want_grad:
        e /= s
        e[rows, safe] -= 1
        if not (type(grad_scale) is float and grad_scale == 1.0):  # x 1.0 is exact: skip
            e *= grad_scale if _is_scalar(grad_scale) else np.asarray(grad_scale)[:, None]
        if e is not grad:  # float16: computed in float32, rounded once
            grad[...] = e
        if bad is not None:
            grad[bad] = np.nan
    return loss, grad


def _into(result, out):
    if out is None:
        return result
    out[...] = result
    return out


def reduce_loss_ref(rows, reduction="sum", out=None):
    """Sum (or mean) of per-row losses as a 0-d array of their dtype, accumulated in float64 like
    the deterministic loss_sum kernel; into `out` (0-d, rows' dtype) when given."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduce_loss: reduction must be 'sum' or 'mean', got {reduction!r}")
    total = _sum(rows, dtype=np.float64)
    if reduction == "mean":
        total = total * (1.0 / rows.size) if rows.size else np.float64(np.nan)
    if out is None:
        return np.asarray(total, dtype=rows.dtype)
    out[...] = total
    return out


# ---- the CUDA sources ------------------------------------------------------------------------

# Passed to cupy.RawModule; CuPy adds -ftz=true, -arch=sm_XX and --device-as-default-execution-space
# (gpugrad/kernel_check.py compiles with exactly that set).
NVRTC_OPTIONS = ("-std=c++17",)


class KernelCompileError(RuntimeError):
    """A .cu source failed to compile; the message carries NVRTC's log."""

    def __init__(self, name, log, options=""):
        super().__init__(f"{name}: NVRTC could not compile it (options: {options}):\n"
                         f"{log.strip()}")
        self.name, self.log = name, log


def _kernel_dir_candidates():
    # an installed wheel carries kernels/ as gpugrad/_kernels (pyproject's force-include);
    # a source checkout has them at the top level
    return [Path(str(resources.files(__package__).joinpath("_kernels"))),
            Path(__file__).resolve().parent.parent / "kernels"]


def kernel_dir():
    """The folder holding the .cu sources."""
    candidates = _kernel_dir_candidates()
    for d in candidates:
        if d.is_dir() and any(d.glob("*.cu")):
            return d
    raise FileNotFoundError("gpugrad's CUDA sources (*.cu) are in none of "
                            f"{', '.join(map(str, candidates))}; reinstall gpugrad")


def kernel_files():
    return sorted(kernel_dir().glob("*.cu"))


def kernel_names(source):
    """The extern "C" __global__ entry points of a source, in order."""
    return re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?'
                      r"(\w+)\s*\(", source)


# ---- loading: compile once per process and device, on first use ------------------------------

_lock = threading.Lock()
_loaded = {}  # (device id, kernel name) -> RawKernel; (device id, "#info") -> _device_info()


def _cupy():
    import cupy
    return cupy


def _load(file):
    """Compile one .cu with CuPy (its on-disk cache, CUPY_CACHE_DIR, skips NVRTC next time) and
    load every kernel in it on the current device: {name: RawKernel}."""
    cp = _cupy()
    source = (kernel_dir() / file).read_text()
    module = cp.RawModule(code=source, options=NVRTC_OPTIONS)
    try:
        return {name: module.get_function(name) for name in kernel_names(source)}
    except cp.cuda.compiler.CompileException as e:
        raise KernelCompileError(file, str(e), " ".join(NVRTC_OPTIONS) + " (+ CuPy's)") from None


def _kernel(file, name):
    dev = _cupy().cuda.runtime.getDevice()
    fn = _loaded.get((dev, name))
    if fn is None:
        with _lock:
            if (dev, name) not in _loaded:
                _loaded.update(((dev, k), f) for k, f in _load(file).items())
        fn = _loaded[(dev, name)]
    return fn


def _device_info():
    """(SM count, a scratch int32 error flag) of the current device, cached."""
    cp = _cupy()
    dev = cp.cuda.runtime.getDevice()
    info = _loaded.get((dev, "#info"))
    if info is None:
        info = _loaded[(dev, "#info")] = (
            cp.cuda.Device(dev).attributes["MultiProcessorCount"], cp.zeros(1, np.int32))
    return info


def status():
    """For `gpugrad info`: {file: {"compiles", "loads", "detail"}} per kernel source.

    compiles: NVRTC (the pip wheel, no GPU needed) compiles it for sm_90; loads: CuPy compiled and
    loaded every kernel in it on the current GPU. None means not checked (tool or GPU missing;
    `detail` says why)."""
    from . import cuda, kernel_check
    try:
        nvrtc, why = kernel_check.Nvrtc(), ""
    except (kernel_check.ToolNotFound, OSError) as e:
        nvrtc, why = None, f"compile check skipped: {e}"
    gpu = cuda.is_available()
    result = {}
    for path in kernel_files():
        source, entry = path.read_text(), {"compiles": None, "loads": None, "detail": why}
        if nvrtc is not None:
            try:
                kernel_check.compile_source(source, path.name, "90", nvrtc)
                entry["compiles"] = True
            except KernelCompileError as e:
                entry["compiles"], entry["detail"] = False, str(e)
        if gpu:
            try:
                for name in kernel_names(source):
                    _kernel(path.name, name)
                entry["loads"] = entry["compiles"] = True
            except Exception as e:  # compile error, or a driver that cannot load the cubin
                entry["loads"], entry["detail"] = False, str(e)
        else:
            entry["detail"] = "; ".join(filter(None, [
                entry["detail"], f"load check skipped: {cuda.unavailable_reason()}"]))
        result[path.name] = entry
    return result


# ---- launch shapes (pure functions of the sizes; see each .cu's comment block) ---------------

BLOCK = 256            # threads per block of the elementwise and small-C kernels
_RESIDENT_BLOCKS = 8   # 256-thread blocks per SM at full occupancy (2048 threads)
_UNROLL = 4            # 16-byte vectors per thread per trip (GG_UNROLL in the .cu files)
_MAX_GRID = 2**31 - 1


def grid_1d(n, itemsize, sms):
    """Blocks for the grid-stride elementwise kernels: enough to cover n once, at most 8 per SM
    (a full-occupancy wave; two waves at the 64-76 registers ptxas gives them), each thread
    then loops."""
    per_block = BLOCK * _UNROLL * (16 // itemsize)
    return max(1, min(-(-n // per_block), _RESIDENT_BLOCKS * sms))


def xent_launch(n, c):
    """(kernel kind, grid, block, extra args) for softmax-cross-entropy on (n, c) logits."""
    if c <= 32:
        log2_group = (c - 1).bit_length()  # lanes per row: next power of two >= c
        rows_per_block = (BLOCK // 32) * (32 >> log2_group)
        return "small", min(-(-n // rows_per_block), _MAX_GRID), BLOCK, (np.int32(log2_group),)
    threads = min(512, max(32, 1 << (c // 16 - 1).bit_length()))  # ~16 elements per thread
    return "large", min(n, _MAX_GRID), threads, ()


# ---- launchers: same semantics as the *_ref twins, on CuPy arrays ----------------------------


def _suffix(dtype, op):
    if dtype == np.float32:
        return "f32"
    if dtype == np.float64:
        return "f64"
    raise TypeError(f"{op}: the CUDA kernel takes float32 or float64, got {dtype}")


def _on_device(a, op, what):
    if not isinstance(a, _cupy().ndarray):
        raise TypeError(f"{op}: {what} must be a CuPy array, got {type(a).__name__}")


def _contiguous(a):
    return a if a.flags.c_contiguous else a.copy()


def _output(out, shape, dtype, op):
    """Where a kernel writes: `out` itself when it is C-contiguous, else a new array (copied into
    `out` by _finish). `out` must have this shape and dtype."""
    if out is None:
        return _cupy().empty(shape, dtype)
    _on_device(out, op, "out")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ShapeError(f"{op}: out is {out.dtype} {out.shape}, expected {np.dtype(dtype)} "
                         f"{tuple(shape)}")
    return out if out.flags.c_contiguous else _cupy().empty(shape, dtype)


def _finish(result, out):
    if out is None or result is out:
        return result
    out[...] = result
    return out


def sigmoid_forward_cuda(x, out=None):
    """y = 1 / (1 + exp(-x)) by kernels/sigmoid.cu (float32, float64); into `out` when given
    (which may be x itself)."""
    op = "sigmoid_forward"
    _on_device(x, op, "x")
    sfx = _suffix(x.dtype, op)
    x = _contiguous(x)
    y = _output(out, x.shape, x.dtype, op)
    if x.size:
        sms = _device_info()[0]
        _kernel("sigmoid.cu", f"sigmoid_forward_{sfx}")(
            (grid_1d(x.size, x.itemsize, sms),), (BLOCK,), (x, y, np.int64(x.size)))
    return _finish(y, out)


def sigmoid_backward_cuda(y, dy, out=None):
    """dx = (dy * y) * (1 - y) by kernels/sigmoid.cu; y and dy of one shape and dtype; into `out`
    when given (which may be dy itself)."""
    op = "sigmoid_backward"
    _on_device(y, op, "y")
    _on_device(dy, op, "dy")
    sfx = _suffix(y.dtype, op)
    if dy.dtype != y.dtype:
        raise TypeError(f"{op}: y is {y.dtype} but dy is {dy.dtype}")
    if dy.shape != y.shape:
        raise ShapeError(f"{op}: y has shape {y.shape}, dy has shape {dy.shape}")
    y, dy = _contiguous(y), _contiguous(dy)
    dx = _output(out, y.shape, y.dtype, op)
    if y.size:
        sms = _device_info()[0]
        _kernel("sigmoid.cu", f"sigmoid_backward_{sfx}")(
            (grid_1d(y.size, y.itemsize, sms),), (BLOCK,), (y, dy, dx, np.int64(y.size)))
    return _finish(dx, out)


def _scale_args(grad_scale, x):
    """(pointer array, stride, by-value scale) for the kernel's scale arguments. Device arrays
    stay on the device (a 0-d one is read by the kernel: no sync); numbers go by value."""
    cp = _cupy()
    if grad_scale is None:
        return x, -1, 0.0
    if isinstance(grad_scale, cp.ndarray):
        s = grad_scale.astype(x.dtype, copy=False)
        return (s.reshape(1), 0, 0.0) if s.ndim == 0 else (_contiguous(s), 1, 0.0)
    if np.ndim(grad_scale) == 0:
        return x, -1, float(grad_scale)
    return cp.asarray(grad_scale, dtype=x.dtype), 1, 0.0


def softmax_cross_entropy_cuda(logits, labels, grad_scale=None, want_loss=True, inplace=False,
                               check=True, loss_out=None):
    """softmax_cross_entropy_ref on the GPU, in one launch of kernels/softmax_cross_entropy.cu.

    check=True reads the kernel's error flag after the launch (one 4-byte copy, a sync) and
    raises ValueError for a label outside [0, C); check=False never syncs (the executor checks
    labels on the host; CUDA-graph capture) and leaves such rows NaN. On that error an in-place
    call has already overwritten the logits. loss_out: an (N,) array for the per-row losses.
    With inplace=True, contiguous int64 labels, a number as grad_scale and loss_out, check=False
    allocates nothing (what CUDA-graph capture needs).
    """
    op = "softmax_cross_entropy"
    cp = _cupy()
    _on_device(logits, op, "logits")
    _on_device(labels, op, "labels")
    sfx = _suffix(logits.dtype, op)
    n, c = _xent_shapes(logits, labels, grad_scale, op)
    want_grad = grad_scale is not None
    if not (want_loss or want_grad) or n == 0:
        if check:
            check_labels(cp.asnumpy(labels), c)
        loss = _output(loss_out, (0,), logits.dtype, op) if want_loss else None
        return loss, ((logits if inplace else cp.empty_like(logits)) if want_grad else None)
    x = _contiguous(logits)
    lab = labels if labels.dtype == np.int64 else labels.astype(np.int64)
    lab = _contiguous(lab)
    loss = _output(loss_out, (n,), x.dtype, op) if want_loss else x  # unused: never written
    grad = (x if inplace else cp.empty_like(x)) if want_grad else x
    scale_ptr, scale_stride, scale_value = _scale_args(grad_scale, x)
    sms, scratch = _device_info()
    error = cp.zeros(1, np.int32) if check else scratch  # nobody reads the scratch flag
    kind, grid, block, extra = xent_launch(n, c)
    args = (x, lab, scale_ptr, np.int64(scale_stride), x.dtype.type(scale_value), loss, grad,
            np.int32(want_loss), np.int32(want_grad), np.int64(n), np.int32(c), *extra, error)
    _kernel("softmax_cross_entropy.cu", f"softmax_xent_{kind}_{sfx}")((grid,), (block,), args)
    if check and int(error.get()[0]):
        check_labels(cp.asnumpy(labels), c)  # raises, naming the bad label
        raise ValueError(f"cross_entropy: a label is out of range for {c} classes")
    if want_grad and inplace and x is not logits:  # non-contiguous logits: copy the result back
        logits[...] = grad
        grad = logits
    return (_finish(loss, loss_out) if want_loss else None), (grad if want_grad else None)


def reduce_loss_cuda(rows, reduction="sum", out=None):
    """Deterministic sum (or mean) of per-row losses by one block of loss_sum_*: a 0-d array
    (`out`, 0-d of rows' dtype, when given: no allocation)."""
    op = "reduce_loss"
    _on_device(rows, op, "rows")
    sfx = _suffix(rows.dtype, op)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"{op}: reduction must be 'sum' or 'mean', got {reduction!r}")
    if rows.ndim != 1:
        raise ShapeError(f"{op}: rows must be 1-D, got shape {rows.shape}")
    result = _output(out, (), rows.dtype, op)
    if rows.size == 0:
        result.fill(0 if reduction == "sum" else np.nan)
        return _finish(result, out)
    mul = 1.0 if reduction == "sum" else 1.0 / rows.size
    _kernel("softmax_cross_entropy.cu", f"loss_sum_{sfx}")(
        (1,), (1024,), (_contiguous(rows), np.int64(rows.size), np.float64(mul), result))
    return _finish(result, out)
