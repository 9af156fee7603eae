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
import contextvars
import itertools
from contextlib import nullcontext
import operator
import weakref

import numpy as np

from . import backend as _backend
from . import hooks as _hooks
from .errors import DeviceError, ShapeError

_FLOAT_KINDS = "f"
_PY_SCALARS = (int, float, bool)  # exact types: np.float64 subclasses float but is not weak


from .modes import current as _modes  # noqa: E402
from .modes import enable_grad, grad_mode, no_grad  # noqa: E402,F401  (per-thread modes)


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
    # What backward reads of the op's values, declared by each op: input positions, and OUT for
    # its output. Backward refuses to run if one of them was written in place after the forward
    # (a silently wrong gradient otherwise); raw NumPy/CuPy operands in these positions are
    # copied, so the caller may reuse its buffer.
    saved = ()
    # Forward mode (gg.autograd.jvp): `jvp(*tangents) -> the output's tangent`, one tangent per
    # input (None for an input that has none: zero), arrays in, array out, beside backward.
    jvp = None
    # True for the ops of an Executor plan (gpugrad/tracing.py), where every forward is followed
    # by its backward: an op may then compute in forward what its backward needs
    replayed = False
    fixup = False        # set by apply when forward's result needed its output rules
    clock = None         # the in-place write clock when the forward ran (ops with saved values)
    _saves_inputs = _saves_output = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._saves_inputs = any(i != OUT for i in cls.saved)
        cls._saves_output = OUT in cls.saved

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
        arrays, edges, needs = [], [], []  # needs[i]: input i wants a gradient
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
                    needs.append(True)
                else:
                    edges.append(None)
                    needs.append(False)
            else:
                arrays.append(a)
                edges.append(None)
                needs.append(False)
                convert = convert or type(a) not in _PY_SCALARS
        if bk is None:
            raise TypeError(f"{fn.name}: needs at least one Tensor input")
        mode = _modes()
        recording = track and mode.enabled
        if convert:
            arrays = [_operand(a, arg, bk, fn.name, recording and i in cls.saved)
                      for i, (a, arg) in enumerate(zip(arrays, args))]
        fn.bk = bk
        out = fn.forward(*arrays)
        if isinstance(out, np.generic):  # NumPy returns scalars from 0-d arithmetic
            out = np.asarray(out)
            fn.fixup = True
        dtype = out.dtype
        if dtype is _F64 and not fn.exact_dtype and not _any_float64(arrays):
            out = out.astype(np.float32)  # ints and Python floats make float32, as tensor() does
            dtype = out.dtype
            fn.fixup = True
        t = _new(Tensor)  # Tensor._make, inlined: this runs once per op
        t.data, t.grad, t._bk, t.name, t._version = out, None, bk, None, None
        if out.base is not None:  # a view of an input (reshape, slicing): one version for both
            _share_version(t, args)
        if mode.anomaly:
            from .anomaly import check_forward
            check_forward(fn, arrays, out)
        if mode.forward:  # inside gg.autograd.jvp: the tangent rides beside the value
            _carry_tangent(fn, args, t, recording)
        if recording and dtype.kind == "f":
            fn.next, fn.needs = edges, needs
            fn.seq = next(_sequence)
            fn.out_meta = (out.shape, dtype)  # for gg.viz: the output Tensor is not kept
            if cls.saved:  # what backward will read, to check it is unchanged then
                fn.clock = _clock_now[0]
                if cls._saves_inputs:  # their arrays are kept anyway: the wrappers cost nothing
                    fn.inputs = args
                if cls._saves_output:
                    fn.out_version = _counter(t)
            if mode.anomaly:
                from .anomaly import record
                record(fn, arrays)
            t._ctx, t._rg = fn, True
        else:
            t._ctx, t._rg = None, False
        if _tracer is not None:  # the Executor is recording a step (gpugrad/tracing.py)
            _tracer(fn, args, arrays, params, t)
        return t

    def replay_forward(self, *arrays):
        """forward() on arrays as apply() runs it (apply inlines the same output rules), for a
        recorded step being replayed where the recording's output needed them (`fixup`; other
        ops are replayed by calling forward itself): no Tensors, no graph links."""
        out = self.forward(*arrays)
        if isinstance(out, np.generic):
            out = np.asarray(out)
        if out.dtype is _F64 and not self.exact_dtype and not _any_float64(arrays):
            out = out.astype(np.float32)
        return out

    def release(self):
        """Drop saved arrays and graph links after backward (unless retain_graph)."""
        self.__dict__.clear()
        self.freed = True


