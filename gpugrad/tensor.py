"""Tensor, the graph it records, and reverse-mode backpropagation.

A Tensor wraps one backend array (NumPy or CuPy). When an op (a `Function`) runs on tensors that
require grad, the output remembers the Function that made it, and the Function remembers where its
inputs came from (`next`: the Function that made each input, or the leaf tensor itself). That is the
computation graph, a DAG. `backward()` sorts it topologically without recursion and walks it once in
reverse, handing each Function its upstream gradient; the Function multiplies by its local gradient
(the chain rule) and passes one gradient per input further back. Fan-out sums the gradients.

Contract that keeps gradients cheap: gradient arrays are never modified in place, by the engine or
by the optimizers, so a backward may hand the same array to several inputs without copying.
"""
import functools
import itertools
import operator

import numpy as np

from . import backend as _backend
from .errors import DeviceError, ShapeError

_FLOAT_KINDS = "f"
_PY_SCALARS = (int, float, bool)  # exact types: np.float64 subclasses float but is not weak


class _GradMode:
    enabled = True     # record graphs (off under no_grad)
    anomaly = False    # check every op's output and gradients for NaN/Inf (gg.detect_anomaly)


grad_mode = _GradMode()


class no_grad:
    """Context manager (and decorator) under which ops record no graph.

    The previous modes are kept on a stack, so one instance can be entered again while active."""
    enabled = False  # the grad mode inside the block

    def __init__(self):
        self._saved = []

    def __enter__(self):
        self._saved.append(grad_mode.enabled)
        grad_mode.enabled = self.enabled

    def __exit__(self, *exc):
        grad_mode.enabled = self._saved.pop()

    def __call__(self, fn):
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}: can decorate a function, not "
                            f"{type(fn).__name__}")

        @functools.wraps(fn)  # copies what the callable has (partials and modules lack names)
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)
        return wrapper


class enable_grad(no_grad):
    """Context manager that turns graph recording back on inside a no_grad block."""
    enabled = True


class Function:
    """One differentiable op. Subclasses define `forward(*arrays) -> array` and
    `backward(upstream) -> tuple of one gradient (or None) per input`, side by side.

    `forward` stores on `self` what `backward` needs (the lecture: keep the intermediate outputs).
    During backward, `self.needs[i]` says whether input i wants a gradient, so constants and
    non-grad inputs cost nothing.
    """

    freed = False        # set once backward has run without retain_graph
    g = None             # the upstream gradient being accumulated during backward
    exact_dtype = False  # True: float64 output from other dtypes is intended (casts)

    def __init__(self, **params):
        self.__dict__.update(params)

    @property
    def name(self):
        return type(self).__name__.lower()

    @classmethod
    def apply(cls, *args, **params):
        """Run the op on tensors/constants: unwrap, forward, wrap, and link the graph."""
        fn = _new(cls)
        if params:
            fn.__dict__.update(params)
        bk = None
        track = convert = False
        arrays, edges = [], []
        for a in args:
            if isinstance(a, Tensor):
                abk = a._bk
                if abk is not bk:
                    if bk is not None:
                        raise DeviceError(f"{fn.name}: inputs are on different devices "
                                          f"('{bk.name}' and '{abk.name}'); move one with "
                                          f".to(device)")
                    bk = abk
                arrays.append(a.data)
                if a._rg:
                    track = True
                    ctx = a._ctx
                    edges.append(a if ctx is None else ctx)
                else:
                    edges.append(None)
            else:
                arrays.append(a)
                edges.append(None)
                convert = convert or type(a) not in _PY_SCALARS
        if bk is None:
            raise TypeError(f"{fn.name}: needs at least one Tensor input")
        if convert:
            arrays = [a if type(a) in _PY_SCALARS or bk.is_array(a) else
                      _constant(a, bk, fn.name) for a in arrays]
        fn.bk = bk
        out = fn.forward(*arrays)
        if isinstance(out, np.generic):  # NumPy returns scalars from 0-d arithmetic
            out = np.asarray(out)
        dtype = out.dtype
        if dtype is _F64 and not fn.exact_dtype and not _any_float64(arrays):
            out = out.astype(np.float32)  # ints and Python floats make float32, as tensor() does
            dtype = out.dtype
        t = _new(Tensor)  # Tensor._make, inlined: this runs once per op
        t.data, t.grad, t._bk, t.name = out, None, bk, None
        mode = grad_mode
        if mode.anomaly:
            from .anomaly import check_forward
            check_forward(fn, arrays, out)
        if track and mode.enabled and dtype.kind == "f":
            fn.next = edges
            fn.needs = [e is not None for e in edges]
            fn.seq = next(_sequence)
            fn.out_meta = (out.shape, dtype)  # for gg.viz: the output Tensor is not kept
            if mode.anomaly:
                from .anomaly import record
                record(fn, arrays)
            t._ctx, t._rg = fn, True
        else:
            t._ctx, t._rg = None, False
        return t

    def release(self):
        """Drop saved arrays and graph links after backward (unless retain_graph)."""
        self.__dict__.clear()
        self.freed = True


