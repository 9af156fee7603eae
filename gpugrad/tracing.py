"""Record what the eager code does for one training step, as a flat plan over arrays; replay it.

Recording runs the model's own forward and the loss through the ordinary ops with a tracer on
(Function.apply calls it for every op): each op's Function object, where each of its inputs came
from (the step's x or y, a parameter, an earlier op's output, or a constant) and which of its
parameters are the step's own arrays (cross-entropy's labels). The backward part of the plan is
read off the recorded graph the way run_backward walks it: reverse creation order, each op's
gradients routed to the ops that made its inputs or summed into a leaf.

Replaying calls the same Function objects' forward and backward on arrays: no Tensor, no graph
links, no per-op bookkeeping beyond the plan. Each op's math exists once, in gpugrad/ops; the
plan only calls it. What cannot be replayed (Python control flow on data, host reads inside the
forward, values computed outside the ops) shows up as two recordings that differ; the Executor
records twice and compares before it trusts a plan (as tinygrad's TinyJit does).
"""
import threading
from operator import itemgetter

import numpy as np

from . import tensor as _tensor
from .tensor import Tensor, _topological_order

INPUT, PARAM, OP, CONST = "input", "param", "op", "const"
# what a recorded Function keeps only for the eager backward; a plan drops it so the recording's
# Tensors (and the batch it ran on) are not kept alive
_EAGER_ONLY = ("next", "inputs", "clock", "out_version", "anomaly_inputs", "anomaly_site")


class ReplayError(RuntimeError):
    """A step the Executor cannot record once and replay."""


class Recorder:
    """Collects every op applied in this thread while active (a context manager)."""

    def __init__(self, inputs, params):
        self.thread = threading.get_ident()
        self.is_array = params[0]._bk.is_array
        self.inputs = {id(t): name for name, t in inputs.items()}
        self.input_arrays = {id(t.data): name for name, t in inputs.items()}
        self.params = {id(p): j for j, p in enumerate(params)}
        self.made = {}     # id(output Tensor) -> op index
        self.outputs = []  # the outputs, kept alive so their ids stay unique while recording
        self.ops = []      # [(fn, sources, rebind, params)]

    def __enter__(self):
        if _tensor._tracer is not None:
            raise ReplayError("Executor: a step is already being recorded (nested Executors)")
        _tensor._tracer = self
        return self

    def __exit__(self, *exc):
        _tensor._tracer = None

    def __call__(self, fn, args, arrays, params, out):
        if threading.get_ident() != self.thread:
            return
        sources = []
        for a, arr in zip(args, arrays):
            k = self.made.get(id(a)) if isinstance(a, Tensor) else None
            if k is not None:
                sources.append((OP, k))
            elif id(a) in self.params:
                sources.append((PARAM, self.params[id(a)]))
            elif id(a) in self.inputs:
                sources.append((INPUT, self.inputs[id(a)]))
            else:
                sources.append((CONST, arr))
        rebind = tuple((key, self.input_arrays[id(v)]) for key, v in params.items()
                       if id(v) in self.input_arrays)
        self.made[id(out)] = len(self.ops)
        self.outputs.append(out)
        self.ops.append((fn, tuple(sources), rebind, dict(params)))