_tracer = None  # set while the Executor records a step: called with every op applied
_new = object.__new__
_F64 = np.dtype(np.float64)
_sequence = itertools.count()  # creation order: inputs are always made before their outputs


OUT = -1  # in Function.saved: the op's output


# In-place writes are stamped by a clock: each write through gpugrad takes the next tick and
# stores it in the written tensor's version counter, [writes, tick of the last write], which every
# alias of the data (detach(), state_dict(), views) shares. An op with saved values remembers the
# clock at its forward; at backward, a saved tensor whose last write is later is stale. When
# nothing at all was written since the forward (the clock has not moved: the usual case), the
# check is one comparison.
_ticks = itertools.count(1)
_clock_now = [0]  # the tick of the latest in-place write


def _counter(t):
    """t's version counter, shared by every alias of its data (created on first need)."""
    c = t._version
    if c is None:
        c = t._version = [0, 0]
    return c


def _bump(t):
    """Record an in-place write to t's data: values saved from it before now are stale."""
    _bump_all((t,))


def _bump_all(tensors):
    """Record in-place writes that happened together (an optimizer step): one tick for all of
    them, which orders them against every forward exactly as a tick each would."""
    tick = _clock_now[0] = next(_ticks)
    for t in tensors:
        c = _counter(t)
        c[0] += 1
        c[1] = tick


def _operand(a, arg, bk, op, saved):
    """A non-Tensor operand as an array on the op's device. A raw array that backward will read
    is copied: the caller may write to its buffer (the next micro-batch) before backward."""
    if arg is not a or type(a) in _PY_SCALARS:  # a Tensor's own array, or a Python number
        return a
    if bk.is_array(a):
        return a.copy() if saved else a
    return _constant(a, bk, op)


def _share_version(view, args):
    """Give `view` the counter of the input whose memory it is, so a write through either is
    seen by ops that saved the other."""
    root = _root(view.data)
    for a in args:
        if isinstance(a, Tensor) and _root(a.data) is root:
            view._version = _counter(a)
            return


def _root(array):
    while array.base is not None:
        array = array.base
    return array


def _check_saved(fn):
    """Raise PyTorch's error if a value fn saved for its backward was written in place after
    the forward, naming the op and the value."""
    for i in type(fn).saved:
        if i == OUT:
            c, what, (shape, dtype) = fn.out_version, "its output", fn.out_meta
        else:
            x = fn.inputs[i]
            if not isinstance(x, Tensor) or x._version is None:
                continue
            c, what, shape, dtype = x._version, f"its input {i}", x.shape, x.dtype
        if c[1] > fn.clock:
            raise RuntimeError(
                f"backward: one of the variables needed for gradient computation has been "
                f"modified by an inplace operation: {what}, a {dtype} tensor of shape {shape} "
                f"saved by '{fn.name}', is at version {c[0]} and was written after the forward "
                f"(by t[...] = v, an optimizer step, load_state_dict or an Executor step). "
                f"Compute it again after the write, or write to a copy instead.")


def _carry_tangent(fn, args, out, recording):
    """Forward mode, the lecture's (v, w) pairs: out's tangent from its inputs' tangents by the
    op's own rule. Inputs without a tangent pass None (a zero tangent); an output that depends
    on no tangent gets none."""
    tangents = [getattr(a, "_tan", None) if isinstance(a, Tensor) else None for a in args]
    data = out.data
    if data.dtype.kind != "f" or all(tan is None for tan in tangents):
        return
    if fn.jvp is None:
        raise NotImplementedError(f"jvp: '{fn.name}' has no forward-mode rule (define "
                                  f"Function.jvp beside its backward)")
    tan = fn.jvp(*tangents)
    if isinstance(tan, np.generic):
        tan = np.asarray(tan)
    if tan.shape != data.shape:  # a rule may leave broadcasting to here (x + b, tangent of b)
        tan = fn.bk.xp.broadcast_to(tan, data.shape)
    if tan.dtype != data.dtype:
        tan = tan.astype(data.dtype)
    give_tangent(out, tan)
    if recording and type(fn)._saves_output:  # for the output a differentiated backward reads
        fn.out_tan = tan
        _hold(fn)


