"""gg.Executor: the planned fast path for a Sequential of Linear layers and activations.

The eager path builds a graph of Function objects on every step. For the common case of stacked
linear layers the graph is always the same, so the Executor reads the model once and builds a plan:
one entry per Linear layer (its weight, bias and the activation that follows). A step is then

    copy the batch in -> forward through the plan, each layer writing into its own preallocated
    activation buffer (the stored outputs backward needs) -> fused loss + gradient (written over
    the logits) -> backward through the plan:  dW = a_prev^T g,  db = sum_rows g,
    g <- (g W^T) * act'(stored output)  -> optimizer update, in place.

Buffers live on the model's device, are allocated once per batch size and reused by every step.
The math is the eager ops' math (same formulas, same fused kernels via the backend), so the
Executor and the eager path leave the same parameters after the same steps, to float32 rounding.
"""
import numpy as np

from .errors import DeviceError, ShapeError
from .kernels import check_labels
from .tensor import Tensor

ACTIVATIONS = ("relu", "sigmoid", "tanh", None)
LOSSES = ("cross_entropy", "mse")


class _Layer:
    """One Linear layer of the plan and the activation applied to its output."""

    def __init__(self, linear, act):
        self.linear, self.act = linear, act
        self.in_features, self.out_features = linear.weight.shape


class _Buffers:
    """Everything one batch size needs: per-layer outputs, per-layer input gradients, scratch."""

    def __init__(self, xp, n, layers, dtype, labels_dtype):
        self.x = xp.empty((n, layers[0].in_features), dtype)
        self.out = [xp.empty((n, layer.out_features), dtype) for layer in layers]
        # gradient w.r.t. each hidden layer's output (the last layer's is written over its logits)
        self.grad = [xp.empty((n, layer.out_features), dtype) for layer in layers[:-1]]
        self.scratch = [xp.empty((n, layer.out_features), dtype) for layer in layers[:-1]]
        self.mask = [xp.empty((n, layer.out_features), bool) for layer in layers[:-1]]
        self.labels = xp.empty(n, labels_dtype)


