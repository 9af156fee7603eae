"""The namespace a backward is written against, when that backward must itself be differentiated.

Every op's backward reads its array functions from `self.bk` (the backend: matmul, the fused
primitives) and `self.bk.xp` (the array module: exp, where, broadcast_to, ...). For the ordinary
backward those are NumPy or CuPy. For `create_graph=True` (and for forward mode through a
backward) `tensor._differentiable` hands the op this namespace instead: the same names, made of
gpugrad's differentiable ops on Tensors, so the one backward builds a graph that can be
differentiated again. Nothing here is a derivative formula of its own, except for the two fused
primitives, whose array versions are kernels: their Tensor versions below compose ops with the
same math (tested against the kernels).
"""
import functools

import numpy as np

from ..tensor import Tensor
from . import arithmetic, elementwise, loss, reduce_shape


def _elementwise(op, name):
    """The array module's `name` as the op: a backward may apply it to a constant operand too
    (pow's d/dp reads log(a) for a Python-number base a), which stays a constant, computed by
    the array module."""
    def apply(self, x):
        return op.apply(x) if isinstance(x, Tensor) else getattr(self.bk.xp, name)(x)
    return apply


class DifferentiableOps:
    """`bk` and `bk.xp` at once, for Tensors on one backend."""

    def __init__(self, bk):
        self.bk, self.name, self.xp = bk, bk.name, self

    # -- the array module's names -------------------------------------------------------------
    def asarray(self, x):
        """The values, as a constant array (no graph): what a backward builds masks from."""
        return x.data if isinstance(x, Tensor) else x

    def sign(self, x):
        return self.bk.xp.sign(self.asarray(x))  # piecewise constant: derivative 0

    def where(self, cond, a, b):
        return where(self.asarray(cond), a, b)

    def broadcast_to(self, x, shape):
        return reduce_shape.BroadcastTo.apply(x, shape=tuple(shape))

    exp = _elementwise(elementwise.Exp, "exp")
    log = _elementwise(elementwise.Log, "log")
    sin = _elementwise(elementwise.Sin, "sin")
    cos = _elementwise(elementwise.Cos, "cos")

    # -- the backend's names ------------------------------------------------------------------
    @staticmethod
    def matmul(a, b):
        return arithmetic.MatMul.apply(a, b)

    def scatter(self, values, index, shape, accumulate):
        return reduce_shape.Scatter.apply(values, index=index, shape=tuple(shape),
                                          accumulate=accumulate)

    @staticmethod
    def sigmoid_backward(y, dy):
        return dy * (y * (1 - y))  # the kernel's dy * y * (1 - y), from the stored output y

    def softmax_cross_entropy(self, logits, labels, grad_scale=None, want_loss=True, check=True,
                              **_):
        """The gradient output of the fused kernel, (softmax(x) - onehot) * grad_scale, made
        of ops (cross-entropy's backward asks for nothing else)."""
        if want_loss or grad_scale is None:
            raise NotImplementedError("softmax_cross_entropy: only the gradient is available "
                                      "as differentiable ops")
        x = logits.data
        onehot = self.bk.xp.zeros_like(x)
        onehot[self.bk.xp.arange(x.shape[0]), labels] = 1
        scale = grad_scale
        if getattr(scale, "ndim", 0) == 1:  # reduction="none": one scale per row
            scale = scale.reshape(-1, 1)
        return None, (loss.Softmax.apply(logits, axis=-1) - onehot) * scale


def where(cond, a, b):
    """a where cond holds, else b (differentiable in a and b)."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError("where: a or b must be a Tensor")
    bk = (a if isinstance(a, Tensor) else b)._bk
    if isinstance(cond, Tensor):
        cond = cond.data
    elif not bk.is_array(cond):
        cond = bk.asarray(np.asarray(cond))
    return arithmetic.Where.apply(a, b, cond=cond)


@functools.cache
def differentiable_ops(bk):
    """The namespace for Tensors on backend `bk` (one per backend)."""
    return DifferentiableOps(bk)