# The tangents one gg.autograd.jvp call gave out (weak references to the Tensors carrying them,
# and to the Functions keeping one for their output): the call takes them all back when it
# returns, so a tensor kept from it (a closure, a cache, a recorded graph) is a constant to the
# next jvp instead of carrying a stale tangent into it.
_held = contextvars.ContextVar("gpugrad_tangents", default=None)


def give_tangent(t, tan):
    """t carries tangent `tan` until the running jvp returns."""
    t._tan = tan
    _hold(t)


def _hold(obj):
    held = _held.get()
    if held is not None:  # None: forward mode entered by hand, outside gg.autograd.jvp
        held.append(weakref.ref(obj))


def take_back_tangents(held):
    """End of a jvp call: drop every tangent it gave out."""
    for ref in held:
        obj = ref()
        if isinstance(obj, Tensor):
            obj._tan = None
        elif obj is not None:
            obj.__dict__.pop("out_tan", None)


def _write_tangent(t, index, value):
    """Forward mode, t[index] = value: the value's tangent (zero for a constant) is written into
    t's tangent at the same place."""
    tan, vtan = getattr(t, "_tan", None), getattr(value, "_tan", None)
    if tan is None and vtan is None:
        return
    new = t._bk.xp.zeros_like(t.data) if tan is None else tan.copy()
    new[index] = 0 if vtan is None else vtan
    give_tangent(t, new)


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

    # _tan: the tangent carried in forward mode (gg.autograd.jvp); unset otherwise, read only
    # with getattr(t, "_tan", None) so the ordinary path never touches it
    __slots__ = ("data", "grad", "_rg", "_ctx", "_bk", "name", "_version", "_tan",
                 "__weakref__")
    __array_ufunc__ = None  # make `ndarray + Tensor` defer to Tensor.__radd__
    __hash__ = object.__hash__  # identity hash: == is elementwise

    def __init__(self, data, dtype=None, device=None, requires_grad=False):
        t = tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        self.data, self.grad, self._rg, self._ctx, self._bk = t.data, None, t._rg, None, t._bk
        self.name, self._version = None, None

    @classmethod
    def _make(cls, data, bk, requires_grad=False):
        t = object.__new__(cls)
        t.data, t.grad, t._rg, t._ctx, t._bk, t.name = data, None, requires_grad, None, bk, None
        t._version = None
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

    def __iter__(self):
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

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
        """NumPy 2's protocol: np.array(t) (copy=True) returns a copy, np.asarray(t) (copy=None)
        shares the CPU tensor's memory, copy=False refuses where sharing is impossible."""
        if self._bk.name != "cpu":
            if copy is False:
                raise ValueError(f"np.asarray(copy=False): tensor is on '{self.device}'; its "
                                 f"memory cannot be shared with NumPy")
            raise TypeError(f"np.asarray(): tensor is on '{self.device}'; call .numpy() to copy "
                            f"it to the host")
        if copy is False and dtype is not None and np.dtype(dtype) != self.data.dtype:
            raise ValueError(f"np.asarray(copy=False): a {self.data.dtype} tensor cannot be "
                             f"shared as {np.dtype(dtype)} without a copy")
        if copy:
            return self.data.astype(dtype if dtype is not None else self.data.dtype, copy=True)
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
        """The values as a host numpy.ndarray: on the CPU the tensor's own array (shared, as
        torch's .numpy(): writes to it are not seen by gpugrad's in-place checks), a copy from
        the GPU."""
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
        tan = getattr(self, "_tan", None)
        if tan is not None and _modes().forward:
            give_tangent(out, bk.asarray(self._bk.to_numpy(tan)))
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
        """The same data (shared, with the same version counter: an in-place write through the
        detached tensor is seen by ops that saved this one) with no graph and no grad."""
        t = Tensor._make(self.data, self._bk)
        t._version = _counter(self)
        return t

    def requires_grad_(self, flag=True):
        self.requires_grad = flag
        return self

    def backward(self, grad=None, retain_graph=None, create_graph=False):
        """Backpropagate from this tensor: accumulate d(self)/d(leaf) into every leaf's .grad.

        create_graph=True records the backward pass itself as a graph, so the .grad it leaves
        can be differentiated again (to any order). retain_graph defaults to create_graph."""
        if not self._rg:
            raise RuntimeError("backward: this tensor does not require grad and has no graph "
                               "(did an input have requires_grad=True? was it made under no_grad?)")
        seed = _seed(self, grad, "backward")
        run_backward(self, seed, create_graph if retain_graph is None else retain_graph,
                     create_graph)

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return ops.transpose(self, tuple(axes))

    def any(self, axis=None):
        """Whether any element is nonzero (a bool tensor, no graph), as NumPy's any."""
        return Tensor._make(self._bk.xp.asarray(self.data.any(axis)), self._bk)

    def all(self, axis=None):
        """Whether every element is nonzero (a bool tensor, no graph), as NumPy's all."""
        return Tensor._make(self._bk.xp.asarray(self.data.all(axis)), self._bk)

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
        source = value
        if isinstance(value, Tensor):
            value = value.data
        index = _index_array(index)
        self.data[index] = value
        _bump(self)
        if _modes().forward:  # inside gg.autograd.jvp: the tangent is written too
            _write_tangent(self, index, source)


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
        if isinstance(upstream, Tensor):  # a differentiated backward: the copy is an op too
            return (upstream.to(self.source.name),)
        return (self.source.asarray(self.target.to_numpy(upstream)),)


