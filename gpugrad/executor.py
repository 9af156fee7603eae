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

cuda_graph=True: on a device with graphs (CUDA) the whole step is captured once per batch size
and replayed (executor_graph.py). On the CPU it is a no-op (there is no launch overhead to save),
so scripts can pass it unconditionally.
"""
import numpy as np

from .errors import DeviceError, ShapeError
from .executor_graph import StepGraphs
from .kernels import check_labels
from .tensor import Tensor, _bump

ACTIVATIONS = ("relu", "sigmoid", "tanh", None)
LOSSES = ("cross_entropy", "mse")


class _Layer:
    """One Linear layer of the plan and the activation applied to its output."""

    def __init__(self, linear, act):
        self.linear, self.act = linear, act
        # the parameter Tensors, read once: Module attribute lookup goes through __getattr__,
        # which would cost ~30 us a step at batch 64 (their .data is read afresh every step)
        self.weight, self.bias = linear.weight, linear.bias
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
        self.rows = xp.empty(n, dtype)  # per-row losses
        self.loss = xp.empty((), dtype)
        # this step's input and labels: the buffers above, or the caller's arrays themselves
        # when they can be read in place (no copy on the uncaptured path)
        self.input, self.targets = self.x, self.labels


class Executor:
    """Train or run a Sequential of Linear layers + activations without building a graph.

    model: gg.nn.Sequential of Linear, ReLU, Sigmoid and Tanh layers, ending in a Linear layer.
    loss: "cross_entropy" (integer labels, mean over the batch) or "mse" (targets shaped like the
    output, mean over all elements). optimizer: a gg.optim optimizer over the model's parameters
    (or None: step() then only computes gradients into each parameter's .grad).
    cuda_graph: capture each batch size's step into a CUDA graph after two uncaptured steps and
    replay it (cross_entropy loss; the optimizer, if any, over exactly the model's parameters).
    A no-op on the CPU.
    """

    def __init__(self, model, loss="cross_entropy", optimizer=None, cuda_graph=False):
        from . import nn
        if loss not in LOSSES:
            raise ValueError(f"Executor: loss must be one of {LOSSES}, got {loss!r}")
        from .optim import Optimizer
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"Executor: optimizer must be a gg.optim optimizer or None, got "
                            f"{type(optimizer).__name__}")
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.layers = _plan(model, nn)
        params = [p for layer in self.layers for p in _params(layer)]
        self.bk = params[0]._bk
        self.dtype = params[0].dtype
        for p in params:
            if p._bk is not self.bk or p.dtype != self.dtype:
                raise DeviceError(f"Executor: all parameters must share one device and dtype; "
                                  f"found {p.device}/{p.dtype} and {self.bk.name}/{self.dtype}")
        xp = self.bk.xp
        # parameter gradients do not depend on the batch size: one set, wrapped once as Tensors
        self._grads = {id(p): Tensor._make(xp.empty(p.shape, p.dtype), self.bk) for p in params}
        self._grad_of = [(p, self._grads[id(p)]) for p in params]
        for layer in self.layers:  # where backward writes each layer's dW and db
            layer.dw = self._grads[id(layer.weight)].data
            layer.db = None if layer.bias is None else self._grads[id(layer.bias)].data
        self._params = params
        self._buffers = {}
        self._graphs = None
        self._opt_grads = None  # (optimizer, its parameters' gradient arrays): _optimizer_step
        if cuda_graph:
            _check_graphable(loss, optimizer, params)
            if self.bk.graphs:
                ok, reason = self.bk.graph_status()
                if not ok:
                    raise DeviceError(f"Executor: cuda_graph=True, but CUDA-graph capture does "
                                      f"not work on this device: {reason}")
                self._graphs = StepGraphs(self)

    # -- public API --------------------------------------------------------------------------
    def step(self, x, y):
        """Forward, backward and optimizer update on one batch; returns the loss as a float."""
        n = self._check_x(x)
        if n == 0:
            raise ShapeError(f"Executor.step: the batch is empty (input of shape {tuple(x.shape)});"
                             f" the mean loss over no samples is undefined")
        self._check_device()
        buf = self._buffers_for(n)
        try:
            self._load(buf, x, y)  # validates y before anything changes
            if self._graphs is not None:
                loss = self._graphs.step(buf, n)
                if self.optimizer is not None:  # the replayed update wrote them in place
                    for p in self.optimizer.params:
                        _bump(p)
            else:
                loss = self._loss_and_gradient(buf, self._forward(buf), n)
                self._backward(buf)
            for p, grad in self._grad_of:
                p.grad = grad
            if self.optimizer is not None and self._graphs is None:
                self._optimizer_step()
            return float(loss)
        finally:
            buf.input, buf.targets = buf.x, buf.labels  # keep no reference to the caller's data

    def predict(self, x):
        """Forward only; returns the output (logits) as a new Tensor."""
        n = self._check_x(x)
        buf = self._buffers_for(n)
        buf.input = self._stage(buf.x, x)
        try:
            return Tensor._make(self._forward(buf).copy(), self.bk)
        finally:
            buf.input = buf.x

    # -- the plan's pieces -------------------------------------------------------------------
    def _optimizer_step(self):
        """optimizer.step(), minus its per-parameter checks when the optimizer holds exactly the
        model's parameters (the gradients are this executor's own arrays): ~20 us a step."""
        opt = self.optimizer
        if self._opt_grads is None or self._opt_grads[0] is not opt:
            own = {id(p) for p in self._params} == {id(p) for p in opt.params}
            self._opt_grads = (opt, [self._grads[id(p)].data for p in opt.params] if own
                               else None)
        if self._opt_grads[1] is None:
            opt.step()
        else:
            opt._step_arrays(self._opt_grads[1])

    def _check_device(self):
        """The plan's buffers live on one device: a model moved since needs a new Executor."""
        moved = next((p for p in self._params if p._bk is not self.bk), None)
        if moved is not None:
            raise DeviceError(f"Executor: the model's parameters moved to '{moved.device}' after "
                              f"the plan was built on '{self.bk.name}'; create a new Executor")

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

    def _stage(self, dst, src):
        """The array the step reads `src` from: `src` itself when it is a contiguous array of the
        buffer's dtype on this device (and no graph needs a fixed address), else `dst` after
        copying `src` into it (host data: one upload, no temporary device array)."""
        src = src.data if isinstance(src, Tensor) else src
        if not self.bk.is_array(src):
            self.bk.upload(dst, np.asarray(src))
            return dst
        if self._graphs is None and src.dtype == dst.dtype and src.flags.c_contiguous:
            return src
        dst[...] = src
        return dst

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
            buf.targets = self._stage(buf.labels, host if not self.bk.is_array(labels) else labels)
        else:
            target = y.data if isinstance(y, Tensor) else y
            expected = (n, self.layers[-1].out_features)
            if tuple(np.shape(target)) != expected:
                raise ShapeError(f"Executor: mse targets have shape {tuple(np.shape(target))}, "
                                 f"expected {expected}")
            self._target = target if self.bk.is_array(target) else \
                self.bk.asarray(np.asarray(target, dtype=self.dtype))
        buf.input = self._stage(buf.x, x)

    def _forward(self, buf):
        xp, a = self.bk.xp, buf.input
        for i, layer in enumerate(self.layers):
            z = buf.out[i]
            self.bk.matmul(a, layer.weight.data, out=z)
            if layer.bias is not None:
                z += layer.bias.data
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
            # labels were checked on the host (_load): no device-side check, no sync
            self.bk.softmax_cross_entropy(out, buf.targets, grad_scale=1.0 / n, inplace=True,
                                          check=False, loss_out=buf.rows)
            return self.bk.reduce_loss(buf.rows, "mean", out=buf.loss)
        xp = self.bk.xp
        out -= self._target
        loss = xp.vdot(out, out) / out.size
        out *= 2.0 / out.size  # d mean((o - t)^2) / do = 2 (o - t) / size
        return loss

    def _backward(self, buf):
        bk = self.bk
        g = buf.out[-1]  # gradient w.r.t. the last layer's pre-activation output
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            a_prev = buf.input if i == 0 else buf.out[i - 1]
            bk.matmul(a_prev.T, g, out=layer.dw)  # dW = a^T g
            if layer.db is not None:
                bk.sum_rows(g, out=layer.db)  # db = sum over rows
            if i == 0:
                break  # the input needs no gradient
            ga = buf.grad[i - 1]
            bk.matmul(g, layer.weight.data.T, out=ga)  # upstream for the layer below
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


def _check_graphable(loss, optimizer, params):
    """What cuda_graph=True supports (checked on every device, so a script fails the same way
    on the CPU as on the GPU)."""
    if loss != "cross_entropy":
        raise ValueError(f"Executor: cuda_graph=True supports loss='cross_entropy' (the fused "
                         f"loss kernel), got {loss!r}")
    if optimizer is not None and {id(p) for p in optimizer.params} != {id(p) for p in params}:
        raise ValueError("Executor: cuda_graph=True needs an optimizer over exactly the model's "
                         "parameters (the captured update covers those)")


def _params(layer):
    return [layer.weight] + ([layer.bias] if layer.bias is not None else [])


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
