"""gg.nn.Module: the base of layers and models. Parameters, buffers and sub-modules are
registered by assignment (buffers by register_buffer); state_dict / load_state_dict / to() work
on all of them at once. The layers themselves are in nn.py.
"""
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

from . import backend as _backend
from .errors import ShapeError
from .tensor import Tensor, _bump, tensor

__all__ = ["Module", "LoadResult"]

LoadResult = namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of layers and models: subclasses assign parameters and sub-Modules in
    `__init__` (after `super().__init__()`) and define `forward`.

    Registration happens at assignment: a leaf Tensor with requires_grad=True becomes a
    parameter, a Module becomes a child; anything else is a plain attribute, except a Tensor
    assigned to a name registered with `register_buffer`, which stays a buffer. Registered values
    live only in `_params` / `_modules` / `_buffers` (one source of truth); `__getattr__` finds
    them.
    """

    training = True

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())

    def _registries(self):
        d = self.__dict__
        if "_params" not in d:  # a subclass that forgot super().__init__() still works
            Module.__init__(self)
        return d["_params"], d["_modules"]

    def _buffer_registry(self):
        self._registries()
        return self.__dict__.setdefault("_buffers", OrderedDict())

    def __setattr__(self, name, value):
        params, modules = self._registries()
        buffers = self._buffer_registry()
        if name in buffers and isinstance(value, Tensor) and not value.requires_grad:
            buffers[name] = value  # a buffer stays a buffer, in its position
        elif isinstance(value, Tensor) and value.requires_grad and value.is_leaf:
            modules.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value  # re-assigning keeps the name's original position
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        else:
            params.pop(name, None)
            modules.pop(name, None)
            buffers.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only called when normal lookup fails
        d = self.__dict__
        for registry in (d.get("_params", {}), d.get("_modules", {}), d.get("_buffers", {})):
            if name in registry:
                return registry[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name):
        params, modules = self._registries()
        if (params.pop(name, None) is None and modules.pop(name, None) is None
                and self._buffer_registry().pop(name, None) is None):
            object.__delattr__(self, name)

    def register_buffer(self, name, value):
        """Keep `value` (a Tensor, or a NumPy/CuPy array, copied) as this module's state: saved by
        state_dict() and moved by to(), but not a parameter, so no optimizer trains it."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"register_buffer: the name must be an identifier, got {name!r}")
        if isinstance(value, Tensor):
            if value.requires_grad:
                raise TypeError(f"register_buffer: {name!r} requires grad, so it would be "
                                f"trained; assign it as a parameter, or pass .detach()")
        elif _backend.backend_for_array(value) is not None:
            value = tensor(value)
        else:
            raise TypeError(f"register_buffer: {name!r} must be a Tensor or an array (NumPy or "
                            f"CuPy), got {type(value).__name__}")
        params, modules = self._registries()
        if name in params or name in modules:
            raise KeyError(f"register_buffer: {name!r} is already a parameter or a sub-module")
        self.__dict__.pop(name, None)
        self._buffer_registry()[name] = value

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal ------------------------------------------------------------------------
    def children(self):
        return iter(self._registries()[1].values())

    def modules(self):
        """This module and every descendant, pre-order (e.g. to pick the Linear weights)."""
        stack = [self]
        while stack:
            m = stack.pop()
            yield m
            stack.extend(reversed(list(m.children())))

    def named_parameters(self, prefix=""):
        """(dotted name, parameter) pairs: own parameters first, then each child's, in
        definition order; a parameter shared by two layers is listed once (first name)."""
        return self._named(lambda m: m._registries()[0].items(), prefix)

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix=""):
        """(dotted name, buffer) pairs, in the order of named_parameters."""
        return self._named(lambda m: m._buffer_registry().items(), prefix)

    def _named_state(self):
        """What state_dict holds: each module's parameters, then its buffers, then its children."""
        return self._named(lambda m: [*m._registries()[0].items(),
                                      *m._buffer_registry().items()])

    def _named(self, members, prefix=""):
        seen, stack = set(), [(prefix, self)]
        while stack:
            pre, m = stack.pop()
            for name, t in members(m):
                if id(t) not in seen:
                    seen.add(id(t))
                    yield pre + name, t
            stack.extend((pre + name + ".", c)
                         for name, c in reversed(m._registries()[1].items()))

    def zero_grad(self):
        """Drop every parameter's gradient (None, not zeros: the next backward just assigns)."""
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self):
        """Ordered name -> detached Tensor, parameters and buffers. The values share memory with
        them (as in PyTorch); gg.save writes a snapshot."""
        return OrderedDict((name, p.detach()) for name, p in self._named_state())

    def load_state_dict(self, state_dict, strict=True):
        """Copy values (Tensors or NumPy/CuPy arrays) into the existing parameters and buffers,
        in place.

        Every key, shape and dtype is checked before anything is written, so a bad state dict
        raises (KeyError / ShapeError / TypeError naming the key) and changes nothing. The
        parameter Tensors keep their identity and device, so optimizers holding them keep working.
        strict=False ignores missing and unexpected keys. Returns (missing_keys, unexpected_keys).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping of name -> array (e.g. "
                            f"gg.load(path)), got {type(state_dict).__name__}")
        own = OrderedDict(self._named_state())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                           f"{unexpected} (expected exactly {list(own)})")
        writes = []
        for name, p in own.items():
            if name in state_dict:
                writes.append((p, _checked_array(name, state_dict[name], p)))
        for p, arr in writes:  # nothing below can fail: shapes and dtypes are equal
            p.data[...] = arr
            _bump(p)  # written in place: a graph that saved p must not backward
        return LoadResult(missing, unexpected)

    def to(self, device):
        """Move every parameter (and its gradient) and buffer to `device` in place: the same
        Tensor objects get new arrays, so optimizers keep working. Returns self."""
        bk = _backend.get_backend(device)  # raises DeviceError before anything moves
        moves = []
        for _, p in self._named_state():
            if p._bk is not bk:
                grad = p.grad
                if grad is not None:
                    grad = Tensor._make(bk.asarray(grad._bk.to_numpy(grad.data)), bk)
                moves.append((p, bk.asarray(p._bk.to_numpy(p.data)), grad))
        for p, data, grad in moves:  # all copies made first: a failed copy moves nothing
            p.data, p._bk, p.grad = data, bk, grad
        return self

    # -- display ----------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        extra, children = self.extra_repr(), self._registries()[1]
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = ([extra] if extra else []) + [f"({name}): " + repr(c).replace("\n", "\n  ")
                                              for name, c in children.items()]
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _checked_array(name, value, p):
    """`value` as an array on p's device, after checking its type, shape and dtype against p."""
    if isinstance(value, Tensor):
        src, arr = value._bk, value.data
    else:
        src = _backend.backend_for_array(value)
        if src is None:
            kind = type(value)
            what = kind.__qualname__ if kind.__module__ == "builtins" else \
                f"{kind.__module__}.{kind.__qualname__}"  # torch.Tensor, not just "Tensor"
            raise TypeError(f"load_state_dict: {name!r} is a {what}; expected a gpugrad Tensor "
                            f"or a NumPy/CuPy array (a torch.Tensor: pass .numpy())")
        arr = value
    if tuple(arr.shape) != p.shape:
        raise ShapeError(f"load_state_dict: {name!r} has shape {tuple(arr.shape)}, expected "
                         f"{p.shape}")
    if arr.dtype != p.dtype:
        raise TypeError(f"load_state_dict: {name!r} has dtype {arr.dtype}, expected {p.dtype} "
                        f"(convert it, e.g. arr.astype('{p.dtype}'))")
    return arr if src is p._bk else p._bk.asarray(src.to_numpy(arr))