# -- backward ----------------------------------------------------------------------------------

def _seed(out, grad, op):
    """The upstream gradient that starts a backward from `out`: ones for a one-element output
    when `grad` is None, else `grad` checked (numeric, same device and shape) and in out's dtype.
    A Tensor stays a Tensor (a differentiated backward may differentiate with respect to it);
    anything else becomes an array."""
    if grad is None:
        if out.data.size != 1:
            raise RuntimeError(f"{op}: grad can be omitted only for a one-element output; "
                               f"this output has shape {out.shape}")
        return out._bk.xp.ones_like(out.data)
    if not isinstance(grad, Tensor) and not (
            type(grad) in _PY_SCALARS or isinstance(grad, (list, tuple, np.generic))
            or _backend.backend_for_array(grad) is not None):
        raise TypeError(f"{op}: grad must be a Tensor, an array or numbers, got "
                        f"{type(grad).__name__}")
    g = grad.data if isinstance(grad, Tensor) else out._bk.asarray(grad)
    if g.dtype.kind not in "biuf":
        raise TypeError(f"{op}: grad must be numeric, got dtype {g.dtype}")
    if isinstance(grad, Tensor) and grad._bk is not out._bk:
        raise DeviceError(f"{op}: grad is on '{grad.device}', output on '{out.device}'")
    if g.shape != out.data.shape:
        raise ShapeError(f"{op}: grad has shape {g.shape}, output has shape {out.shape}")
    if isinstance(grad, Tensor):
        return grad if grad.dtype == out.dtype else grad.astype(out.dtype)
    return g.astype(out.data.dtype, copy=False)


def run_backward(root, seed, retain_graph=False, create_graph=False):
    """Reverse-mode sweep from `root` with upstream gradient `seed`, into the leaves' .grad.

    All or nothing: leaf gradients are collected first and written only once every op's backward
    has succeeded, and the graph is freed (without retain_graph) only then. An exception part way
    (a failing op, a stale saved value, KeyboardInterrupt, MemoryError) leaves every .grad and the
    graph as they were, so the same backward() can simply be called again."""
    tensors = create_graph or _modes().forward
    if tensors and _hooks.watched:
        raise RuntimeError("backward(create_graph=True) (or inside gg.autograd.jvp) is not "
                           "supported while gradient hooks are installed (DataParallel); use "
                           "gg.autograd.grad, which leaves .grad alone")
    if not tensors and isinstance(seed, Tensor):
        seed = seed.data
    order, leaves, _ = sweep(((root, seed),), tensors, create_graph, hooks=True)
    if tensors:
        _commit_tensors(leaves, seed)
    else:
        _commit(leaves, seed)
    if not retain_graph:
        release(order)


