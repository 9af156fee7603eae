"""Neural-network building blocks: Module, Linear, Sequential, Standardize and the activations.

A Module owns parameters (leaf Tensors that require grad) and sub-Modules, registered simply by
assigning them as attributes, in definition order, and buffers (Tensors it keeps and saves but
does not train, such as Standardize's statistics), registered with `register_buffer`. Everything
else (optimizers, gg.save, the Executor) reaches them through `named_parameters()` and
`state_dict()`, so a model is just a tree of Modules whose leaves are Tensors. Module itself is in
module.py.

save_model / load_model write and read a whole model (architecture, weights, buffers, info) as
one .npz file; the format lives in model_io.py.
"""
import math

import numpy as np

from . import backend as _backend
from .errors import ShapeError
from .module import LoadResult, Module
from .ops import linear, relu, sigmoid, tanh
from .tensor import Tensor, randn, tensor, zeros

__all__ = ["Module", "Linear", "Sequential", "Standardize", "Sigmoid", "ReLU", "Tanh", "mlp",
           "save_model", "load_model", "LoadResult"]


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
        self._setup(in_features, out_features, bias, init, dtype, device, draw=True)

    @classmethod
    def _to_load(cls, in_features, out_features, bias, init, dtype, device):
        """A Linear whose parameters are zeros, to load values into: no draw from the generator
        (load_model leaves gg's random stream as it was)."""
        layer = cls.__new__(cls)
        Module.__init__(layer)
        layer._setup(in_features, out_features, bias, init, dtype, device, draw=False)
        return layer

    def _setup(self, in_features, out_features, bias, init, dtype, device, draw):
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
                raise ValueError(f"Linear: {name} must be a positive int, got {n!r}")
        if init not in self.INITS:
            raise ValueError(f"Linear: init must be one of {self.INITS}, got {init!r}")
        dtype = np.dtype(dtype if dtype is not None else np.float32)
        if dtype.kind != "f":
            raise TypeError(f"Linear: parameters must be floating point, got dtype {dtype}")
        self.in_features, self.out_features, self.init = int(in_features), int(out_features), init
        if draw:
            fan = in_features if init == "he" else in_features + out_features
            w = randn(in_features, out_features, dtype=dtype, device=device)
            w.data *= math.sqrt(2.0 / fan)  # scale in place: no second (in, out) array
        else:
            w = zeros(in_features, out_features, dtype=dtype, device=device)
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
        return linear(x, w, self.bias)  # one op: x @ w + b

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


class Standardize(Module):
    """y = (x - mean) / std per feature, with fixed statistics (e.g. the training set's, from
    Standardize.fit): the model's own input preprocessing, so model(raw_x) is right and a saved
    model carries it. mean and std are buffers: saved and moved with the model, never trained.

    Inputs are cast to the layer's dtype (float32 unless dtype= says otherwise), so raw integer
    pixels or float64 arrays can be passed as they are; gradients flow through to x.
    """

    def __init__(self, mean, std, dtype=None, device=None):
        super().__init__()
        dtype = np.dtype(dtype if dtype is not None else np.float32)
        if dtype.kind != "f":
            raise TypeError(f"Standardize: dtype must be floating point, got {dtype}")
        mean, std = (_host_values(v).astype(dtype) for v in (mean, std))
        if mean.ndim != 1 or std.ndim != 1:
            raise ShapeError(f"Standardize: mean and std must be 1-D (one value per feature), "
                             f"got shapes {mean.shape} and {std.shape}")
        if mean.shape != std.shape:
            raise ShapeError(f"Standardize: {mean.size} means but {std.size} stds")
        if mean.size == 0:
            raise ShapeError("Standardize: need at least one feature")
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ValueError(f"Standardize: mean and std must be finite (as {dtype})")
        if (std <= 0).any():
            raise ValueError(f"Standardize: std must be > 0 (as {dtype}), got "
                             f"{std[std <= 0][0]} for feature {int(np.argmax(std <= 0))}")
        self.register_buffer("mean", tensor(mean, device=device))
        self.register_buffer("std", tensor(std, device=device))

    @classmethod
    def fit(cls, x, floor=0.1, dtype=None, device=None):
        """The layer that standardises `x` (samples in rows) by its own column means and spreads.

        A feature that barely varies (digits' always-blank corner pixels) gets its spread raised
        to `floor` times the average spread, so a rare non-zero value does not become a huge
        input."""
        x = _host_values(x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ShapeError(f"Standardize.fit: need samples in rows, shape (n >= 1, features), "
                             f"got {x.shape}")
        mean, std = x.mean(axis=0), x.std(axis=0)
        if not std.any():
            raise ValueError(f"Standardize.fit: every feature is constant over the "
                             f"{x.shape[0]} samples: there is no spread to scale by")
        return cls(mean, np.maximum(std, floor * std.mean()), dtype=dtype, device=device)

    @property
    def num_features(self):
        return self.mean.shape[0]

    def forward(self, x):
        mean = self.mean
        if not isinstance(x, Tensor):
            x = tensor(x, dtype=mean.dtype, device=mean.device)
        elif x.dtype != mean.dtype:
            x = x.astype(mean.dtype)
        if x.ndim == 0 or x.shape[-1] != self.num_features:
            raise ShapeError(f"Standardize: input has {x.shape[-1] if x.ndim else 'no'} features "
                             f"(shape {x.shape}), expected {self.num_features}")
        return (x - mean) / self.std

    def extra_repr(self):
        return f"num_features={self.num_features}, dtype={self.mean.dtype}"


def _host_values(value):
    """A host NumPy array of `value` (a Tensor, an array or nested lists of numbers)."""
    if isinstance(value, Tensor):
        return value.numpy()
    src = _backend.backend_for_array(value)
    return src.to_numpy(value) if src is not None else np.asarray(value, dtype=np.float64)


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


def save_model(model, path, info=None):
    """Write `model` (its architecture, parameters and buffers) and `info` (a JSON-able dict,
    e.g. the dataset it was trained on) to one .npz file, atomically; load_model reads it back.
    Only the layers of gg.nn can be described: Sequential, Linear, Standardize and the
    activations (a TypeError names any other)."""
    from .model_io import save_model as _save_model
    return _save_model(model, path, info)


def load_model(path, device=None):
    """The Module that save_model (or `gpugrad train`) wrote to `path`, on `device` (default: the
    default device), with `.info` the dict saved with it plus the gpugrad version that wrote it.
    The file's architecture is JSON, read against a fixed list of layer types: no pickle, no
    code from the file runs. A file of weights only (gg.save) raises ValueError."""
    from .model_io import load_model as _load_model
    return _load_model(path, device)