_new = object.__new__
_F64 = np.dtype(np.float64)
_sequence = itertools.count()  # creation order: inputs are always made before their outputs


def _edge(a):
    """Where input `a`'s gradient goes: the Function that made it, the leaf itself, or nowhere."""
    if isinstance(a, Tensor) and a._rg:
        return a._ctx if a._ctx is not None else a
    return None


def _any_float64(arrays):
    return any(getattr(a, "dtype", None) == np.float64 for a in arrays)


def _constant(value, bk, op):
    """A non-Tensor operand as an array on the op's device (Python scalars stay weakly typed)."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()  # NumPy scalars behave like Python scalars (no float64 promotion)
    if isinstance(value, (list, tuple)) or isinstance(value, np.ndarray):
        return tensor(value, device=bk).data
    src = _backend.backend_for_array(value)
    if src is not None:
        raise DeviceError(f"{op}: a '{src.name}' array cannot be combined with tensors on "
                          f"'{bk.name}'; wrap it with gg.tensor(..., device='{bk.name}')")
    raise TypeError(f"{op}: unsupported operand of type {type(value).__name__}; expected a "
                    f"Tensor, a number, or a NumPy/CuPy array")


class Tensor:
    """An n-dimensional array on a device, optionally recording the graph that produced it."""

    __slots__ = ("data", "grad", "_rg", "_ctx", "_bk", "name", "__weakref__")
    __array_ufunc__ = None  # make `ndarray + Tensor` defer to Tensor.__radd__
    __hash__ = object.__hash__  # identity hash: == is elementwise

    def __init__(self, data, dtype=None, device=None, requires_grad=False):
        t = tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        self.data, self.grad, self._rg, self._ctx, self._bk = t.data, None, t._rg, None, t._bk
        self.name = None

    @classmethod
    def _make(cls, data, bk, requires_grad=False):
        t = object.__new__(cls)
        t.data, t.grad, t._rg, t._ctx, t._bk, t.name = data, None, requires_grad, None, bk, None
        return t

    # -- properties -------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: self._bk.name)
    is_leaf = property(lambda self: self._ctx is None)
    T = property(lambda self: ops.transpose(self))

    @property
    def requires_grad(self):
        return self._rg

    @requires_grad.setter
    def requires_grad(self, flag):
        if flag and self.data.dtype.kind not in _FLOAT_KINDS:
            raise TypeError(f"requires_grad: only floating-point tensors can require grad; this "
                            f"tensor is {self.data.dtype}")
        if not flag and self._ctx is not None:
            raise RuntimeError("requires_grad: cannot turn off grad on a non-leaf tensor; "
                               "use .detach()")
        self._rg = bool(flag)

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __repr__(self):
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extra = f", dtype={self.dtype}, device='{self.device}'"
        if self._rg:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"bool(): the truth value of a tensor of shape {self.shape} is "
                             f"ambiguous; use .any()/.all() on .numpy()")
        return bool(self.data)

    def __array__(self, dtype=None, copy=None):
        if self._bk.name != "cpu":
            raise TypeError(f"np.asarray(): tensor is on '{self.device}'; call .numpy() to copy "
                            f"it to the host")
        return self.data if dtype is None else self.data.astype(dtype, copy=False)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """DLPack export, zero-copy: np.from_dlpack(t), torch.from_dlpack(t), cupy.from_dlpack(t)
        share this tensor's memory. Data only, as .detach(): the consumer gets no graph and no
        gradient even when this tensor requires grad, and its in-place writes bypass the graph.
        The array (NumPy or CuPy) does the work, stream synchronisation included."""
        return self.data.__dlpack__(stream=stream, max_version=max_version, dl_device=dl_device,
                                    copy=copy)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    # -- host access, devices, graph control ------------------------------------------------
    def numpy(self):
        """The values as a host numpy.ndarray (a copy from the GPU; the array itself on CPU)."""
        return self._bk.to_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item(): only one-element tensors convert to a Python scalar; this "
                             f"one has shape {self.shape}")
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device):
        """This tensor on `device`: itself if already there, else a copy (differentiable)."""
        bk = _backend.get_backend(device)
        if bk is self._bk:
            return self
        out = Tensor._make(bk.asarray(self._bk.to_numpy(self.data)), bk)
        if self._rg and grad_mode.enabled:
            fn = ToDevice(source=self._bk, target=bk)
            fn.next, fn.needs, fn.seq = (_edge(self),), (True,), next(_sequence)
            fn.out_meta = (out.shape, out.dtype)
            if grad_mode.anomaly:
                from .anomaly import record
                record(fn, (self.data,))
            out._ctx, out._rg = fn, True
        return out

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def detach(self):
        """The same data with no graph and no grad."""
        return Tensor._make(self.data, self._bk)

    def requires_grad_(self, flag=True):
        self.requires_grad = flag
        return self

    def backward(self, grad=None, retain_graph=False):
        """Backpropagate from this tensor: accumulate d(self)/d(leaf) into every leaf's .grad."""
        if not self._rg:
            raise RuntimeError("backward: this tensor does not require grad and has no graph "
                               "(did an input have requires_grad=True? was it made under no_grad?)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward: grad can be omitted only for a one-element output; "
                                   f"this output has shape {self.shape}")
            g = self._bk.xp.ones_like(self.data)
        else:
            if not isinstance(grad, Tensor) and not (
                    type(grad) in _PY_SCALARS or isinstance(grad, (list, tuple, np.generic))
                    or _backend.backend_for_array(grad) is not None):
                raise TypeError(f"backward: grad must be a Tensor, an array or numbers, got "
                                f"{type(grad).__name__}")
            g = grad.data if isinstance(grad, Tensor) else self._bk.asarray(grad)
            if g.dtype.kind not in "biuf":
                raise TypeError(f"backward: grad must be numeric, got dtype {g.dtype}")
            if isinstance(grad, Tensor) and grad._bk is not self._bk:
                raise DeviceError(f"backward: grad is on '{grad.device}', output on "
                                  f"'{self.device}'")
            if g.shape != self.data.shape:
                raise ShapeError(f"backward: grad has shape {g.shape}, output has shape "
                                 f"{self.shape}")
            g = g.astype(self.data.dtype, copy=False)
        run_backward(self, g, retain_graph)

    # -- differentiable ops as methods and operators (defined once, in gpugrad.ops) ----------
    def __add__(self, other): return Add.apply(self, other)
    def __radd__(self, other): return Add.apply(other, self)
    def __sub__(self, other): return Sub.apply(self, other)
    def __rsub__(self, other): return Sub.apply(other, self)
    def __mul__(self, other): return Mul.apply(self, other)
    def __rmul__(self, other): return Mul.apply(other, self)
    def __truediv__(self, other): return Div.apply(self, other)
    def __rtruediv__(self, other): return Div.apply(other, self)
    def __pow__(self, other): return Pow.apply(self, other)
    def __rpow__(self, other): return Pow.apply(other, self)
    def __matmul__(self, other): return MatMul.apply(self, other)
    def __rmatmul__(self, other): return MatMul.apply(other, self)
    def __neg__(self): return Neg.apply(self)
    def __pos__(self): return self
    def __abs__(self): return Abs.apply(self)
    def __getitem__(self, index): return ops.getitem(self, index)

    def sum(self, axis=None, keepdims=False): return ops.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return ops.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return ops.max(self, axis, keepdims)
    def reshape(self, *shape): return ops.reshape(self, *shape)
    def transpose(self, *axes): return ops.transpose(self, *axes)
    def astype(self, dtype): return ops.astype(self, dtype)
    def exp(self): return Exp.apply(self)
    def log(self): return Log.apply(self)
    def sin(self): return Sin.apply(self)
    def cos(self): return Cos.apply(self)
    def tanh(self): return Tanh.apply(self)
    def sqrt(self): return Sqrt.apply(self)
    def abs(self): return Abs.apply(self)
    def sigmoid(self): return Sigmoid.apply(self)
    def relu(self): return ReLU.apply(self)
    def softmax(self, axis=-1): return ops.softmax(self, axis)
    def log_softmax(self, axis=-1): return ops.log_softmax(self, axis)

    # -- non-differentiable queries: results never require grad ------------------------------
    def argmax(self, axis=None): return Tensor._make(self._bk.xp.asarray(self.data.argmax(axis)), self._bk)
    def __eq__(self, other): return _compare(self, other, "equal")
    def __ne__(self, other): return _compare(self, other, "not_equal")
    def __lt__(self, other): return _compare(self, other, "less")
    def __le__(self, other): return _compare(self, other, "less_equal")
    def __gt__(self, other): return _compare(self, other, "greater")
    def __ge__(self, other): return _compare(self, other, "greater_equal")

    # -- in-place writes (only where no graph can be corrupted) ------------------------------
    def __setitem__(self, index, value):
        if self._rg and grad_mode.enabled:
            raise RuntimeError("setitem: in-place write to a tensor that requires grad; do it "
                               "under gg.no_grad() (for parameters) or on a detached copy")
        if isinstance(value, Tensor):
            value = value.data
        self.data[_index_array(index)] = value


