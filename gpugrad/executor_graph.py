"""The Executor's CUDA-graph mode: a trusted plan's whole step replayed with one launch.

At small batch sizes a GPU step is launch-bound: forward, loss, backward and the optimizer
update are dozens of kernels, each launched from Python. Once a plan is trusted (two recordings
agreed), its step (the plan's forward and backward replay, then the optimizer's `_update` per
parameter) is captured once (`Backend.capture`: stream capture on CUDA, in a private memory pool,
with gpugrad's own capturable cuBLAS GEMM) and from then on launched:

    host: check the labels, copy the batch into the graph's input buffers, write the optimizer's
          per-step numbers into a small device array  ->  launch  ->  read the loss.

Why it stays correct:
- Arrays the graph uses keep their addresses: the input buffers, the parameters, the optimizer's
  state, and every array the captured step made (the plan's Function objects and this module
  hold them as long as the graph).
- Numbers that change between steps are never baked in: the optimizer's `_scalars` (lr, which
  schedulers change; Adam's bias corrections) live in the device array `hyper`, rewritten before
  each launch, that `_update` reads as 0-d arrays.
- Anything baked in is checked before every launch (`_signature`): parameter arrays (model.to()
  or `p.data = ...` replace them; load_state_dict writes in place, which the graph sees), the
  optimizer object, its settings (`_config()`) and its state arrays. A change drops every graph.
- Cross-entropy runs without its host-side label check inside the capture (that check reads a
  flag back, a sync); the labels are checked here before the launch instead.
"""
import numpy as np

from .kernels import check_labels
from .ops.loss import CrossEntropy
from .tensor import _bump

WARMUP_STEPS = 2  # steps of a shape run as recordings (eager ops) before its plan is captured


class _Graph:
    def __init__(self, graph, signature, x, y, out, classes):
        self.graph, self.signature, self.x, self.y, self.out = graph, signature, x, y, out
        self.classes = classes  # class counts of the cross-entropy ops reading the labels


class StepGraphs:
    """Per trusted plan: its captured step, and the optimizer's per-step numbers."""

    def __init__(self, executor):
        self.ex = executor
        self.graphs = {}        # id(plan entry) -> _Graph
        self.hyper = None       # device array (params, numbers per param) of _scalars()
        self.hyper_host = None  # its host twin

    def clear(self):
        self.graphs.clear()

    def drop(self, entry):
        self.graphs.pop(id(entry), None)

    def step(self, entry, x, y):
        """One training step of a trusted plan: capture on first use, then launch."""
        ex = self.ex
        self._write_scalars()
        sig = self._signature()
        g = self.graphs.get(id(entry))
        if g is not None and g.signature != sig:
            self.graphs.clear()  # something the graphs baked in has changed: capture again
            g = None
        if g is None:
            g = self.graphs[id(entry)] = self._capture(entry, x, y, sig)
        if g.classes:  # before anything runs: a rejected step changes nothing
            host_y = ex.bk.to_numpy(y)
            for c in g.classes:
                check_labels(host_y, c)
        for dst, src in ((g.x, x), (g.y, y)):
            if ex.bk.is_array(src):
                dst[...] = src
            else:
                ex.bk.upload(dst, src)
        g.graph.launch()
        for p, holder, grad in zip(ex.params, ex._grads, g.out["grads"]):
            if grad is None:
                p.grad = None
            else:
                holder.data, p.grad = grad, holder
        if ex.optimizer is not None:
            for p in ex.optimizer.params:  # the captured update wrote them in place
                _bump(p)
        return float(g.out["loss"])

    def _capture(self, entry, x, y, sig):
        ex, plan = self.ex, entry.trusted
        xp = ex.bk.xp
        xb, yb = xp.empty(x.shape, x.dtype), xp.empty(y.shape, y.dtype)
        classes = []
        for fn, _, rebind in plan.forward_ops:
            if isinstance(fn, CrossEntropy) and any(name == "y" for _, name in rebind):
                fn.check = False  # no flag read inside the capture: checked before launch
                classes.append(fn.logits.shape[1])
        out = {}
        opt = ex.optimizer
        index = {id(p): i for i, p in enumerate(ex.params)}

        def device_step():
            loss = plan.forward([p.data for p in ex.params], (xb, yb))
            grads = [g if g is None or g.dtype == p.dtype else g.astype(p.dtype)
                     for p, g in zip(ex.params, plan.backward(entry.seed))]
            if opt is not None:
                for i, p in enumerate(opt.params):
                    opt._update(opt.state[i], p.data, grads[index[id(p)]], self.hyper[i])
            out["loss"], out["grads"] = loss, grads

        xb[...] = x if ex.bk.is_array(x) else xp.asarray(x)  # capture reads real values
        yb[...] = y if ex.bk.is_array(y) else xp.asarray(y)
        graph = ex.bk.capture(device_step)
        return _Graph(graph, sig, xb, yb, out, classes)

    def _write_scalars(self):
        """Host bookkeeping of this step (Adam's step count) and the upload of its numbers."""
        opt = self.ex.optimizer
        if opt is None:
            return
        rows = [opt._scalars(opt._state(i, p)) for i, p in enumerate(opt.params)]
        shape = (len(rows), len(rows[0]))
        if self.hyper is None or self.hyper.shape != shape:
            # the parameters' dtype: h[k] then rounds exactly as a Python float does in the
            # uncaptured update (NumPy/CuPy cast a Python scalar to the array's dtype)
            self.hyper = self.ex.bk.xp.zeros(shape, self.ex.dtype)
            self.hyper_host = np.zeros(shape, self.ex.dtype)
        self.hyper_host[...] = rows
        self.ex.bk.upload(self.hyper, self.hyper_host)

    def _signature(self):
        ex, opt = self.ex, self.ex.optimizer
        arrays = [p.data for p in ex.params]
        if opt is not None:
            arrays.append(self.hyper)
            for st in opt.state:
                arrays.extend(v for v in st.values() if ex.bk.is_array(v))
        # ids are safe to compare: a captured graph keeps its arrays alive (the plan and the
        # parameters hold them), so no new array can reuse the id of one the graph uses
        config = None if opt is None else (id(opt), opt._config())
        return tuple(id(a) for a in arrays), config
