"""gg.Executor: the fast path for training, a recorded eager step replayed.

The first steps for an input shape run the model's own forward and the loss through the ordinary
ops with a recorder on (gpugrad/tracing.py); the recording becomes a plan of the ops' own forward
and backward calls over arrays. Two recordings must agree before the plan is trusted; later steps
of that shape replay it: no Tensor or graph objects, the same math (there is none here: every
formula is the op's own), the same order of sums, so the parameters after N steps equal the
eager path's (float32 rounding; float64 to 1e-12), tied weights and custom Modules included.

Plans are kept for the `max_plans` most recently used input shapes (default 4; `clear()` drops
them all). A plan is recorded again when the parameters' shapes or dtypes change; on the CPU
replaced parameter arrays (model.to(), p.data = ...) are simply read afresh.

cuda_graph=True: on CUDA the trusted plan's step (forward, backward, optimizer update) is captured
once into a CUDA graph and launched with one call (executor_graph.py); a no-op on the CPU.
"""
from collections import OrderedDict
from operator import is_

import numpy as np

from . import tracing
from .errors import DeviceError, ShapeError
from .executor_graph import StepGraphs
from .tensor import Tensor

LOSSES = ("cross_entropy", "mse")
MAX_PLANS = 4


class _Entry:
    """One input shape's recordings and, once two agree, its trusted plan."""

    def __init__(self):
        self.recorded = None  # the latest recording (a Plan)
        self.trusted = None   # the plan replayed from now on
        self.seed = None      # d loss / d loss, the backward's first upstream gradient
        # whether the plan's gradients are exactly what .grad may take as they are: one per
        # parameter, of its dtype, neither a view nor shared (the plan's code decides this,
        # not the data, so the recording's answer holds for every replay of it)
        self.plain = False