class Plan:
    """One recorded step: forward entries, the backward walk, and the loss's position.

    `forward_ops` and `backward_ops` describe the step; `forward` and `backward` replay it from
    a compiled form of the same entries, where every lookup that cannot change between steps
    (where an input comes from, where a gradient goes) is resolved once, here: the replay is a
    register list indexed by numbers fixed at record time, and one call per op."""

    def __init__(self, recorder, loss, leaves):
        self.forward_ops = [(fn, sources, rebind) for fn, sources, rebind, _ in recorder.ops]
        self.signature = [_entry_signature(op) for op in recorder.ops]
        k = recorder.made.get(id(loss))
        if k is None:
            raise ReplayError("Executor: the loss was not computed by gpugrad ops from the "
                              "model's output in this step")
        self.loss_index = k
        self.backward_ops, self.leaves = self._walk(recorder, loss, leaves)
        for fn, _, _ in self.forward_ops:
            for name in _EAGER_ONLY:
                fn.__dict__.pop(name, None)
        self._compile(recorder, len(recorder.params), list(recorder.inputs.values()))

    @staticmethod
    def _walk(recorder, loss, leaves):
        """[(fn, targets)] in run_backward's order; a target is ("fn", position) or ("leaf",
        index into leaves) or None."""
        if not loss._rg:
            raise ReplayError("Executor: the loss does not depend on any parameter that "
                              "requires grad")
        order = _topological_order([loss._ctx])
        recorded = {id(fn) for fn, _, _, _ in recorder.ops}
        position = {id(fn): i for i, fn in enumerate(order)}
        leaf_index = {id(p): j for j, p in enumerate(leaves)}
        plan = []
        for fn in order:
            if id(fn) not in recorded:
                raise ReplayError(f"Executor: the loss depends on '{fn.name}', computed before "
                                  f"the step (compute everything from the step's inputs)")
            targets = []
            for edge in fn.next:
                if edge is None:
                    targets.append(None)
                elif isinstance(edge, Tensor):
                    if id(edge) not in leaf_index:
                        leaf_index[id(edge)] = len(leaves)
                        leaves = leaves + [edge]
                    targets.append(("leaf", leaf_index[id(edge)]))
                else:
                    targets.append(("fn", position[id(edge)]))
            plan.append((fn, tuple(targets)))
        return plan, leaves

    def _compile(self, recorder, n_params, input_names):
        """The replay's form. Forward registers: the parameters' arrays, the step's inputs (in
        `input_names` order), the constants, then one slot per op's output. Backward registers:
        one pending upstream gradient per backward entry, then one gradient per leaf."""
        self.input_names = tuple(input_names)
        slot = {(PARAM, j): j for j in range(n_params)}
        slot.update({(INPUT, name): n_params + i for i, name in enumerate(input_names)})
        consts, refs = [], []
        for fn, sources, _ in self.forward_ops:
            for kind, i in sources:
                if kind is CONST:
                    refs.append(n_params + len(input_names) + len(consts))
                    consts.append(i)
        first_out = n_params + len(input_names) + len(consts)
        refs = iter(refs)
        self._consts = consts
        self._outputs = [None] * len(self.forward_ops)
        self._loss_slot = first_out + self.loss_index
        self._rebind = [(fn.__dict__, key, input_names.index(name))
                        for fn, _, rebind in self.forward_ops for key, name in rebind]
        program, last_read = [], {}
        for k, (fn, sources, _) in enumerate(self.forward_ops):
            where = [next(refs) if kind is CONST else first_out + i if kind is OP else
                     slot[kind, i] for kind, i in sources]
            for i in where:
                last_read[i] = k
            # itemgetter of one index returns the item itself, of several a tuple
            get = itemgetter(*where) if len(where) > 1 else _one(where[0])
            program.append((fn.replay_forward, get, first_out + k))
        # an op's output leaves the registers after its last reader ran (what backward needs,
        # the op that saved it holds), so a step needs no more memory than the eager one
        done = [[] for _ in program]
        for i, k in last_read.items():
            if i >= first_out and i != self._loss_slot:
                done[k].append(i)
        self._forward = [entry + (tuple(d),) for entry, d in zip(program, done)]
        n = len(self.backward_ops)
        self._pending = [None] * (n + len(self.leaves))
        self._backward = [(fn.backward, pos, tuple(
            (j, i if kind == "fn" else n + i) for j, (kind, i) in
            ((j, t) for j, t in enumerate(targets) if t is not None)))
            for pos, (fn, targets) in enumerate(self.backward_ops)]
        self._first_leaf = n
        # after a step's backward each op keeps only its settings: what apply gave it, less the
        # step's own arrays (rebound before every forward), and what is not an array; the
        # arrays its forward stored for backward are dropped, as eager backward releases a graph
        is_array = recorder.is_array
        for fn, _, _ in self.forward_ops:
            fn.replayed = True
        self._settings = []
        for fn, _, rebind, params in recorder.ops:
            step_own = {key for key, _ in rebind}
            self._settings.append((fn.__dict__, {
                k: v for k, v in fn.__dict__.items()
                if k not in step_own and (k in params or not is_array(v))}))

    def forward(self, params, inputs):
        """Run the forward entries on the parameters' arrays and the step's inputs (arrays in
        `input_names` order); returns the loss array."""
        for d, key, i in self._rebind:
            d[key] = inputs[i]
        r = params + list(inputs) + self._consts + self._outputs
        for replay, get, out, done in self._forward:
            r[out] = replay(get(r))
            for i in done:
                r[i] = None
        return r[self._loss_slot]

    def backward(self, seed):
        """The gradient of every leaf (None where none arrived), as run_backward sums them."""
        buf = self._pending.copy()
        buf[0] = seed
        for backward, pos, routes in self._backward:
            upstream = buf[pos]
            if upstream is None:
                continue
            buf[pos] = None
            grads = backward(upstream)
            for j, dst in routes:
                g = grads[j]
                if g is not None:
                    held = buf[dst]
                    buf[dst] = g if held is None else held + g
        return buf[self._first_leaf:]

    def release(self):
        """Drop what the ops' forward stored for backward (the next replayed forward stores it
        again), so a plan holds no step's values between steps."""
        for d, settings in self._settings:
            d.clear()
            d.update(settings)


def _one(i):
    """A getter like itemgetter(i, j, ...) for one index: a 1-tuple."""
    return lambda r: (r[i],)


def compare(first, second):
    """Raise ReplayError naming the first op where two recordings of a step differ."""
    if len(first.signature) != len(second.signature):
        raise ReplayError(f"Executor: two recordings of the step ran {len(first.signature)} and "
                          f"{len(second.signature)} ops: the forward depends on data (Python "
                          f"control flow on values, or host reads such as .item()), which a "
                          f"recorded step cannot replay")
    for k, (a, b) in enumerate(zip(first.signature, second.signature)):
        if a != b:
            what = _difference(a, b)
            raise ReplayError(f"Executor: op {k} ('{a[0]}') differs between two recordings of the "
                              f"step ({what}): values computed outside gpugrad's ops, or from "
                              f"host reads, are baked into a recording; compute them with gg "
                              f"ops from the step's inputs")


def _difference(a, b):
    if a[0] != b[0]:
        return f"'{a[0]}' then '{b[0]}'"
    if a[1] != b[1]:
        return "its inputs come from different places or a constant input changed"
    return "a setting or a constant parameter changed"


def _entry_signature(op):
    fn, sources, rebind, params = op
    bound = {key for key, _ in rebind}
    return (fn.name,
            tuple((kind, _value_key(i) if kind == CONST else i) for kind, i in sources),
            tuple(sorted((key, "input" if key in bound else _value_key(v))
                         for key, v in params.items())))


def _value_key(v):
    """A comparable stand-in for a constant: arrays by dtype, shape and bytes."""
    if hasattr(v, "dtype") and hasattr(v, "shape"):
        host = v.get() if hasattr(v, "get") else np.asarray(v)
        return ("array", str(host.dtype), host.shape, host.tobytes())
    if isinstance(v, tuple):
        return tuple(_value_key(x) for x in v)
    if isinstance(v, slice):
        return ("slice", v.start, v.stop, v.step)
    return (type(v).__name__, repr(v))
