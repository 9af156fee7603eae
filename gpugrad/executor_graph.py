"""The Executor's CUDA-graph mode: the whole training step replayed with one launch.

At small batch sizes a GPU step is launch-bound: the forward, the fused loss, the backward and the
optimizer update are some 40 kernels, each launched from Python. In graph mode the Executor runs
the step's device work through `_device_step`, which the backend captures once per batch size
(`Backend.capture`: stream capture on CUDA) and then replays:

    host: validate the batch, copy it into the static input buffers, write the optimizer's
          per-step numbers into a small device array  ->  launch the graph  ->  read the loss.

Why it stays correct:
- No allocation in the captured step: every buffer (activations, gradients, per-row losses, the
  loss, optimizer state) exists before capture, and the loss kernels write into them (`loss_out`,
  `out`). The first WARMUP_STEPS steps of a batch size run `_device_step` uncaptured, so kernels
  are compiled and loaded, cuBLAS is initialised and one-time optimizer branches (SGD's first
  momentum step, Adam's moment buffers) are taken outside any capture.
- Numbers that change between steps are never baked into the graph: the optimizer's `_scalars`
  (lr, which schedulers change; Adam's bias corrections, which change every step) live in a
  device array `hyper`, rewritten before each replay, that `_update` reads as 0-d arrays.
- Anything the graph baked in is checked before every replay (`_signature`): the parameter
  arrays (model.to() or `p.data = ...` replace them; load_state_dict writes in place, which the
  graph sees), the optimizer object, its settings (`_config()`: momentum, betas, ...) and its state
  arrays. A change drops every graph; the step after runs uncaptured and capture starts over.
- Labels are range-checked on the host before upload (the kernels run with check=False).
"""

import numpy as np

WARMUP_STEPS = 2  # uncaptured steps per batch size before capture (see above)


class StepGraphs:
    """Per batch size: warm-up count, then (graph, signature, arrays the graph uses)."""

    def __init__(self, executor):
        self.ex = executor
        self.graphs = {}  # n -> (graph, signature, kept arrays)
        self.warm = {}    # n -> uncaptured steps run so far
        self.hyper = None       # device array (params, numbers per param) of _scalars()
        self.hyper_host = None  # its host twin

    def step(self, buf, n):
        """One training step on the loaded buffers; returns the 0-d loss array."""
        self._write_scalars()
        arrays = self._arrays()
        sig = self._signature(arrays)
        entry = self.graphs.get(n)
        if entry is not None and entry[1] != sig:
            self.graphs.clear()  # something the graphs baked in has changed: capture again
            self.warm.clear()
            entry = None
        if entry is None:
            if self.warm.get(n, 0) < WARMUP_STEPS:
                self.warm[n] = self.warm.get(n, 0) + 1
                self._device_step(buf, n)
                return buf.loss
            graph = self.ex.bk.capture(lambda: self._device_step(buf, n))
            entry = self.graphs[n] = (graph, sig, arrays)  # arrays: alive as long as the graph
        entry[0].launch()
        return buf.loss

    def _device_step(self, buf, n):
        """The step's device work, capturable: forward, fused loss, backward, update."""
        ex = self.ex
        ex._loss_and_gradient(buf, ex._forward(buf), n)
        ex._backward(buf)
        opt = ex.optimizer
        if opt is not None:
            for i, p in enumerate(opt.params):
                opt._update(opt.state[i], p.data, ex._grads[id(p)].data, self.hyper[i])

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

    def _arrays(self):
        """Every array a captured step reads or writes besides the executor's own buffers."""
        ex, arrays = self.ex, []
        for layer in ex.layers:
            arrays.append(layer.weight.data)
            if layer.bias is not None:
                arrays.append(layer.bias.data)
        opt = ex.optimizer
        if opt is not None:
            arrays.append(self.hyper)
            for st in opt.state:
                arrays.extend(v for v in st.values() if ex.bk.is_array(v))
        return arrays

    def _signature(self, arrays):
        opt = self.ex.optimizer
        config = None if opt is None else (id(opt), opt._config())
        # ids are safe to compare: a captured entry keeps its arrays alive, so no new array can
        # reuse the id of one the graph uses
        return tuple(id(a) for a in arrays), config
