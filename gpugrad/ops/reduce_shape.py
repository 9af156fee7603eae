"""Reductions (sum, mean, max) and shape ops (reshape, transpose, indexing, dtype casts).

Their backward moves the upstream gradient back to the input's layout: broadcast it over the
reduced axes, reshape it, permute it back, or scatter it into the indexed positions. All but max
are linear, so their forward-mode rule is the forward applied to the tangent.
"""
import math

import numpy as np

from ..errors import ShapeError
from ..tensor import Function
from .arithmetic import sum_to


def normalize_axis(axis, ndim, op):
    """axis (None, int or tuple) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    if not isinstance(axes, (tuple, list)) or not all(
            isinstance(ax, (int, np.integer)) and not isinstance(ax, bool) for ax in axes):
        raise TypeError(f"{op}: axis must be None, an int or a tuple of ints, got {axis!r}")
    out = []
    for ax in axes:
        if not -max(ndim, 1) <= ax < max(ndim, 1):
            raise ShapeError(f"{op}: axis {ax} is out of range for a {ndim}-d tensor")
        out.append(int(ax) % max(ndim, 1))
    if ndim == 0:
        return ()  # a 0-d tensor accepts axis 0 / -1 as PyTorch does: nothing to reduce
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {axis}")
    return tuple(sorted(out))


def expand_reduced(g, in_shape, axes, keepdims):
    """Reshape a reduction's upstream gradient so it broadcasts against the input."""
    if keepdims:
        return g
    return g.reshape(tuple(1 if i in axes else n for i, n in enumerate(in_shape)))


class Sum(Function):
    def forward(self, a):
        self.in_shape = a.shape
        self.axes = normalize_axis(self.axis, a.ndim, "sum")
        return a.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, upstream):
        # every input element contributes with local gradient 1
        g = expand_reduced(upstream, self.in_shape, self.axes, self.keepdims)
        return (self.bk.xp.broadcast_to(g, self.in_shape),)

    def jvp(self, t):
        return t.sum(axis=self.axes, keepdims=self.keepdims)


class Mean(Function):
    def forward(self, a):
        self.in_shape = a.shape
        self.axes = normalize_axis(self.axis, a.ndim, "mean")
        self.count = math.prod(a.shape[i] for i in self.axes)
        return a.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, upstream):
        # local gradient 1/count for every input element
        g = expand_reduced(upstream, self.in_shape, self.axes, self.keepdims) / self.count
        return (self.bk.xp.broadcast_to(g, self.in_shape),)

    def jvp(self, t):
        return t.mean(axis=self.axes, keepdims=self.keepdims)


class Max(Function):
    """Gradient goes to the maximal elements, split evenly among ties (as torch.amax)."""

    def forward(self, a):
        self.axes = normalize_axis(self.axis, a.ndim, "max")
        empty = [ax for ax in self.axes if a.shape[ax] == 0]
        if empty or (a.size == 0 and not self.axes):
            raise ShapeError(f"max: cannot reduce over axis {empty[0] if empty else None} of "
                             f"length 0 (shape {a.shape}): the maximum of nothing is undefined")
        top = a.max(axis=self.axes, keepdims=True)
        self.winners = a == top
        self.in_shape = a.shape
        return top if self.keepdims else top.reshape(
            tuple(n for i, n in enumerate(a.shape) if i not in self.axes))

    def backward(self, upstream):
        g = expand_reduced(upstream, self.in_shape, self.axes, self.keepdims)
        ties = self.winners.sum(axis=self.axes, keepdims=True)
        return (self.winners * (g / ties),)

    def jvp(self, t):
        # the mean tangent of the tied maxima (the transpose of backward's even split)
        ties = self.winners.sum(axis=self.axes, keepdims=self.keepdims)
        return (self.winners * t).sum(axis=self.axes, keepdims=self.keepdims) / ties


