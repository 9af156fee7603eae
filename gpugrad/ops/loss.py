"""Softmax, log-softmax and the two losses of the lecture: cross-entropy and squared error.

Cross-entropy is one fused op: its forward yields per-row losses `logsumexp(x) - x[label]`, its
backward the local gradient `softmax(x) - onehot`, scaled by the upstream gradient. Both go through
the backend's fused primitive (a CUDA kernel on the GPU, its NumPy twin on the CPU).
"""
from ..tensor import OUT, Function
from .arithmetic import plus
from .reduce_shape import normalize_axis


def softmax_axis(axis, a, op):
    """The axes softmax normalises over, as a tuple: one axis, several (a tuple), or all of them
    (None), as scipy.special.softmax does; () for a 0-d tensor (its softmax is 1)."""
    return normalize_axis(axis, a.ndim, op)


class Softmax(Function):
    saved = (OUT,)

    def forward(self, a):
        self.ax = softmax_axis(self.axis, a, "softmax")
        if a.size == 0:  # nothing to normalise (a max over an empty axis is undefined)
            self.out = a.copy()
            return self.out
        e = self.bk.xp.exp(a - a.max(axis=self.ax, keepdims=True))  # max-subtracted: no overflow
        self.out = e / e.sum(axis=self.ax, keepdims=True)
        return self.out

    def backward(self, upstream):
        # Jacobian-vector product of softmax: s * (g - sum(g * s))
        s = self.out
        return (s * (upstream - (upstream * s).sum(axis=self.ax, keepdims=True)),)

    def jvp(self, t):
        return self.backward(t)[0]  # softmax's Jacobian diag(s) - s s^T is symmetric


class LogSoftmax(Function):
    saved = (OUT,)

    def forward(self, a):
        self.ax = softmax_axis(self.axis, a, "log_softmax")
        xp = self.bk.xp
        if a.size == 0:
            self.out = a.copy()
            return self.out
        z = a - a.max(axis=self.ax, keepdims=True)
        self.out = z - xp.log(xp.exp(z).sum(axis=self.ax, keepdims=True))
        return self.out

    def backward(self, upstream):
        # d log_softmax: g - softmax * sum(g)
        return (upstream - self.bk.xp.exp(self.out) * upstream.sum(axis=self.ax, keepdims=True),)

    def jvp(self, t):
        # J = I - 1 softmax^T: the tangent minus its softmax-weighted mean
        return t - (self.bk.xp.exp(self.out) * t).sum(axis=self.ax, keepdims=True)


class CrossEntropy(Function):
    """-log softmax(logits)[label] per row, reduced by mean / sum / none (labels: a parameter)."""
    saved = (0,)
    check = True  # False: no host-side label check (a captured step checks labels before it)

    def forward(self, logits):
        self.logits = logits
        # replayed (an Executor plan, where every forward is followed by its backward): one
        # pass over the logits yields the loss and the local gradient softmax - onehot, and
        # backward only scales it. Eager keeps the logits alone (an (N, C) array less between
        # forward and backward) and computes the gradient in backward.
        scale = 1.0 if self.replayed else None
        rows, self.local = self.bk.softmax_cross_entropy(logits, self.labels, grad_scale=scale,
                                                         check=self.check)
        return rows if self.reduction == "none" else self.bk.reduce_loss(rows, self.reduction)

    def backward(self, upstream):
        # local gradient of the row loss w.r.t. its logits: softmax - onehot
        scale = upstream / len(self.labels) if self.reduction == "mean" else upstream
        if self.local is not None:  # computed by a replayed forward, used once: scaled in place
            local, self.local = self.local, None
            local *= scale[:, None] if self.reduction == "none" else scale
            return (local,)
        # check=False: forward already validated the labels (on the GPU a check is a sync)
        _, grad = self.bk.softmax_cross_entropy(self.logits, self.labels, grad_scale=scale,
                                                want_loss=False, check=False)
        return (grad,)

    def jvp(self, t):
        # each row's tangent: its local gradient (softmax - onehot) dotted with the row's tangent
        _, local = self.bk.softmax_cross_entropy(self.logits, self.labels, grad_scale=1.0,
                                                 want_loss=False, check=False)
        rows = (local * t).sum(axis=1)
        return rows if self.reduction == "none" else self.bk.reduce_loss(rows, self.reduction)


class MSELoss(Function):
    """(pred - target)^2 reduced by mean / sum / none."""
    saved = (0, 1)

    def forward(self, pred, target):
        self.pred, self.target = pred, target
        diff = pred - target
        return self.reduce(diff * diff)

    def reduce(self, sq):
        if self.reduction == "none":
            return sq
        return sq.mean() if self.reduction == "mean" else sq.sum()

    def backward(self, upstream):
        # d (p - t)^2 / dp = 2 (p - t), / dt = -2 (p - t)
        diff = self.pred - self.target
        scale = upstream * 2 / (diff.size if self.reduction == "mean" else 1)
        g = diff * scale
        return (g if self.needs[0] else None, -g if self.needs[1] else None)

    def jvp(self, tp, tt):
        diff = self.pred - self.target
        return self.reduce(2 * diff * plus(tp, None if tt is None else -tt))