def sweep(roots, tensors=False, create_graph=False, wanted=(), hooks=False):
    """The reverse walk from `roots`, pairs (output tensor, its upstream gradient): every
    Function's backward once, in reverse topological order, gradients summed at fan-out.

    Returns (order, leaves, reached): `leaves` maps id(leaf) -> [leaf, its summed gradient];
    `reached` maps id(fn) -> the whole gradient that arrived at fn, for each id in `wanted`
    (gradients with respect to non-leaf tensors, for gg.autograd.grad).

    tensors=False (the ordinary backward): every backward runs on arrays. tensors=True: every
    backward runs on Tensors through gpugrad's own ops (see _differentiable), so it is recorded
    as a graph when create_graph, and carries tangents in forward mode."""
    if tensors and _tracer is not None:
        raise RuntimeError("Executor: a step cannot differentiate its own backward "
                           "(create_graph, gg.autograd inside the loss); run it eagerly")
    leaves, reached = {}, {}
    roots = [(out, Tensor._make(seed, out._bk) if tensors and not isinstance(seed, Tensor)
              else seed) for out, seed in roots]
    order = _topological_order([out._ctx for out, _ in roots if out._ctx is not None])
    for out, seed in roots:
        fn = out._ctx
        if fn is None:  # the output is a leaf itself
            _add(leaves, out, seed)
        else:
            fn.g = seed if fn.g is None else fn.g + seed
    ready = _hooks.session(order) if hooks and _hooks.watched else None  # GRAD-READY HOOK
    anomaly = grad_mode.anomaly
    # tensors: the backward ops record a graph (create_graph) or only carry tangents
    with (enable_grad() if create_graph else no_grad()) if tensors else nullcontext():
        try:
            for fn in order:
                upstream = fn.g
                if upstream is None:
                    continue
                fn.g = None
                if wanted and id(fn) in wanted:
                    reached[id(fn)] = upstream
                if fn.clock is not None and fn.clock != _clock_now[0]:  # a write since forward
                    _check_saved(fn)
                grads = (_differentiable(fn) if tensors else fn).backward(upstream)
                if anomaly:
                    from .anomaly import check_backward
                    check_backward(fn, _data(upstream), [_data(g) for g in grads])
                for edge, g in zip(fn.next, grads):
                    if edge is None or g is None:
                        continue
                    if isinstance(edge, Tensor):
                        entry = _add(leaves, edge, g)
                        if ready is not None:  # GRAD-READY HOOK: fires on the leaf's last edge
                            ready(entry)
                    elif edge.g is None:
                        edge.g = g
                    else:
                        edge.g = edge.g + g  # fan-out: sum (out of place: g may be shared)
        except BaseException:
            for fn in order:  # drop the partial sums: the graph is as before the call
                fn.g = None
            if ready is not None:  # GRAD-READY HOOK
                ready.abort()
            raise
    if ready is not None:  # GRAD-READY HOOK: watchers may wait for and replace gradients
        ready.finish(leaves)
    return order, leaves, reached


def _add(leaves, leaf, g):
    """Sum g into the leaf's entry (out of place: g may be shared)."""
    entry = leaves.get(id(leaf))
    if entry is None:
        entry = leaves[id(leaf)] = [leaf, g]
    else:
        entry[1] = entry[1] + g
    return entry


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def release(order):
    """Free the saved values of a walked graph (backward without retain_graph)."""
    for fn in order:
        fn.release()


