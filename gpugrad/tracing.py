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
import linecache
import threading
import weakref

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

    `forward_ops` and `backward_ops` describe the step; `forward` and `backward` replay it, as
    the same entries written out as Python code (`code`), where everything that cannot change
    between steps (where an input comes from, where a gradient goes) is resolved once, here:
    one line per op call, over local variables."""

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
        """The replay's form: the plan written out as two straight-line Python functions (kept
        in `self.code`), one call per op, where every input's place and every gradient's
        destination is a local variable fixed at record time. Forward: the parameters' arrays
        p0.., the step's inputs i0.. (in `input_names` order), constants c0.., one o<k> per op's
        output, deleted after its last reader ran (what backward needs, the op that saved it
        holds), so a step needs no more memory than the eager one. Backward: u<k>, the pending
        upstream gradient of backward entry k; l<j>, leaf j's gradient, summed in run_backward's
        order where several ops feed it."""
        self.input_names = tuple(input_names)
        names = {(PARAM, j): f"p{j}" for j in range(n_params)}
        names.update({(INPUT, name): f"i{i}" for i, name in enumerate(input_names)})
        env, lines = {}, []
        loss = f"o{self.loss_index}"
        readers = []  # per op: the names it reads
        for k, (fn, sources, _) in enumerate(self.forward_ops):
            args = []
            for kind, i in sources:
                if kind is CONST:
                    args.append(f"c{len(env)}")  # env holds only constants so far
                    env[args[-1]] = i
                else:
                    args.append(f"o{i}" if kind is OP else names[kind, i])
            readers.append(args)
        last = {}
        for k, args in enumerate(readers):
            for a in args:
                last[a] = k
        for k, ((fn, _, rebind), args) in enumerate(zip(self.forward_ops, readers)):
            for key, name in rebind:  # the step's own arrays in the op's parameters (labels)
                env[f"d{k}"] = fn.__dict__
                lines.append(f"d{k}[{key!r}] = i{input_names.index(name)}")
            env[f"f{k}"] = fn.replay_forward if fn.fixup else fn.forward
            lines.append(f"o{k} = f{k}({', '.join(args)})")
            gone = sorted(a for a in set(args) if a[0] == "o" and a != loss and last[a] == k)
            if gone:
                lines.append(f"del {', '.join(gone)}")
        head = []
        if n_params:
            head.append(f"{''.join(f'p{j}, ' for j in range(n_params))}= params")
        if input_names:
            head.append(f"{''.join(f'i{i}, ' for i in range(len(input_names)))}= inputs")
        forward = _function("forward(params, inputs)", head + lines + [f"return {loss}"])

        n = len(self.backward_ops)
        # per backward entry: (position in its gradients, the variable that gradient goes to)
        routes = [[(j, f"u{i}" if kind == "fn" else f"l{i}") for j, (kind, i) in
                   ((j, t) for j, t in enumerate(targets) if t is not None)]
                  for _, targets in self.backward_ops]
        writers = {}
        for _, name in (r for entry in routes for r in entry):
            writers[name] = writers.get(name, 0) + 1
        pending = [f"u{k}" for k in range(1, n)] + [f"l{j}" for j in range(len(self.leaves))]
        lines = [f"{' = '.join(pending)} = None"] if pending else []
        lines.append("u0 = seed")
        for k, ((fn, _), entry) in enumerate(zip(self.backward_ops, routes)):
            env[f"b{k}"] = fn.backward
            lines += [f"if u{k} is not None:", f"    g = b{k}(u{k}); u{k} = None"]
            for j, name in entry:
                if writers[name] == 1:  # its only source: None stays None
                    lines.append(f"    {name} = g[{j}]")
                else:  # summed, out of place (a gradient may be shared), as run_backward does
                    lines += [f"    if g[{j}] is not None:",
                              f"        {name} = g[{j}] if {name} is None else {name} + g[{j}]"]
        lines.append(f"return [{', '.join(f'l{j}' for j in range(len(self.leaves)))}]")
        backward = _function("backward(seed)", lines)
        self.code = forward + "\n" + backward
        # tracebacks through a replay show the plan's lines, for as long as the plan lives
        filename = f"<gpugrad plan {id(self):#x}>"
        linecache.cache[filename] = (len(self.code), None, self.code.splitlines(True), filename)
        weakref.finalize(self, linecache.cache.pop, filename, None)
        exec(compile(self.code, filename, "exec"), env)
        # taken out of their own globals, so that no reference cycle keeps a plan's ops alive
        self.forward, self.backward = env.pop("forward"), env.pop("backward")
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

    def release(self):
        """Drop what the ops' forward stored for backward (the next replayed forward stores it
        again), so a plan holds no step's values between steps."""
        for d, settings in self._settings:
            d.clear()
            d.update(settings)


def _function(signature, lines):
    """The source of a function with that signature and body."""
    return f"def {signature}:\n" + "".join(f"    {line}\n" for line in lines)


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
