"""The hand-written floor: one MLP training step the way a careful NumPy programmer writes it
(FloorMLP, and FloorResidual for an MLP of residual blocks).

No graph, no autograd, no per-step allocation of anything batch-sized: every activation, gradient
and temporary is preallocated, matrix products write into their outputs (`out=`), ReLU and its
mask work in place, softmax cross-entropy is computed in place over the logits (row max
subtracted, exp, normalise, subtract the one-hot, scale by 1/N) and SGD with momentum updates in
place. It is the same math as gpugrad's Executor and torch (ReLU MLP, mean cross-entropy, SGD
momentum with torch's rule: buf = m * buf + g, w -= lr * buf, buf starting at zero so the first
step gives buf = g), so its time is the floor for any library built on the same array module.

`xp` may be numpy or cupy: on the GPU the same code is the hand-written CuPy peer.
"""
import numpy as np


def he_init(sizes, seed=0, dtype=np.float32):
    """[(W, b)] per layer on the host: W (in, out) ~ N(0, 2 / in), b = 0 (gpugrad's Linear)."""
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((i, o)) * np.sqrt(2.0 / i)).astype(dtype), np.zeros(o, dtype))
            for i, o in zip(sizes[:-1], sizes[1:])]


class FloorMLP:
    """An MLP (Linear, ReLU, ..., Linear) with its training step hand-written over `xp` arrays.

    Weights are (in, out), as gpugrad's Linear: `params`, a list of (W, b) host arrays, or He
    initialisation from `seed`. `step(x, y)` takes arrays already on the device (x: (batch,
    sizes[0]) float32, y: (batch,) int64) and returns the loss.
    """

    def __init__(self, sizes, batch, lr=0.01, momentum=0.9, xp=np, dtype=np.float32, seed=0,
                 params=None):
        pairs = list(zip(sizes[:-1], sizes[1:]))
        params = params or he_init(sizes, seed, dtype)
        self.xp, self.lr, self.momentum, self.batch = xp, lr, momentum, batch
        self.w = [xp.array(w, dtype) for w, _ in params]  # copies: the floor owns its weights
        self.b = [xp.array(b, dtype) for _, b in params]
        params = self.w + self.b
        self.grads = [xp.empty_like(p) for p in params]
        self.velocity = [xp.zeros_like(p) for p in params]
        self.tmp = [xp.empty_like(p) for p in params]
        self.z = [xp.empty((batch, o), dtype) for _, o in pairs]       # layer outputs
        self.dz = [xp.empty((batch, o), dtype) for _, o in pairs[:-1]]  # their gradients
        self.mask = [xp.empty((batch, o), bool) for _, o in pairs[:-1]]
        self.row_max = xp.empty((batch, 1), dtype)
        self.row_sum = xp.empty((batch, 1), dtype)
        self.rows = xp.arange(batch)

    def step(self, x, y):
        xp, w, b, z = self.xp, self.w, self.b, self.z
        last = len(w) - 1
        a = x
        for i in range(len(w)):  # forward: z = a W + b, ReLU in place except on the logits
            xp.matmul(a, w[i], out=z[i])
            z[i] += b[i]
            if i < last:
                xp.maximum(z[i], 0, out=z[i])
            a = z[i]
        loss = self._softmax_xent_in_place(z[last], y)
        dw, db = self.grads[:len(w)], self.grads[len(w):]
        g = z[last]  # now dL/dlogits
        for i in range(last, -1, -1):  # backward: dW = a^T g, db = sum g, g <- g W^T * relu'
            xp.matmul(x.T if i == 0 else z[i - 1].T, g, out=dw[i])
            g.sum(axis=0, out=db[i])
            if i:
                xp.matmul(g, w[i].T, out=self.dz[i - 1])
                xp.greater(z[i - 1], 0, out=self.mask[i - 1])
                xp.multiply(self.dz[i - 1], self.mask[i - 1], out=self.dz[i - 1])
                g = self.dz[i - 1]
        self._sgd_momentum()
        return float(loss)  # the one read back to the host, at the end (on a GPU: the sync)

    def _sgd_momentum(self):
        """torch's SGD-momentum update of every parameter from self.grads, in place."""
        for p, grad, v, t in zip(self.w + self.b, self.grads, self.velocity, self.tmp):
            v *= self.momentum
            v += grad
            self.xp.multiply(v, self.lr, out=t)
            p -= t

    def _softmax_xent_in_place(self, z, y):
        """Mean cross-entropy of logits z against labels y (a 0-d array); z becomes dL/dz."""
        xp, n = self.xp, self.batch
        z.max(axis=1, keepdims=True, out=self.row_max)
        z -= self.row_max
        picked = z[self.rows, y]  # x[label] - max, before z is overwritten
        xp.exp(z, out=z)
        z.sum(axis=1, keepdims=True, out=self.row_sum)
        loss = (xp.log(self.row_sum).sum() - picked.sum()) / n
        z /= self.row_sum
        z[self.rows, y] -= 1
        z *= 1.0 / n
        return loss