def _differentiable(fn):
    """fn as its backward must see it to be differentiated again: a copy whose saved inputs and
    output are the graph's Tensors instead of their arrays, and whose `bk` (the namespace every
    backward is written against: `self.bk`, `self.bk.xp`) is gpugrad's differentiable ops
    (ops/differentiable.py). The op's backward is the same code either way.

    What a backward may read, then: its saved inputs (stored as forward received them), its
    output as `self.out`, and values whose derivative is zero (shapes, masks, a max's winners),
    which stay arrays."""
    twin = _new(type(fn))
    d = twin.__dict__
    d.update(fn.__dict__)
    cls = type(fn)
    if cls._saves_inputs:
        # the Tensors whose arrays forward stored, by array; one array may stand for several
        # Tensors (x * x.detach()): forward stores its inputs in their order (self.a, self.b =
        # a, b), so the attributes holding that array take the Tensors in input order
        tensors = {}
        for i in cls.saved:
            x = fn.inputs[i] if i != OUT else None
            if isinstance(x, Tensor):
                tensors.setdefault(id(x.data), []).append(x)
        for k, v in d.items():
            ts = tensors.get(id(v))
            if ts is not None:
                d[k] = ts.pop(0) if len(ts) > 1 else ts[0]
    if cls._saves_output:
        out = Tensor._make(fn.out, fn.bk, True)
        out._ctx, out._version = fn, fn.out_version
        if "out_tan" in d:
            give_tangent(out, d["out_tan"])
        d["out"] = out
    if "bk" in d:
        d["bk"] = differentiable_ops(fn.bk)
    return twin


def _commit_tensors(leaves, seed):
    """leaf.grad += g for gradients that are Tensors (create_graph: they carry the graph of the
    backward, so .grad can be differentiated). All computed before any is assigned; a new .grad
    never shares memory with another's, nor with the seed (a differentiable copy where it
    would)."""
    handed_out, new = {id(_data(seed))}, []
    for leaf, g in leaves.values():
        if not isinstance(g, Tensor):  # a leaf that is its own root, seeded with an array
            g = Tensor._make(g, leaf._bk)
        if g.dtype != leaf.data.dtype or g.data.base is not None or id(g.data) in handed_out:
            g = g.astype(leaf.data.dtype)  # a Cast: copies, and is differentiable
        handed_out.add(id(g.data))
        new.append((leaf, g if leaf.grad is None else leaf.grad + g))
    for leaf, g in new:  # nothing below can fail
        leaf.grad = g


def _commit(leaves, seed):
    """leaf.grad += g for every leaf, computed for all of them before any is assigned (so a
    failure, e.g. out of memory, assigns none). A new .grad never aliases another leaf's
    gradient, the seed, or a view of anything."""
    handed_out, new = {id(seed)}, []
    for leaf, g in leaves.values():
        if g.dtype != leaf.data.dtype:
            g = g.astype(leaf.data.dtype)
        if leaf.grad is None:
            if g.base is not None or id(g) in handed_out:  # a view or an array already shared
                g = g.copy()
            handed_out.add(id(g))
            new.append((leaf, Tensor._make(g, leaf._bk), None))
        elif leaf.grad._rg:  # a .grad from create_graph, which a graph may have used: as
            # PyTorch, the sum is a new tensor (plain: this backward records nothing)
            new.append((leaf, Tensor._make(leaf.grad.data + g, leaf._bk), None))
        else:
            new.append((leaf, None, leaf.grad.data + g))
    for leaf, fresh, summed in new:  # nothing below can fail
        if fresh is not None:
            leaf.grad = fresh
        else:
            leaf.grad.data = summed


def _topological_order(roots):
    """Functions reachable from the Functions `roots`, outputs before the ops that made their
    inputs.

    Each Function got a creation sequence number, and an op is always created after the ops that
    made its inputs, so sorting the reachable set by that number, newest first, is a reverse
    topological order: no recursion, no per-node bookkeeping beyond a `seen` set.
    """
    for root in roots:
        if root.freed:
            raise _freed_error()
    seen, stack = set(roots), list(roots)
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


# Creation functions and the ops build on Function and Tensor above; Tensor's methods call them.
from .creation import (_dtype, ones, ones_like, rand, randn, tensor, zeros,  # noqa: E402,F401
                       zeros_like)
from . import ops  # noqa: E402
from .ops.differentiable import differentiable_ops  # noqa: E402
from .ops.arithmetic import Add, Div, MatMul, Mul, Neg, Pow, Sub  # noqa: E402
from .ops.elementwise import Abs, Cos, Exp, Log, ReLU, Sigmoid, Sin, Sqrt, Tanh  # noqa: E402