class Reshape(Function):
    def forward(self, a):
        self.in_shape = a.shape
        try:
            return a.reshape(self.shape)
        except (ValueError, TypeError):
            raise ShapeError(f"reshape: cannot reshape {a.shape} ({a.size} elements) into "
                             f"{self.shape}") from None

    def backward(self, upstream):
        return (upstream.reshape(self.in_shape),)

    def jvp(self, t):
        return t.reshape(self.shape)


class Transpose(Function):
    def forward(self, a):
        axes = self.axes or tuple(reversed(range(a.ndim)))
        if sorted(int(x) % max(a.ndim, 1) for x in axes) != list(range(a.ndim)) or \
                any(not -a.ndim <= x < a.ndim for x in axes):
            raise ShapeError(f"transpose: axes {self.axes} are not a permutation of the "
                             f"{a.ndim} axes of shape {a.shape}")
        self.axes = tuple(int(x) % a.ndim for x in axes)
        return a.transpose(self.axes)

    def backward(self, upstream):
        return (upstream.transpose(tuple(int(i) for i in np.argsort(self.axes))),)  # inverse

    def jvp(self, t):
        return t.transpose(self.axes)


class GetItem(Function):
    """t[index]: basic slicing, boolean masks and integer arrays. The gradient is scattered back;
    integer arrays may repeat an index, so they accumulate with a scatter-add."""

    def forward(self, a):
        self.in_shape, self.dtype = a.shape, a.dtype
        try:
            return a[self.index]
        except IndexError as e:
            raise IndexError(f"getitem: index {self.index!r} is invalid for shape {a.shape} "
                             f"({e})") from None

    def backward(self, upstream):
        return (self.bk.scatter(upstream, self.index, self.in_shape, self.repeats),)

    def jvp(self, t):
        return t[self.index]


class Scatter(Function):
    """zeros(shape) with the input written at `index` (added, where `accumulate`: an integer
    index may repeat): getitem's backward, as an op so that it can be differentiated."""

    def forward(self, g):
        return self.bk.scatter(g, self.index, self.shape, self.accumulate)

    def backward(self, upstream):
        return (upstream[self.index],)

    def jvp(self, t):
        return self.bk.scatter(t, self.index, self.shape, self.accumulate)


class BroadcastTo(Function):
    """x repeated along new leading axes and its size-1 axes (NumPy's broadcast_to); the
    gradient sums back (sum_to)."""

    def forward(self, a):
        self.in_shape = a.shape
        try:
            return self.bk.xp.broadcast_to(a, self.shape)
        except ValueError:
            raise ShapeError(f"broadcast_to: shape {a.shape} cannot be broadcast to "
                             f"{self.shape}") from None

    def backward(self, upstream):
        return (sum_to(upstream, self.in_shape),)

    def jvp(self, t):
        return self.bk.xp.broadcast_to(t, self.shape)


class Stack(Function):
    """Its inputs (one shape) stacked along a new axis; the gradient is sliced back."""

    def forward(self, *arrays):
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ShapeError(f"stack: all inputs must have one shape, got {sorted(shapes)}")
        return self.bk.xp.stack(arrays, axis=self.axis)

    def backward(self, upstream):
        n = upstream.shape[self.axis]
        index = (slice(None),) * (self.axis % upstream.ndim)
        return tuple(upstream[index + (i,)] if need else None
                     for i, need in zip(range(n), self.needs))

    def jvp(self, *tangents):
        like = next(t for t in tangents if t is not None)
        xp = self.bk.xp
        return xp.stack([xp.zeros_like(like) if t is None else t for t in tangents],
                        axis=self.axis)


class Cast(Function):
    exact_dtype = True

    def forward(self, a):
        self.in_dtype = a.dtype
        return a.astype(self.dtype)

    def backward(self, upstream):
        return (upstream.astype(self.in_dtype),)

    def jvp(self, t):
        return t.astype(self.dtype)
