"""gg.detect_anomaly(): find the op that made the first NaN or Inf, forward or backward.

Under the context manager every op checks its output (forward) and the gradients it passes back
(backward). The error names the op, its input shapes and dtypes, and the line of user code that
created it: for a forward error that is the line running now; for a backward error it was recorded
when the op was created, so the forward pass must run under detect_anomaly() too (as in PyTorch).

Off by default, and free when off: Function.apply and the backward loop only test one flag.
On, each op pays an isfinite reduction (a device sync on the GPU) and records where it was made.
The Executor builds no graph, so it is not checked: run the eager model under detect_anomaly() to
locate a NaN it produces.
"""
import linecache
import os
import sys

import numpy as np

from . import backend as _backend
from .modes import _ModeSwitch, grad_mode

# Frames in files under this directory are gpugrad's own; the first frame outside it is the
# user's. Comparing against the package's real location (not a "/gpugrad/" substring) keeps user
# code in a checkout that happens to be called "gpugrad" (CI clones, the tests) visible.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_internal = {}  # code filename -> is it gpugrad's own file (abspath is too slow to redo per op)


class AnomalyError(FloatingPointError):
    """An op produced NaN or Inf under gg.detect_anomaly()."""


class detect_anomaly(_ModeSwitch):
    """Context manager (and decorator) that checks every op for NaN/Inf, forward and backward,
    in this thread.

        with gg.detect_anomaly():
            loss = model(x).sum()
            loss.backward()      # AnomalyError names the op and the line that created it
    """
    attr, value = "anomaly", True


def is_enabled():
    """Whether ops are being checked now (inside detect_anomaly())."""
    return grad_mode.anomaly


# -- called by Function.apply and run_backward, only while the flag is on ----------------------

def record(fn, arrays):
    """Remember, on a Function entering the graph, what a backward error will have to say."""
    fn.anomaly_inputs = _describe(arrays)
    fn.anomaly_site = _user_site()


def check_forward(fn, arrays, out):
    kind = _nonfinite(out)
    if kind:
        hint = ("; an input already contained NaN/Inf, so it came from earlier (data, or an op "
                "run outside detect_anomaly())" if any(_nonfinite(a) for a in arrays) else "")
        raise AnomalyError(f"detect_anomaly: forward of '{fn.name}' produced {kind} (input "
                           f"shapes: {_describe(arrays)}){hint}; the op was created at "
                           f"{_where(_user_site())}")


def check_backward(fn, upstream, grads):
    for i, g in enumerate(grads):
        kind = _nonfinite(g)
        if not kind:
            continue
        hint = ("; its upstream gradient already contained NaN/Inf (the gradient passed to "
                "backward(), or a sum of gradients that overflowed)"
                if _nonfinite(upstream) else "")
        inputs = getattr(fn, "anomaly_inputs", "not recorded")
        site = getattr(fn, "anomaly_site", None)
        where = _where(site) if site else ("an unknown place: the graph was built outside "
                                           "detect_anomaly(); run the forward pass inside it too")
        raise AnomalyError(f"detect_anomaly: backward of '{fn.name}' produced {kind} in the "
                           f"gradient of input {i} (input shapes: {inputs}; gradient shape "
                           f"{tuple(g.shape)}){hint}; the op was created at {where}")


# -- helpers -----------------------------------------------------------------------------------

def _nonfinite(array):
    """'NaN', 'Inf' or '' (finite). Only float arrays are checked: integers cannot be NaN, and
    Python scalars are constants the user wrote. The array's own module does the check (a
    device copy's gradient lives on the other device than its upstream)."""
    if array is None or getattr(array, "dtype", None) is None or array.dtype.kind != "f":
        return ""
    bk = _backend.backend_for_array(array)
    xp = np if bk is None else bk.xp  # None: a NumPy scalar
    if bool(xp.isfinite(array).all()):
        return ""
    return "NaN" if bool(xp.isnan(array).any()) else "Inf"


def _describe(arrays):
    return ", ".join(f"{tuple(a.shape)} {a.dtype}" if hasattr(a, "shape") else
                     f"scalar {a!r}" for a in arrays)


def _user_site():
    """(file, line, function) of the innermost frame outside gpugrad: where the user's code made
    the op. Plain values, no frame object: keeping frames would keep their locals alive."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        inside = _internal.get(name)
        if inside is None:
            inside = _internal[name] = os.path.abspath(name).startswith(_PACKAGE_DIR)
        if not inside:
            return name, frame.f_lineno, frame.f_code.co_name
        frame = frame.f_back
    return None


def _where(site):
    if site is None:
        return "an unknown place (no frame outside gpugrad)"
    filename, lineno, function = site
    line = linecache.getline(filename, lineno).strip()
    return f"{filename}:{lineno} in {function}" + (f": {line}" if line else "")
