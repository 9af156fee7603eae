"""Binary arithmetic, where and matmul. Each op: forward, then backward = upstream * local
gradient, then the forward-mode rule jvp = local gradient * tangent (the same local gradients).

NumPy broadcasting applies to every binary op; `sum_to` sums the upstream gradient back to each
input's shape, the one place that knows how broadcasting is undone (a tangent needs no undoing:
Function.apply broadcasts it to the output's shape).

Every backward is written against `self.bk` / `self.bk.xp` and the operators, so the same code
runs on arrays (the ordinary backward) and on Tensors (create_graph; see tensor._differentiable).
"""
import numpy as np

from ..errors import ShapeError
from ..tensor import OUT, Function


def shape_of(x):
    return getattr(x, "shape", ())


def sum_to(g, shape):
    """Sum gradient `g` (of a broadcast result) down to `shape`: over the leading axes that
    broadcasting added and over the axes where the input had size 1.

    Returns `g` itself or a fresh array, never a reshaped view (a leaf's gradient that is a view
    would have to be copied before it can be stored)."""
    if g.shape == shape:
        return g
    if shape and g.shape[1:] == shape:  # one leading axis added (a bias over a batch)
        return g.sum(axis=0)
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return np.asarray(g) if isinstance(g, np.generic) else g  # NumPy sums to scalars


def plus(x, y):
    """x + y where None is a zero (an input without a tangent)."""
    return y if x is None else x if y is None else x + y


def broadcast_error(fn, a, b):
    return ShapeError(f"{fn.name}: shapes {shape_of(a)} and {shape_of(b)} cannot be broadcast "
                      f"together")


class Add(Function):
    def forward(self, a, b):
        self.sa, self.sb = shape_of(a), shape_of(b)
        try:
            return a + b
        except ValueError:
            raise broadcast_error(self, a, b) from None

    def backward(self, upstream):
        # local gradients are 1 and 1 (sum_to returns upstream itself where no axis broadcast)
        return (sum_to(upstream, self.sa) if self.needs[0] else None,
                sum_to(upstream, self.sb) if self.needs[1] else None)

    def jvp(self, ta, tb):
        return plus(ta, tb)


class Sub(Function):
    def forward(self, a, b):
        self.sa, self.sb = shape_of(a), shape_of(b)
        try:
            return a - b
        except ValueError:
            raise broadcast_error(self, a, b) from None

    def backward(self, upstream):
        # local gradients are 1 and -1
        return (sum_to(upstream, self.sa) if self.needs[0] else None,
                sum_to(-upstream, self.sb) if self.needs[1] else None)

    def jvp(self, ta, tb):
        return plus(ta, None if tb is None else -tb)


class Mul(Function):
    saved = (0, 1)

    def forward(self, a, b):
        self.a, self.b = a, b
        try:
            return a * b
        except ValueError:
            raise broadcast_error(self, a, b) from None

    def backward(self, upstream):
        # d(ab)/da = b, d(ab)/db = a
        a, b, needs = self.a, self.b, self.needs
        return (sum_to(upstream * b, shape_of(a)) if needs[0] else None,
                sum_to(upstream * a, shape_of(b)) if needs[1] else None)

    def jvp(self, ta, tb):
        return plus(None if ta is None else ta * self.b, None if tb is None else self.a * tb)


class Div(Function):
    saved = (0, 1, OUT)

    def forward(self, a, b):
        self.a, self.b = a, b
        try:
            self.out = a / b
        except ValueError:
            raise broadcast_error(self, a, b) from None
        return self.out

    def backward(self, upstream):
        # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2 = -out/b
        a, b = self.a, self.b
        ga = upstream / b if self.needs[0] else None
        gb = -(upstream * self.out) / b if self.needs[1] else None
        return (ga if ga is None else sum_to(ga, shape_of(a)),
                gb if gb is None else sum_to(gb, shape_of(b)))

    def jvp(self, ta, tb):
        return plus(None if ta is None else ta / self.b,
                    None if tb is None else -(tb * self.out) / self.b)


class Pow(Function):
    saved = (0, 1, OUT)

    def forward(self, a, p):
        self.a, self.p = a, p
        try:
            self.out = a ** p
        except ValueError as e:
            try:
                np.broadcast_shapes(shape_of(a), shape_of(p))
            except ValueError:
                raise broadcast_error(self, a, p) from None
            raise ValueError(f"pow: {e}") from None  # NumPy's: integers to negative powers
        return self.out

    # d(a^p)/da = p a^(p-1), d(a^p)/dp = a^p ln(a). At the edges PyTorch's values: where
    # p == 0 the first is 0 (not 0 * 0^-1 = NaN at a = 0); where a == 0 and p >= 0 the
    # second is 0 (not 0 * ln 0 = NaN). The masks are constants: xp.asarray gives values.
    def local_a(self):
        a, p, xp = self.a, self.p, self.bk.xp
        with np.errstate(divide="ignore", invalid="ignore"):
            local = p * a ** (p - 1)
        zero = xp.asarray(p) == 0
        if not _any(zero):
            return local
        # a constant exponent 0: a constant local gradient (PyTorch's zeros), so its own
        # derivative is 0 too, not 0 * 0^-2 = NaN at a = 0 through the where
        return 0 if isinstance(p, (int, float)) else xp.where(zero, 0, local)

    def local_p(self):
        a, p, xp = self.a, self.p, self.bk.xp
        with np.errstate(divide="ignore", invalid="ignore"):
            local = self.out * xp.log(a)
        edge = (xp.asarray(a) == 0) & (xp.asarray(p) >= 0)
        return xp.where(edge, 0, local) if _any(edge) else local

    def backward(self, upstream):
        return (sum_to(upstream * self.local_a(), shape_of(self.a)) if self.needs[0] else None,
                sum_to(upstream * self.local_p(), shape_of(self.p)) if self.needs[1] else None)

    def jvp(self, ta, tp):
        return plus(None if ta is None else ta * self.local_a(),
                    None if tp is None else tp * self.local_p())


