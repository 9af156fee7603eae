"""Neural-network building blocks: Module, Linear, Sequential and the activation layers.

A Module owns parameters (leaf Tensors that require grad) and sub-Modules, registered simply by
assigning them as attributes, in definition order. Everything else (optimizers, gg.save, the
Executor) reaches the parameters through `named_parameters()`, so a model is just a tree of
Modules whose leaves are Tensors.
"""
import math
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from . import backend as _backend
from .errors import ShapeError
from .ops import relu, sigmoid, tanh
from .tensor import Tensor, _bump, randn, tensor, zeros

__all__ = ["Module", "Linear", "Sequential", "Sigmoid", "ReLU", "Tanh", "mlp"]

LoadResult = namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of layers and models: subclasses assign parameters and sub-Modules in
    `__init__` (after `super().__init__()`) and define `forward`.

    Registration happens at assignment: a leaf Tensor with requires_grad=True becomes a
    parameter, a Module becomes a child; anything else is a plain attribute. Registered values
    live only in `_params` / `_modules` (one source of truth); `__getattr__` finds them.
    """

    training = True

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    def _registries(self):
        d = self.__dict__
        if "_params" not in d:  # a subclass that forgot super().__init__() still works
            Module.__init__(self)
        return d["_params"], d["_modules"]

    def __setattr__(self, name, value):
        params, modules = self._registries()
        if isinstance(value, Tensor) and value.requires_grad and value.is_leaf:
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value  # re-assigning keeps the name's original position
        elif isinstance(value, Module):
            params.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        else:
            params.pop(name, None)
            modules.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only called when normal lookup fails
        d = self.__dict__
        for registry in (d.get("_params", {}), d.get("_modules", {})):
            if name in registry:
                return registry[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name):
        params, modules = self._registries()
        if params.pop(name, None) is None and modules.pop(name, None) is None:
            object.__delattr__(self, name)

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
        seen, stack = set(), [(prefix, self)]
        while stack:
            pre, m = stack.pop()
            params, modules = m._registries()
            for name, p in params.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield pre + name, p
            stack.extend((pre + name + ".", c) for name, c in reversed(modules.items()))

    def parameters(self):
        return (p for _, p in self.named_parameters())

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
        """Ordered name -> detached Tensor. The values share memory with the parameters (as in
        PyTorch); gg.save writes a snapshot."""
        return OrderedDict((name, p.detach()) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy values (Tensors or NumPy/CuPy arrays) into the existing parameters, in place.

        Every key, shape and dtype is checked before anything is written, so a bad state dict
        raises (KeyError / ShapeError / TypeError naming the key) and changes nothing. The
        parameter Tensors keep their identity and device, so optimizers holding them keep working.
        strict=False ignores missing and unexpected keys. Returns (missing_keys, unexpected_keys).
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping of name -> array (e.g. "
                            f"gg.load(path)), got {type(state_dict).__name__}")
        own = OrderedDict(self.named_parameters())
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
        """Move every parameter (and its gradient) to `device` in place: the same Tensor
        objects get new arrays, so optimizers keep working. Returns self."""
        bk = _backend.get_backend(device)  # raises DeviceError before anything moves
        moves = []
        for p in self.parameters():
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


class Linear(Module):
    """y = x @ W + b with W of shape (in_features, out_features) and b of shape (out_features,).

    Rows of x are samples, so the lecture's per-sample W x becomes one matrix product over the
    batch, x @ W, with no transpose on the hot path; PyTorch stores the transpose (out, in), so
    copy `W.T` when exchanging weights with torch.nn.Linear.

    init: "he" (Kaiming normal, std sqrt(2 / fan_in)) keeps the activation variance constant
    through ReLU layers, which zero half their inputs; "xavier" (Glorot normal, std
    sqrt(2 / (fan_in + fan_out))) suits sigmoid and tanh, which are linear near 0. The bias starts
    at zero. Samples come from gpugrad's generator on the target device (gg.randn), so
    gg.manual_seed makes models reproducible on each device.
    """

    INITS = ("he", "xavier")

    def __init__(self, in_features, out_features, bias=True, init="he", dtype=None, device=None):
        super().__init__()
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
                raise ValueError(f"Linear: {name} must be a positive int, got {n!r}")
        if init not in self.INITS:
            raise ValueError(f"Linear: init must be one of {self.INITS}, got {init!r}")
        dtype = np.dtype(dtype if dtype is not None else np.float32)
        if dtype.kind != "f":
            raise TypeError(f"Linear: parameters must be floating point, got dtype {dtype}")
        self.in_features, self.out_features, self.init = int(in_features), int(out_features), init
        fan = in_features if init == "he" else in_features + out_features
        w = randn(in_features, out_features, dtype=dtype, device=device)
        w.data *= math.sqrt(2.0 / fan)  # scale in place: no second (in, out) array
        self.weight = w.requires_grad_()
        self.bias = (zeros(out_features, dtype=dtype, device=device, requires_grad=True)
                     if bias else None)

    def forward(self, x):
        w = self.weight
        if not isinstance(x, Tensor):
            x = tensor(x, device=w.device)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ShapeError(f"Linear: input has {x.shape[-1] if x.ndim else 'no'} features "
                             f"(shape {x.shape}), expected {self.in_features}")
        out = x @ w
        return out if self.bias is None else out + self.bias

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, init={self.init!r}")


class Sequential(Module):
    """Layers applied in order; children are registered as "0", "1", ... (so parameter names
    read "0.weight", "2.bias"). Indexable, sized and iterable."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} is a {type(layer).__name__}, not a "
                                f"gg.nn.Module")
            setattr(self, str(i), layer)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        layers = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*layers[index])
        return layers[index]


class Sigmoid(Module):
    def forward(self, x):
        return sigmoid(x)


class ReLU(Module):
    def forward(self, x):
        return relu(x)


class Tanh(Module):
    def forward(self, x):
        return tanh(x)


# activation name -> (layer, the initialisation that suits it; see Linear)
ACTIVATIONS = {"relu": (ReLU, "he"), "sigmoid": (Sigmoid, "xavier"), "tanh": (Tanh, "xavier")}


def mlp(sizes, activation="relu", bias=True, dtype=None, device=None):
    """Sequential(Linear, act, ..., Linear) through `sizes` (e.g. [784, 256, 256, 10]); no
    activation after the last layer (it produces logits). Each Linear gets the init that
    matches the activation: He for relu, Xavier for sigmoid and tanh."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: activation must be one of {tuple(ACTIVATIONS)}, got "
                         f"{activation!r}")
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"mlp: need at least an input and an output size, got {sizes}")
    act, init = ACTIVATIONS[activation]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(n_in, n_out, bias=bias, init=init, dtype=dtype, device=device))
        if i < len(sizes) - 2:
            layers.append(act())
    return Sequential(*layers)