class Executor:
    """Train or run a Sequential of Linear layers + activations without building a graph.

    model: gg.nn.Sequential of Linear, ReLU, Sigmoid and Tanh layers, ending in a Linear layer.
    loss: "cross_entropy" (integer labels, mean over the batch) or "mse" (targets shaped like the
    output, mean over all elements). optimizer: a gg.optim optimizer over the model's parameters
    (or None: step() then only computes gradients into each parameter's .grad).
    """

    def __init__(self, model, loss="cross_entropy", optimizer=None):
        from . import nn
        if loss not in LOSSES:
            raise ValueError(f"Executor: loss must be one of {LOSSES}, got {loss!r}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.layers = _plan(model, nn)
        params = [p for layer in self.layers for p in _params(layer.linear)]
        self.bk = params[0]._bk
        self.dtype = params[0].dtype
        for p in params:
            if p._bk is not self.bk or p.dtype != self.dtype:
                raise DeviceError(f"Executor: all parameters must share one device and dtype; "
                                  f"found {p.device}/{p.dtype} and {self.bk.name}/{self.dtype}")
        xp = self.bk.xp
        # parameter gradients do not depend on the batch size: one set, wrapped once as Tensors
        self._grads = {id(p): Tensor._make(xp.empty(p.shape, p.dtype), self.bk) for p in params}
        self._params = params
        self._buffers = {}

    # -- public API --------------------------------------------------------------------------
    def step(self, x, y):
        """Forward, backward and optimizer update on one batch; returns the loss as a float."""
        n = self._check_x(x)
        buf = self._buffers_for(n)
        self._load(buf, x, y)  # validates y before anything changes
        logits = self._forward(buf)
        loss = self._loss_and_gradient(buf, logits, n)
        self._backward(buf)
        for p in self._params:
            p.grad = self._grads[id(p)]
        if self.optimizer is not None:
            self.optimizer.step()
        return float(loss)

    def predict(self, x):
        """Forward only; returns the output (logits) as a new Tensor."""
        n = self._check_x(x)
        buf = self._buffers_for(n)
        self._copy_in(buf.x, x)
        return Tensor._make(self._forward(buf).copy(), self.bk)

    # -- the plan's pieces -------------------------------------------------------------------
    def _check_x(self, x):
        shape = x.shape if hasattr(x, "shape") else np.shape(x)
        expected = self.layers[0].in_features
        if len(shape) != 2 or shape[1] != expected:
            raise ShapeError(f"Executor: input must have shape (N, {expected}) for a first layer "
                             f"with {expected} input features; got {tuple(shape)}")
        if isinstance(x, Tensor) and x._bk is not self.bk:
            raise DeviceError(f"Executor: input is on '{x.device}', the model on "
                              f"'{self.bk.name}'")
        return shape[0]

    def _buffers_for(self, n):
        buf = self._buffers.get(n)
        if buf is None:
            buf = self._buffers[n] = _Buffers(self.bk.xp, n, self.layers, self.dtype, np.int64)
        return buf

    def _copy_in(self, dst, src):
        src = src.data if isinstance(src, Tensor) else src
        dst[...] = src if self.bk.is_array(src) else self.bk.asarray(np.asarray(src))

    def _load(self, buf, x, y):
        n = buf.x.shape[0]
        if self.loss == "cross_entropy":
            labels = y.data if isinstance(y, Tensor) else y
            host = self.bk.to_numpy(labels) if self.bk.is_array(labels) else np.asarray(labels)
            if host.dtype.kind not in "iu":
                raise TypeError(f"Executor: labels must be integers, got dtype {host.dtype}")
            if host.shape != (n,):
                raise ShapeError(f"Executor: labels have shape {host.shape}, expected ({n},)")
            check_labels(host, self.layers[-1].out_features, op="Executor")
            self._copy_in(buf.labels, labels)
        else:
            target = y.data if isinstance(y, Tensor) else y
            expected = (n, self.layers[-1].out_features)
            if tuple(np.shape(target)) != expected:
                raise ShapeError(f"Executor: mse targets have shape {tuple(np.shape(target))}, "
                                 f"expected {expected}")
            self._target = target if self.bk.is_array(target) else \
                self.bk.asarray(np.asarray(target, dtype=self.dtype))
        self._copy_in(buf.x, x)

    def _forward(self, buf):
        xp, a = self.bk.xp, buf.x
        for i, layer in enumerate(self.layers):
            z = buf.out[i]
            xp.matmul(a, layer.linear.weight.data, out=z)
            if layer.linear.bias is not None:
                z += layer.linear.bias.data
            if layer.act == "relu":
                xp.maximum(z, 0, out=z)
            elif layer.act == "sigmoid":
                self.bk.sigmoid_forward(z, out=z)
            elif layer.act == "tanh":
                xp.tanh(z, out=z)
            a = z
        return a

    def _loss_and_gradient(self, buf, out, n):
        """The loss, with its gradient w.r.t. the last layer's output written over `out`."""
        if self.loss == "cross_entropy":
            rows, _ = self.bk.softmax_cross_entropy(out, buf.labels, grad_scale=1.0 / n,
                                                    inplace=True, check=False)
            return self.bk.reduce_loss(rows, "mean")
        xp = self.bk.xp
        out -= self._target
        loss = xp.vdot(out, out) / out.size
        out *= 2.0 / out.size  # d mean((o - t)^2) / do = 2 (o - t) / size
        return loss

    def _backward(self, buf):
        xp = self.bk.xp
        g = buf.out[-1]  # gradient w.r.t. the last layer's pre-activation output
        for i in range(len(self.layers) - 1, -1, -1):
            linear = self.layers[i].linear
            a_prev = buf.x if i == 0 else buf.out[i - 1]
            xp.matmul(a_prev.T, g, out=self._grads[id(linear.weight)].data)  # dW = a^T g
            if linear.bias is not None:
                g.sum(axis=0, out=self._grads[id(linear.bias)].data)  # db = sum over rows
            if i == 0:
                break  # the input needs no gradient
            ga = buf.grad[i - 1]
            xp.matmul(g, linear.weight.data.T, out=ga)  # upstream for the layer below
            self._activation_backward(self.layers[i - 1].act, buf, i - 1)
            g = ga

    def _activation_backward(self, act, buf, i):
        """buf.grad[i] *= act'(stored output buf.out[i]), in place."""
        xp, y, g = self.bk.xp, buf.out[i], buf.grad[i]
        if act == "relu":
            xp.greater(y, 0, out=buf.mask[i])
            xp.multiply(g, buf.mask[i], out=g)
        elif act == "sigmoid":
            self.bk.sigmoid_backward(y, g, out=g)
        elif act == "tanh":
            t = buf.scratch[i]
            xp.multiply(y, y, out=t)
            xp.subtract(1, t, out=t)
            g *= t


def _params(linear):
    return [linear.weight] + ([linear.bias] if linear.bias is not None else [])


def _plan(model, nn):
    """Read a Sequential into plan entries; reject anything the executor cannot run."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"Executor: model must be a gg.nn.Sequential, got "
                        f"{type(model).__name__}")
    kinds = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
    layers = []
    for module in model:
        if isinstance(module, nn.Linear):
            if layers and layers[-1].out_features != module.weight.shape[0]:
                raise ShapeError(f"Executor: layer sizes do not chain: "
                                 f"{layers[-1].out_features} outputs feed "
                                 f"{module.weight.shape[0]} inputs")
            layers.append(_Layer(module, None))
        elif type(module) in kinds:
            if not layers or layers[-1].act is not None:
                raise ValueError(f"Executor: {type(module).__name__} must follow a Linear layer")
            layers[-1].act = kinds[type(module)]
        else:
            raise TypeError(f"Executor: unsupported layer {type(module).__name__}; the plan "
                            f"handles Linear, ReLU, Sigmoid and Tanh")
    if not layers:
        raise ValueError("Executor: the model has no Linear layer")
    if layers[-1].act is not None:
        raise ValueError("Executor: the model must end with a Linear layer (the loss takes "
                         "raw outputs/logits)")
    return layers