class FloorResidual(FloorMLP):
    """A residual MLP with its training step hand-written, the twin of a gg Module

        h = relu(x W0 + b0);  h = h + relu(h Wi + bi) for each block i;  logits = h Wout + bout

    `sizes` = (inputs, width, width, ..., width, classes): one input layer, len(sizes) - 3
    blocks of width -> width, and the output layer (the parameters are laid out as FloorMLP's).
    Every activation, gradient and temporary is preallocated as in FloorMLP."""

    def __init__(self, sizes, batch, lr=0.01, momentum=0.9, xp=np, dtype=np.float32, seed=0,
                 params=None):
        if len(sizes) < 4 or len(set(sizes[1:-1])) != 1:
            raise ValueError(f"FloorResidual: sizes must be (inputs, width, ..., width, classes) "
                             f"with at least one block, got {sizes}")
        super().__init__(sizes, batch, lr, momentum, xp, dtype, seed, params)
        width = sizes[1]
        self.h = [xp.empty((batch, width), dtype) for _ in sizes[1:-1]]  # h after each block
        self.gh, self.gz, self.tmp_bw = (xp.empty((batch, width), dtype) for _ in range(3))
        self.mask_bw = xp.empty((batch, width), bool)

    def step(self, x, y):
        xp, w, b, z, h = self.xp, self.w, self.b, self.z, self.h
        last = len(w) - 1
        xp.matmul(x, w[0], out=z[0])  # the input layer: h0 = relu(x W0 + b0), in z[0] then h[0]
        z[0] += b[0]
        xp.maximum(z[0], 0, out=h[0])
        for i in range(1, last):  # block i: z[i] = relu(h W + b); h <- h + z[i]
            xp.matmul(h[i - 1], w[i], out=z[i])
            z[i] += b[i]
            xp.maximum(z[i], 0, out=z[i])
            xp.add(h[i - 1], z[i], out=h[i])
        xp.matmul(h[-1], w[last], out=z[last])
        z[last] += b[last]
        loss = self._softmax_xent_in_place(z[last], y)
        dw, db = self.grads[:len(w)], self.grads[len(w):]
        g = z[last]  # dL/dlogits
        xp.matmul(h[-1].T, g, out=dw[last])
        g.sum(axis=0, out=db[last])
        gh, gz = self.gh, self.gz
        xp.matmul(g, w[last].T, out=gh)  # dL/dh
        for i in range(last - 1, 0, -1):  # block i: dL/dz = dL/dh * relu'; h's gradient gains
            xp.greater(z[i], 0, out=self.mask_bw)  # the branch's share dL/dz W^T
            xp.multiply(gh, self.mask_bw, out=gz)
            xp.matmul(h[i - 1].T, gz, out=dw[i])
            gz.sum(axis=0, out=db[i])
            xp.matmul(gz, w[i].T, out=self.tmp_bw)
            gh += self.tmp_bw
        xp.greater(z[0], 0, out=self.mask_bw)  # the input layer
        xp.multiply(gh, self.mask_bw, out=gz)
        xp.matmul(x.T, gz, out=dw[0])
        gz.sum(axis=0, out=db[0])
        self._sgd_momentum()
        return float(loss)
