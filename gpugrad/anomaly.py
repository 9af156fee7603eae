"""gg.detect_anomaly(): find the op that made the first NaN or Inf, forward or backward.

Under the context manager every op checks its output (forward) and the gradients it passes back
(backward); the error names the op, its input shapes and the line of user code that created it.
Checking costs a reduction per op, so it is off by default.
"""
import traceback

from .tensor import grad_mode


class AnomalyError(FloatingPointError):
    """An op produced NaN or Inf under gg.detect_anomaly()."""


class detect_anomaly:
    def __enter__(self):
        self._prev, grad_mode.anomaly = grad_mode.anomaly, True
        return self

    def __exit__(self, *exc):
        grad_mode.anomaly = self._prev


def _bad(xp, array):
    return array is not None and getattr(array, "dtype", None) is not None and \
        array.dtype.kind == "f" and not bool(xp.isfinite(array).all())


def _shapes(arrays):
    return ", ".join(str(getattr(a, "shape", "scalar")) for a in arrays)


def _user_frame(stack):
    """The innermost frame outside gpugrad itself: where the user's code made the op."""
    for frame in reversed(stack):
        if "/gpugrad/" not in frame.filename.replace("\\", "/"):
            return f'{frame.filename}:{frame.lineno} in {frame.name}: "{frame.line}"'
    return "unknown location"


def check_forward(fn, arrays, out):
    if _bad(fn.bk.xp, out):
        where = _user_frame(traceback.extract_stack())
        raise AnomalyError(f"detect_anomaly: forward of '{fn.name}' produced NaN/Inf "
                           f"(input shapes: {_shapes(arrays)}); created at {where}")


def check_backward(fn, grads):
    for i, g in enumerate(grads):
        if _bad(fn.bk.xp, g):
            where = _user_frame(getattr(fn, "created_at", []))
            raise AnomalyError(f"detect_anomaly: backward of '{fn.name}' produced NaN/Inf in the "
                               f"gradient of input {i} (gradient shape {g.shape}); the op was "
                               f"created at {where}")