def _compare(a, b, ufunc):
    """Elementwise comparison as a bool tensor (no graph)."""
    if isinstance(b, Tensor):
        if b._bk is not a._bk:
            raise DeviceError(f"{ufunc}: tensors on '{a.device}' and '{b.device}'")
        b = b.data
    elif type(b) not in _PY_SCALARS:
        b = _constant(b, a._bk, ufunc)
    return Tensor._make(getattr(a._bk.xp, ufunc)(a.data, b), a._bk)


def _index_array(index):
    """Unwrap Tensors used as indices (t[idx_tensor], t[rows, labels])."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


class ToDevice(Function):
    """Copy between devices; the gradient is copied back to the source device."""

    def backward(self, upstream):
        return (self.source.asarray(self.target.to_numpy(upstream)),)


# -- backward ----------------------------------------------------------------------------------

def run_backward(root, seed, retain_graph=False):
    """Reverse-mode sweep from `root` with upstream gradient `seed` (a backend array)."""
    handed_out = {id(seed)}  # arrays already given to a leaf's .grad (copy before sharing)
    if root._ctx is None:
        _accumulate(root, seed, handed_out)
        return
    order = _topological_order(root._ctx)
    root._ctx.g = seed
    anomaly = grad_mode.anomaly
    for fn in order:
        upstream = fn.g
        if upstream is not None:
            fn.g = None
            grads = fn.backward(upstream)
            if anomaly:
                from .anomaly import check_backward
                check_backward(fn, upstream, grads)
            for edge, g in zip(fn.next, grads):
                if edge is None or g is None:
                    continue
                if isinstance(edge, Tensor):
                    _accumulate(edge, g, handed_out)
                elif edge.g is None:
                    edge.g = g
                else:
                    edge.g = edge.g + g  # fan-out: sum (out of place: g may be shared)
        if not retain_graph:
            fn.release()


def _topological_order(root):
    """Functions reachable from `root`, outputs before the ops that made their inputs.

    Each Function got a creation sequence number, and an op is always created after the ops that
    made its inputs, so sorting the reachable set by that number, newest first, is a reverse
    topological order: no recursion, no per-node bookkeeping beyond a `seen` set.
    """
    if root.freed:
        raise _freed_error()
    seen, stack = {root}, [root]
    while stack:
        for e in stack.pop().next:
            if e is not None and e not in seen and not isinstance(e, Tensor):
                if e.freed:
                    raise _freed_error()
                seen.add(e)
                stack.append(e)
    return sorted(seen, key=_by_sequence, reverse=True)


_by_sequence = operator.attrgetter("seq")


def _freed_error():
    return RuntimeError("backward: trying to backward through the graph a second time (its saved "
                        "values were freed by the first backward); pass retain_graph=True to the "
                        "first call if you need to backward twice")


def _accumulate(leaf, g, handed_out):
    """leaf.grad += g, keeping the leaf's dtype and never aliasing another leaf's gradient."""
    if g.dtype != leaf.data.dtype:
        g = g.astype(leaf.data.dtype)
    if leaf.grad is None:
        if g.base is not None or id(g) in handed_out:  # a view or an array already shared
            g = g.copy()
        handed_out.add(id(g))
        leaf.grad = Tensor._make(g, leaf._bk)
    else:
        leaf.grad.data = leaf.grad.data + g


# Creation functions and the ops build on Function and Tensor above; Tensor's methods call them.
from .creation import (_dtype, ones, ones_like, rand, randn, tensor, zeros,  # noqa: E402,F401
                       zeros_like)
from . import ops  # noqa: E402
from .ops.arithmetic import Add, Div, MatMul, Mul, Neg, Pow, Sub  # noqa: E402
from .ops.elementwise import Abs, Cos, Exp, Log, ReLU, Sigmoid, Sin, Sqrt, Tanh  # noqa: E402
