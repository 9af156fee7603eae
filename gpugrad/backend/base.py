"""The one interface every device implements.

Everything above the backend layer writes `bk.xp.` array code once and never asks which device it
is on; the few things NumPy and CuPy spell differently (copies between host and device, scatter-add,
random numbers, the fused kernels) are methods here.
"""


class Backend:
    name: str = ""
    xp = None  # the array module: numpy or cupy

    def asarray(self, data, dtype=None):
        """An array on this device (no copy when `data` already is one of the right dtype)."""
        raise NotImplementedError

    def to_numpy(self, array):
        """A host numpy.ndarray with the same values."""
        raise NotImplementedError

    def is_array(self, obj) -> bool:
        """Whether `obj` is an array of this backend's array type."""
        raise NotImplementedError

    def device_name(self):
        """A one-line description of the device (for gpugrad info and reports)."""
        return self.name

    def synchronize(self):
        """Wait until queued work on the device is done (a no-op on the CPU)."""

    # random numbers: one generator per backend, seeded together by gg.manual_seed
    def seed(self, n: int):
        raise NotImplementedError

    def randn(self, shape, dtype):
        raise NotImplementedError

    def rand(self, shape, dtype):
        raise NotImplementedError

    def permutation(self, n: int):
        raise NotImplementedError

    def matmul(self, a, b, out=None):
        """a @ b with NumPy's rules (1-D promotion, broadcast batch axes), into `out` when given.
        On CUDA, float16/32/64 products go through gpugrad's own cuBLAS handle, which a CUDA graph
        can capture (backend/cublas.py)."""
        raise NotImplementedError

    def sum_rows(self, a, out=None):
        """a.sum(axis=0) of a 2-D array, into `out` when given (the bias gradient). On CUDA a
        GEMV with a ones vector: capturable, and no reduction workspace is allocated."""
        raise NotImplementedError

    def index_add(self, target, index, values):
        """target[index] += values, accumulating repeated indices (the backward of t[index])."""
        raise NotImplementedError

    def scatter(self, values, index, shape, accumulate):
        """An array of zeros of `shape` with `values` written at `index` (added, accumulating
        repeated indices, where `accumulate`): the backward of t[index]."""
        out = self.xp.zeros(shape, values.dtype)
        if accumulate:
            self.index_add(out, index, values)
        else:
            out[index] = values
        return out

    # fused primitives: CUDA kernels on CuPy, NumPy twins with the same formulas on the CPU
    def sigmoid_forward(self, x, out=None):
        """1 / (1 + exp(-x)), into `out` when given (which may be x itself)."""
        raise NotImplementedError

    def sigmoid_backward(self, y, dy, out=None):
        """dy * y * (1 - y) from the stored output y, into `out` (which may be dy itself)."""
        raise NotImplementedError

    def softmax_cross_entropy(self, logits, labels, grad_scale=None, want_loss=True, inplace=False,
                              check=True, loss_out=None):
        """Per-row loss `logsumexp(x) - x[label]` and/or `(softmax(x) - onehot) * grad_scale`.

        grad_scale: None (no gradient), a number or 0-d array (on the device: it is never read
        back to the host), or an (N,) array of per-row scales.
        inplace: write the gradient into `logits` (the executor's buffers).
        check: True raises ValueError (naming the op, the bad label and C) for a label outside
        [0, C); on the GPU this reads the kernel's error flag, a sync. False skips that read (the
        caller validated the labels, or a CUDA graph is being captured): such rows come out NaN.
        loss_out: an (N,) array that receives the per-row losses (no allocation).
        Returns (loss_rows or None, dlogits or None).
        """
        raise NotImplementedError

    def reduce_loss(self, rows, reduction="sum", out=None):
        """Sum or mean of per-row losses as a 0-d array (`out` when given), in a fixed order
        (deterministic: the same losses give the same bits on every run)."""
        raise NotImplementedError

    # CUDA graphs: record a step's device work once, replay it with one launch
    graphs = False  # whether capture() records anything on this device
    # {operation: why a captured step must not call it}; everything else a training step uses
    # is capture-safe when given its output buffers (see each backend)
    capture_unsafe = {}

    def graph_status(self):
        """(ok, reason): whether capture() records and replays work correctly on this device."""
        return (True, None) if self.graphs else (False, f"the {self.name} backend has no graphs")

    def capture(self, fn):
        """Run `fn` once under stream capture and return a graph whose `launch()` replays the
        device work fn queued (on the current stream), or None where the device has no graphs
        (the NumPy backend: there is no launch overhead to save). fn must not allocate, read
        device values back on the host, or depend on host state that changes between replays."""
        return None

    def upload(self, dst, host):
        """Copy the host array `host` into the device array `dst` (same shape), in stream order
        and without a temporary device array."""
        dst[...] = host

    def __repr__(self):
        return f"<gpugrad backend {self.name!r}>"
