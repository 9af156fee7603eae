"""The differentiable ops as functions: argument checking here, the math in the op classes.

`gg.exp(x)`, `x.exp()` and `x + y` all land in these functions, so each op is defined once.
"""
import builtins

import numpy as np

from ..errors import DeviceError, ShapeError
from ..tensor import Tensor, tensor
from .arithmetic import Add, Div, Linear, MatMul, Mul, Neg, Pow, Sub, sum_to
from .elementwise import Abs, Cos, Exp, Log, ReLU, Sigmoid, Sin, Sqrt, Tanh
from .loss import CrossEntropy, LogSoftmax, MSELoss, Softmax
from .reduce_shape import (BroadcastTo, Cast, GetItem, Max, Mean, Reshape, Stack, Sum,
                           Transpose)
from .differentiable import where

__all__ = ["add", "sub", "mul", "div", "pow", "neg", "matmul", "linear", "sum", "mean", "max",
           "reshape", "transpose", "getitem", "astype", "exp", "log", "sin", "cos", "tanh", "sqrt",
           "abs", "sigmoid", "relu", "softmax", "log_softmax", "cross_entropy", "mse_loss",
           "sum_to", "where", "broadcast_to", "stack"]

REDUCTIONS = ("mean", "sum", "none")


def _t(x):
    """Tensor inputs pass through; anything else becomes a tensor on the default device."""
    return x if isinstance(x, Tensor) else tensor(x)


def _binary(op, a, b):
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = tensor(a)
    return op.apply(a, b)


def add(a, b): return _binary(Add, a, b)
def sub(a, b): return _binary(Sub, a, b)
def mul(a, b): return _binary(Mul, a, b)
def div(a, b): return _binary(Div, a, b)
def pow(a, p): return _binary(Pow, a, p)
def matmul(a, b): return _binary(MatMul, a, b)
def neg(a): return Neg.apply(_t(a))
def exp(x): return Exp.apply(_t(x))
def log(x): return Log.apply(_t(x))
def sin(x): return Sin.apply(_t(x))
def cos(x): return Cos.apply(_t(x))
def tanh(x): return Tanh.apply(_t(x))
def sqrt(x): return Sqrt.apply(_t(x))
def abs(x): return Abs.apply(_t(x))
def sigmoid(x): return Sigmoid.apply(_t(x))
def relu(x): return ReLU.apply(_t(x))


def linear(x, w, b=None):
    """x @ w + b (w of shape (in, out), as gg.nn.Linear's weight), one op; x @ w when b is None.
    The same values as `x @ w + b`, with one array and one graph node fewer."""
    if b is None:
        return matmul(x, w)
    if not builtins.any(isinstance(a, Tensor) for a in (x, w, b)):
        x = tensor(x)
    return Linear.apply(x, w, b)


def sum(x, axis=None, keepdims=False):
    return Sum.apply(_t(x), axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return Mean.apply(_t(x), axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    return Max.apply(_t(x), axis=axis, keepdims=keepdims)


def reshape(x, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if not builtins.all(isinstance(s, (int, np.integer)) for s in shape):
        raise TypeError(f"reshape: shape must be ints, got {shape!r}")
    return Reshape.apply(_t(x), shape=shape)


def broadcast_to(x, shape):
    """x repeated to `shape` by NumPy's broadcasting rules (a view; differentiable)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return BroadcastTo.apply(_t(x), shape=shape)


def stack(tensors, axis=0):
    """Tensors of one shape stacked along a new axis (differentiable)."""
    tensors = [_t(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    ndim = tensors[0].ndim
    if not isinstance(axis, (int, np.integer)) or not -(ndim + 1) <= axis <= ndim:
        raise ShapeError(f"stack: axis {axis!r} is out of range for {ndim}-d inputs")
    return Stack.apply(*tensors, axis=int(axis) % (ndim + 1))


def transpose(x, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return Transpose.apply(_t(x), axes=axes or None)


def astype(x, dtype):
    from ..tensor import _dtype
    return Cast.apply(_t(x), dtype=_dtype(dtype, "astype"))


def getitem(x, index):
    x = _t(x)
    index = _device_index(index, x)
    parts = index if isinstance(index, tuple) else (index,)
    # integer arrays may name one element twice: their backward must accumulate (scatter-add)
    repeats = builtins.any(getattr(p, "dtype", None) is not None and p.dtype.kind in "iu"
                           and p.ndim > 0 for p in parts)
    return GetItem.apply(x, index=index, repeats=repeats)


def _device_index(index, x):
    """Index parts as arrays on x's device: Tensors unwrapped, lists and NumPy arrays moved."""
    def one(p):
        if isinstance(p, Tensor):
            if p._bk is not x._bk:
                raise DeviceError(f"getitem: index tensor is on '{p.device}', tensor on "
                                 f"'{x.device}'")
            return p.data
        if isinstance(p, list):
            arr = np.asarray(p)
            # NumPy reads [] as an empty integer index (a[[]] is empty), not a float array
            p = arr.astype(np.intp) if arr.size == 0 else arr
        if isinstance(p, np.ndarray) and x._bk.name != "cpu":
            return x._bk.asarray(p)
        return p
    return tuple(one(p) for p in index) if isinstance(index, tuple) else one(index)


def softmax(x, axis=-1):
    return Softmax.apply(_t(x), axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(_t(x), axis=axis)


def _reduction(reduction, op):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def cross_entropy(logits, labels, reduction="mean"):
    """Softmax cross-entropy of (N, C) logits against integer labels (N,) in [0, C)."""
    logits = _t(logits)
    _reduction(reduction, "cross_entropy")
    if logits.ndim != 2:
        raise ShapeError(f"cross_entropy: logits must be 2-D (N, C), got shape {logits.shape}")
    if logits.dtype.kind != "f":
        raise TypeError(f"cross_entropy: logits must be floating point, got {logits.dtype}")
    n, c = logits.shape
    if c == 0:
        raise ShapeError(f"cross_entropy: logits of shape {logits.shape} have no classes")
    labels = as_labels(labels, logits, "cross_entropy")
    return CrossEntropy.apply(logits, labels=labels, reduction=reduction)


def as_labels(labels, logits, op):
    """Labels as an integer array of shape (N,) on the logits' device (range checked later, by
    the fused kernel or its twin, without an extra pass over the data)."""
    if isinstance(labels, Tensor):
        if labels._bk is not logits._bk:
            raise DeviceError(f"{op}: labels are on '{labels.device}', logits on "
                              f"'{logits.device}'")
        arr = labels.data
    else:
        arr = logits._bk.asarray(labels) if not isinstance(labels, (int, float)) else None
        if arr is None:
            raise TypeError(f"{op}: labels must be a sequence of ints, got "
                            f"{type(labels).__name__}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {arr.dtype}")
    if arr.shape != (logits.shape[0],):
        raise ShapeError(f"{op}: labels have shape {arr.shape}, expected ({logits.shape[0]},) "
                         f"to match logits of shape {logits.shape}")
    return arr


def mse_loss(pred, target, reduction="mean"):
    """Squared error (pred - target)^2, reduced by mean / sum / none. Shapes must match exactly
    (no silent broadcasting of (N, 1) against (N,))."""
    pred = _t(pred)
    _reduction(reduction, "mse_loss")
    target = target if isinstance(target, Tensor) else tensor(target, dtype=pred.dtype,
                                                               device=pred.device)
    if pred.shape != target.shape:
        raise ShapeError(f"mse_loss: pred has shape {pred.shape}, target has shape "
                         f"{target.shape}; they must match")
    return MSELoss.apply(pred, target, reduction=reduction)