def _any(mask):
    return bool(mask) if isinstance(mask, (bool, np.bool_)) else bool(mask.any())


class Where(Function):
    """where(cond, a, b): a where cond holds, else b. cond is a constant (a parameter); the
    gradient goes to a where cond holds and to b elsewhere."""

    def forward(self, a, b):
        self.sa, self.sb = shape_of(a), shape_of(b)
        try:
            return self.bk.xp.where(self.cond, a, b)
        except ValueError:
            raise ShapeError(f"where: shapes {shape_of(self.cond)}, {self.sa} and {self.sb} "
                             f"cannot be broadcast together") from None

    def backward(self, upstream):
        xp, cond = self.bk.xp, self.cond
        return (sum_to(xp.where(cond, upstream, 0), self.sa) if self.needs[0] else None,
                sum_to(xp.where(cond, 0, upstream), self.sb) if self.needs[1] else None)

    def jvp(self, ta, tb):
        xp = self.bk.xp
        return xp.where(self.cond, 0 if ta is None else ta, 0 if tb is None else tb)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, upstream):
        return (-upstream,)

    def jvp(self, t):
        return -t


def matmul_grads(bk, a, b, g, needs):
    """The gradients of a @ b for upstream g, where needs[0] / needs[1] ask for a's / b's:
    dL/da = g b^T, dL/db = a^T g, then 1-D promotion and batch broadcasting undone (MatMul's
    backward, and Linear's)."""
    if a.ndim == 2 and b.ndim == 2 and g.ndim == 2:  # the common case: nothing to undo
        return (bk.matmul(g, b.T) if needs[0] else None, bk.matmul(a.T, g) if needs[1] else None)
    if a.ndim == 1 and b.ndim == 1:  # dot product: local gradients are b and a
        return (g * b if needs[0] else None, g * a if needs[1] else None)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a.ndim == 1:
        g = g[..., None, :]
    if b.ndim == 1:
        g = g[..., :, None]
    ga = gb = None
    if needs[0]:
        ga = bk.matmul(g, b2.swapaxes(-1, -2))
        ga = sum_to(ga, a2.shape)
        ga = ga.reshape(a.shape) if a.ndim == 1 else ga
    if needs[1]:
        gb = bk.matmul(a2.swapaxes(-1, -2), g)
        gb = sum_to(gb, b2.shape)
        gb = gb.reshape(b.shape) if b.ndim == 1 else gb
    return ga, gb


class MatMul(Function):
    """a @ b with NumPy's rules: 1-D operands are promoted to a row / column, leading axes
    broadcast as a batch."""
    saved = (0, 1)

    def forward(self, a, b):
        sa, sb = shape_of(a), shape_of(b)
        if len(sa) == 0 or len(sb) == 0:
            raise ShapeError(f"matmul: operands must be at least 1-D, got shapes {sa} and {sb}")
        k_a, k_b = sa[-1], (sb[0] if len(sb) == 1 else sb[-2])
        if k_a != k_b:
            raise ShapeError(f"matmul: inner sizes differ: {sa} @ {sb} ({k_a} != {k_b})")
        self.a, self.b = a, b
        try:
            return self.bk.matmul(a, b)  # on CUDA: gpugrad's own cuBLAS handle (capturable)
        except ValueError:
            raise ShapeError(f"matmul: batch shapes {sa[:-2]} and {sb[:-2]} cannot be broadcast "
                             f"together ({sa} @ {sb})") from None

    def backward(self, upstream):
        return matmul_grads(self.bk, self.a, self.b, upstream, self.needs)

    def jvp(self, ta, tb):
        # d(ab) = da b + a db (matmul's own rules handle 1-D operands and batches)
        mm = self.bk.matmul
        return plus(None if ta is None else mm(ta, self.b), None if tb is None else mm(self.a, tb))


class Linear(Function):
    """x @ w + b as one op: gg.nn.Linear's forward, and gg.linear. The product is MatMul's and
    so are its gradients; the bias is added into the product in place (the product is this
    op's own fresh array), so a layer costs one output array and one op instead of two of each
    for `x @ w + b`, with the same values."""
    saved = (0, 1)

    def forward(self, x, w, b):
        out = MatMul.forward(self, x, w)  # stores self.a, self.b for the gradients
        self.sb = sb = shape_of(b)
        if getattr(b, "dtype", None) == out.dtype and len(sb) <= out.ndim and \
                out.shape[out.ndim - len(sb):] == sb:
            out += b  # b broadcasts to out's shape, no type promotion: out + b, in place
            return out
        try:
            return out + b
        except ValueError:
            raise ShapeError(f"linear: the bias of shape {sb} cannot be broadcast to the "
                             f"product's shape {out.shape}") from None

    def backward(self, upstream):
        ga, gw = matmul_grads(self.bk, self.a, self.b, upstream, self.needs)
        return ga, gw, (sum_to(upstream, self.sb) if self.needs[2] else None)

    def jvp(self, tx, tw, tb):
        return plus(MatMul.jvp(self, tx, tw), tb)