class Executor:
    """Train (or run) any shape-static Module by recording its eager step once and replaying it.

    model: a gg.nn.Module (any forward made of gg ops: Sequential, residual blocks, tied layers),
    or a gg.distributed.DataParallel around one (gradients averaged over the ranks every step).
    loss: "cross_entropy" (integer labels, mean), "mse" (targets shaped like the output, mean),
    or a callable loss(output, target) -> scalar Tensor made of gg ops (L1/L2 penalties too).
    optimizer: a gg.optim optimizer over some or all of the model's parameters, or None (step()
    then leaves each parameter's .grad at this step's gradient). cuda_graph: see the module doc.
    """

    def __init__(self, model, loss="cross_entropy", optimizer=None, cuda_graph=False,
                 max_plans=MAX_PLANS):
        from .nn import Module
        from .optim import Optimizer
        # a gg.distributed.DataParallel: run its model; average the gradients over the ranks
        # after each step's backward, before the optimizer update (the same buckets)
        self.parallel = model if hasattr(model, "reduce_gradients") else None
        if self.parallel is not None:
            model = self.parallel.module
            if cuda_graph:
                raise ValueError("Executor: cuda_graph=True with DataParallel is not supported "
                                 "(the gradient all-reduce would have to be captured too)")
        if not isinstance(model, Module):
            raise TypeError(f"Executor: model must be a gg.nn.Module, got {type(model).__name__}")
        if not (callable(loss) or loss in LOSSES):
            raise ValueError(f"Executor: loss must be one of {LOSSES} or a callable "
                             f"loss(output, target), got {loss!r}")
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"Executor: optimizer must be a gg.optim optimizer or None, got "
                            f"{type(optimizer).__name__}")
        if not isinstance(max_plans, int) or max_plans < 1:
            raise ValueError(f"Executor: max_plans must be a positive int, got {max_plans!r}")
        self.params = list(model.parameters())
        if not self.params:
            raise ValueError("Executor: the model has no parameters")
        self.bk, self.dtype = self.params[0]._bk, self.params[0].dtype
        for p in self.params:
            if p._bk is not self.bk:
                raise DeviceError(f"Executor: all parameters must be on one device; found "
                                  f"'{p.device}' and '{self.bk.name}'")
        self.model, self.loss, self.optimizer, self.max_plans = model, loss, optimizer, max_plans
        self._plans = OrderedDict()
        self._layout = [(p.shape, p.dtype) for p in self.params]  # what the plans assume
        self._seen = [None] * len(self.params)  # the arrays _param_arrays last checked
        # each parameter's .grad is one Tensor per Executor whose array each step replaces
        self._grads = [Tensor._make(None, self.bk) for _ in self.params]
        self._whole = optimizer is not None and [id(p) for p in optimizer.params] == \
            [id(p) for p in self.params]
        self._graphs = None
        if cuda_graph:
            if optimizer is not None and {id(p) for p in optimizer.params} != \
                    {id(p) for p in self.params}:
                raise ValueError("Executor: cuda_graph=True needs an optimizer over exactly the "
                                 "model's parameters (the captured update covers those)")
            if self.bk.graphs:
                ok, reason = self.bk.graph_status()
                if not ok:
                    raise DeviceError(f"Executor: cuda_graph=True, but CUDA-graph capture does "
                                      f"not work on this device: {reason}")
                self._graphs = StepGraphs(self)

    # -- public API --------------------------------------------------------------------------
    def step(self, x, y):
        """Forward, backward and optimizer update on one batch; returns the loss as a float."""
        arrays = self._param_arrays()
        if y is None:
            raise TypeError("Executor.step: y (the labels or targets of the batch) is required, "
                            "got None")
        x, y = self._arrays(x, y)
        if x.shape[0] == 0:
            raise ShapeError(f"Executor.step: the batch is empty (input of shape {x.shape}); "
                             f"the mean loss over no samples is undefined")
        entry = self._entry((x.shape, x.dtype, y.shape, y.dtype))
        plan = entry.trusted
        if plan is None:
            loss, grads = self._record(entry, x, y)
        elif self._graphs is not None:
            return self._graphs.step(entry, x, y)
        else:
            loss = plan.forward(arrays, (x, y))
            self._drop_grads()
            grads = plan.backward(entry.seed)
            plan.release()
        self._update(grads, entry.seed, plan is not None and entry.plain)
        return float(loss)

    def predict(self, x):
        """The model's output for x (forward only, no graph), as a new Tensor."""
        from .tensor import no_grad
        x, _ = self._arrays(x, None)
        with no_grad():
            out = self.model(Tensor._make(x, self.bk))
        return Tensor._make(out.data.copy() if out.data.base is not None else out.data, self.bk)

    def clear(self):
        """Drop every recorded plan (and CUDA graph); the next step records again."""
        self._plans.clear()
        if self._graphs is not None:
            self._graphs.clear()

    # -- recording ---------------------------------------------------------------------------
    def _entry(self, key):
        plans = self._plans
        entry = plans.get(key)
        if entry is None:
            entry = plans[key] = _Entry()
            while len(plans) > self.max_plans:  # least recently used first
                _, dropped = plans.popitem(last=False)
                if self._graphs is not None:
                    self._graphs.drop(dropped)
        else:
            plans.move_to_end(key)
        return entry

    def _record(self, entry, x, y):
        """One step through the eager ops with the recorder on: the loss and the gradients."""
        xt, yt = Tensor._make(x, self.bk), Tensor._make(y, self.bk)
        with tracing.Recorder({"x": xt, "y": yt}, self.params) as rec:  # plan's input order
            loss = self._loss(self.model(xt), yt)
        if not isinstance(loss, Tensor) or loss.size != 1 or loss.dtype.kind != "f":
            raise ShapeError(f"Executor: the loss must be a one-element float Tensor, got "
                             f"{type(loss).__name__} {getattr(loss, 'shape', '')}")
        plan = tracing.Plan(rec, loss, self.params)
        if len(plan.leaves) > len(self.params):
            extra = plan.leaves[len(self.params)]
            raise tracing.ReplayError(f"Executor: the loss depends on a tensor that requires "
                                      f"grad but is not a model parameter (shape {extra.shape}); "
                                      f"register it on the model")
        if entry.recorded is not None:
            tracing.compare(entry.recorded, plan)
            entry.trusted = plan
        entry.recorded = plan
        if entry.seed is None:
            entry.seed = self.bk.xp.ones_like(loss.data)
        grads = plan.backward(entry.seed)
        ids = {id(g) for g in grads} | {id(entry.seed)}
        entry.plain = len(ids) == len(grads) + 1 and all(
            g is not None and g.dtype == dtype and g.base is None
            for g, (_, dtype) in zip(grads, self._layout))
        return loss.data, grads

    def _loss(self, out, target):
        from . import ops
        if callable(self.loss):
            return self.loss(out, target)
        if self.loss == "cross_entropy":
            return ops.cross_entropy(out, target)
        return ops.mse_loss(out, target)

    # -- the step's pieces --------------------------------------------------------------------
    def _drop_grads(self):
        """Free the last step's gradient arrays before this step's backward makes new ones (at
        most one set alive); a failed backward leaves .grad None, as after zero_grad()."""
        for p, holder in zip(self.params, self._grads):
            if p.grad is holder:
                p.grad = None
            holder.data = None

    def _update(self, grads, seed, plain=False):
        """Set each parameter's .grad to this step's gradient, then the optimizer's update.
        `grads` (a list the plan made for this step) is rewritten in place with the arrays the
        parameters receive. plain: the recording showed they need no checks (_Entry.plain)."""
        shared = {id(seed)}
        complete = True
        for i, (p, holder, g, (_, dtype)) in enumerate(zip(self.params, self._grads, grads,
                                                           self._layout)):
            if not plain:
                if g is None:
                    p.grad = None
                    complete = False
                    continue
                if g.dtype != dtype:
                    g = grads[i] = g.astype(dtype)
                elif g.base is not None or id(g) in shared:  # a view or shared: as eager
                    g = grads[i] = g.copy()
                shared.add(id(g))
            holder.data = g
            p.grad = holder
        if self.parallel is not None:  # in place: every rank then holds the average
            self.parallel.reduce_gradients(grads)
        opt = self.optimizer
        if opt is None:
            return
        if self._whole and complete:
            opt._step_arrays(grads)
        else:
            opt.step()

    def _arrays(self, x, y):
        """x (and y) as arrays on the model's device: x in the parameters' float dtype."""
        x = x.data if isinstance(x, Tensor) else x
        if not self.bk.is_array(x):
            x = np.asarray(x)
            if x.ndim < 1:
                raise ShapeError(f"Executor: the input must have a batch axis (N, ...), got "
                                 f"{x.shape}")
            x = self.bk.asarray(x.astype(self.dtype, copy=False))
        elif x.dtype != self.dtype:
            x = x.astype(self.dtype)
        if x.ndim < 1:
            raise ShapeError(f"Executor: the input must have a batch axis (N, ...), got "
                             f"{x.shape}")
        if y is None:
            return x, None
        y = y.data if isinstance(y, Tensor) else y
        if not self.bk.is_array(y):
            host = np.asarray(y)
            y = self.bk.asarray(host if host.dtype.kind in "iub" or self.loss ==
                                "cross_entropy" else host.astype(self.dtype))
        return x, y

    def _param_arrays(self):
        """The parameters' arrays for this step. When one of them is a new array (model.to(),
        p.data = ...): raise if it left the Executor's device, and drop the plans if it changed
        shape or dtype (they are recorded again)."""
        arrays = [p.data for p in self.params]
        if all(map(is_, arrays, self._seen)):  # moving a parameter replaces its array
            return arrays
        changed = False
        for p, (shape, dtype) in zip(self.params, self._layout):
            if p._bk is not self.bk:
                raise DeviceError(f"Executor: the model's parameters moved to '{p.device}' "
                                  f"after the Executor was made on '{self.bk.name}'; create a "
                                  f"new Executor")
            changed = changed or p.data.shape != shape or p.data.dtype != dtype
        if changed:
            self._layout = [(p.shape, p.dtype) for p in self.params]
            self.clear()
        self._seen = arrays  # held, so no new array can take one of their ids
        return arrays
