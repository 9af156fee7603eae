"""Optimizers (SGD, Adam), regularisation penalties and learning-rate schedulers.

The math follows torch.optim exactly (same update rules, same order of operations), so a model
trained here and in PyTorch from the same weights follows the same trajectory. Updates work on the
raw arrays in place: each parameter keeps a scratch buffer, and every step writes into it and into
the state buffers with `out=`, so a step allocates nothing after the first. The gradient arrays
are only read: the engine may share one gradient array between tensors.
"""
import math
import numbers

from .errors import DeviceError, ShapeError
from .tensor import Tensor, _bump, _bump_all, no_grad

__all__ = ["Optimizer", "SGD", "Adam", "l1_penalty", "l2_penalty", "StepLR", "CosineLR"]


def _require(ok, message):
    if not ok:
        raise ValueError(message)


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def _params_list(params, who):
    """A list of distinct leaf Tensors that require grad, or a clear error."""
    if isinstance(params, Tensor):
        raise TypeError(f"{who}: params must be an iterable of Tensors (e.g. model.parameters())"
                        f", got a single Tensor; wrap it in a list")
    params = list(params)
    if not params:
        raise ValueError(f"{who}: got an empty parameter list")
    seen = set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{who}: parameter {i} is a {type(p).__name__}, not a Tensor")
        if not p.requires_grad or not p.is_leaf:
            raise ValueError(f"{who}: parameter {i} (shape {p.shape}) is not a leaf Tensor that "
                             f"requires grad")
        if id(p) in seen:
            raise ValueError(f"{who}: parameter {i} (shape {p.shape}) appears more than once")
        seen.add(id(p))
    return params


class Optimizer:
    """Holds the parameters (`self.params`), the learning rate (`self.lr`, which schedulers
    change) and per-parameter state. Subclasses define

    - `_scalars(state)`: the host-side bookkeeping of one step of one parameter (Adam's step
      count) and the numbers that step multiplies by, which may change from step to step (lr,
      bias corrections), as a tuple of floats;
    - `_update(state, w, g, h)`: the update of the parameter's array `w` in place from its
      gradient array `g` (never written), reading those numbers as h[0], h[1], ...;
    - `_config()`: the settings that decide which array operations `_update` runs.

    The split lets the Executor's CUDA graph replay `_update` with `h` a row of a device array
    that it rewrites before each replay: a scheduler's new lr and Adam's step count are then
    honoured without capturing again (a change of `_config()` does make it capture again)."""

    def __init__(self, params, lr):
        who = type(self).__name__
        self.params = _params_list(params, who)
        self.lr = _number(f"{who}: lr", lr)
        _require(self.lr >= 0, f"{who}: lr must be >= 0, got {lr}")
        self.state = [{} for _ in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """Update every parameter that has a gradient (those whose .grad is None are skipped).
        All gradients are checked first, so a rejected step changes no parameter."""
        live = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        for i, p in live:
            self._check_grad(i, p)
            if not getattr(p.data.flags, "writeable", True):
                raise ValueError(f"{type(self).__name__}.step: parameter {i} ({p.dtype} "
                                 f"{p.shape}) is read-only; no parameter was changed")
        state = self.state
        with no_grad():
            for i, p in live:
                st = state[i]
                if st.get("bk") is not p._bk:  # first step, or the model moved device
                    st = self._state(i, p)
                self._update(st, p.data, p.grad.data, self._scalars(st))
                _bump(p)  # p.data changed in place: graphs that saved it must not backward

    def _step_arrays(self, grads):
        """One update of every parameter from `grads`, gradient arrays in parameter order,
        without step()'s checks: for a driver that made those arrays itself (the Executor)."""
        update, scalars, state = self._update, self._scalars, self.state
        # the base _scalars reads no state: its numbers, once for all parameters
        shared = scalars(None) if type(self)._scalars is Optimizer._scalars else None
        for i, (p, g) in enumerate(zip(self.params, grads)):
            st = state[i]
            if st.get("bk") is not p._bk:
                st = self._state(i, p)
            update(st, p.data, g, shared or scalars(st))
        _bump_all(self.params)

    def _check_grad(self, i, p):
        g = p.grad
        if isinstance(g, Tensor) and g._bk is p._bk and g.data.shape == p.data.shape and \
                g.data.dtype.kind == "f":
            return  # the usual case in one test; the messages below name what is wrong
        who = type(self).__name__
        if not isinstance(g, Tensor):
            raise TypeError(f"{who}.step: parameter {i}'s grad is a {type(g).__name__}, not a "
                            f"Tensor")
        if g.shape != p.shape:
            raise ShapeError(f"{who}.step: parameter {i} has shape {p.shape} but its grad has "
                             f"shape {g.shape}")
        if g._bk is not p._bk:
            raise DeviceError(f"{who}.step: parameter {i} is on '{p.device}' but its grad is on "
                              f"'{g.device}'")
        if g.dtype.kind != "f":
            raise TypeError(f"{who}.step: parameter {i}'s grad has dtype {g.dtype}; expected "
                            f"floating point")

    def _state(self, i, p):
        """Parameter i's state dict, its buffers moved along if the model moved device."""
        st = self.state[i]
        if st.get("bk", p._bk) is not p._bk:
            old = st.pop("bk")
            for k, v in st.items():
                if old.is_array(v):
                    st[k] = p._bk.asarray(old.to_numpy(v))
        st["bk"] = p._bk
        if "scratch" not in st:
            st["scratch"] = p._bk.xp.empty_like(p.data)
        return st

    def _decayed(self, st, w, g, weight_decay):
        """g + weight_decay * w (L2 regularisation folded into the gradient), in a state buffer:
        g itself must not be written."""
        if not weight_decay:
            return g
        d = st.get("decayed")
        if d is None:
            d = st["decayed"] = st["bk"].xp.empty_like(w)
        st["bk"].xp.multiply(w, weight_decay, out=d)
        d += g
        return d

    def _scalars(self, st):
        return (self.lr,)

    def _config(self):
        return ()

    def _update(self, st, w, g, h):
        raise NotImplementedError(f"{type(self).__name__} must define _update()")


class SGD(Optimizer):
    """Stochastic gradient descent, torch.optim.SGD's rule:

        d = g + weight_decay * w
        buf = d (first step), else momentum * buf + (1 - dampening) * d
        d = d + momentum * buf (nesterov), or d = buf (momentum > 0)
        w = w - lr * d
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False,
                 dampening=0.0):
        super().__init__(params, lr)
        self.momentum = _number("SGD: momentum", momentum)
        self.weight_decay = _number("SGD: weight_decay", weight_decay)
        self.dampening = _number("SGD: dampening", dampening)
        self.nesterov = bool(nesterov)
        _require(self.momentum >= 0, f"SGD: momentum must be >= 0, got {momentum}")
        _require(self.weight_decay >= 0, f"SGD: weight_decay must be >= 0, got {weight_decay}")
        _require(not self.nesterov or (self.momentum > 0 and self.dampening == 0),
                 f"SGD: nesterov needs momentum > 0 and dampening 0, got momentum={momentum}, "
                 f"dampening={dampening}")

    def _config(self):
        return (self.momentum, self.dampening, self.nesterov, self.weight_decay)

    def _update(self, st, w, g, h):
        xp, s, m = st["bk"].xp, st["scratch"], self.momentum
        d = self._decayed(st, w, g, self.weight_decay) if self.weight_decay else g
        if m:
            buf = st.get("momentum")
            if buf is None:
                buf = st["momentum"] = d.copy()
            else:
                buf *= m
                if self.dampening:
                    xp.multiply(d, 1 - self.dampening, out=s)
                    buf += s
                else:
                    buf += d
            if self.nesterov:
                xp.multiply(buf, m, out=s)
                s += d
                d = s
            else:
                d = buf
        xp.multiply(d, h[0], out=s)  # h[0] = lr; s may be d itself: elementwise, safe in place
        w -= s


class Adam(Optimizer):
    """Adam with torch.optim.Adam's rule (bias-corrected moments; weight decay is L2, added to
    the gradient, not AdamW's decoupled decay):

        d = g + weight_decay * w;  t += 1
        m = beta1 m + (1 - beta1) d;  v = beta2 v + (1 - beta2) d^2
        w = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)):
            raise TypeError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        if len(betas) != 2:
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {len(betas)} "
                             f"values {tuple(betas)}")
        b1, b2 = betas
        self.betas = (_number("Adam: beta1", b1), _number("Adam: beta2", b2))
        self.eps = _number("Adam: eps", eps)
        self.weight_decay = _number("Adam: weight_decay", weight_decay)
        for name, b in zip(("beta1", "beta2"), self.betas):
            _require(0 <= b < 1, f"Adam: {name} must be in [0, 1), got {b}")
        _require(self.eps > 0, f"Adam: eps must be > 0, got {eps}")
        _require(self.weight_decay >= 0, f"Adam: weight_decay must be >= 0, got {weight_decay}")

    def _scalars(self, st):
        """Advance the parameter's step count t; the numbers step t multiplies by are
        lr / (1 - beta1^t) and sqrt(1 - beta2^t)."""
        b1, b2 = self.betas
        st["t"] = t = st.get("t", 0) + 1
        return (self.lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t))

    def _config(self):
        return (self.betas, self.eps, self.weight_decay)

    def _update(self, st, w, g, h):
        xp, s = st["bk"].xp, st["scratch"]
        b1, b2 = self.betas
        d = self._decayed(st, w, g, self.weight_decay)
        if "m" not in st:
            st["m"], st["v"] = xp.zeros_like(w), xp.zeros_like(w)
        m, v = st["m"], st["v"]
        m *= b1
        xp.multiply(d, 1 - b1, out=s)
        m += s
        v *= b2
        xp.multiply(d, d, out=s)
        s *= 1 - b2
        v += s
        xp.sqrt(v, out=s)  # s = sqrt(v) / sqrt(1 - beta2^t) + eps, the denominator
        s /= h[1]
        s += self.eps
        xp.divide(m, s, out=s)
        s *= h[0]  # lr / (1 - beta1^t)
        w -= s


# -- regularisation penalties: add to the loss, backward does the rest -------------------------

def _penalty(params, strength, term, who):
    strength = _number(f"{who}: strength", strength)
    _require(strength >= 0, f"{who}: strength must be >= 0, got {strength}")
    params = list(params)
    _require(bool(params), f"{who}: got no parameters")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{who}: parameter {i} is a {type(p).__name__}, not a Tensor")
    total = term(params[0]).sum()
    for p in params[1:]:
        total = total + term(p).sum()
    return total * strength


def l1_penalty(params, strength):
    """strength * sum_p sum |p|: the lecture's L1 regularisation, a scalar Tensor to add to the
    loss. It pushes weights to exactly zero (sparse models). Pass the weights only: biases are
    usually left unregularised, e.g. [m.weight for m in model.modules() if isinstance(m,
    nn.Linear)]. The gradient at p = 0 is 0 (subgradient, as PyTorch's abs)."""
    return _penalty(params, strength, abs, "l1_penalty")


def l2_penalty(params, strength):
    """strength * sum_p sum p^2 (weights only, as l1_penalty). Its gradient is 2 * strength * p,
    so it equals the optimizers' weight_decay = 2 * strength."""
    return _penalty(params, strength, lambda p: p * p, "l2_penalty")


# -- learning-rate schedulers: the lecture's "the learning rate has to be reduced" --------------

class _Scheduler:
    """Sets `opt.lr` from the lr it had at construction (`base_lr`) and the number of step()
    calls so far (`last_epoch`), in closed form, as torch's schedulers evaluate when nothing
    else changes the lr. Call step() once per epoch (or per batch), after opt.step()."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a gg.optim optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer, self.base_lr, self.last_epoch = optimizer, optimizer.lr, 0

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self._lr(self.last_epoch)

    def get_last_lr(self):
        """The learning rate now in effect (a float: gpugrad optimizers have one lr)."""
        return self.optimizer.lr


class StepLR(_Scheduler):
    """lr = base_lr * gamma ** (epoch // step_size): decay by gamma every step_size epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        _require(isinstance(step_size, int) and step_size > 0,
                 f"StepLR: step_size must be a positive int, got {step_size!r}")
        self.step_size, self.gamma = step_size, _number("StepLR: gamma", gamma)
        _require(self.gamma >= 0, f"StepLR: gamma must be >= 0, got {gamma}")

    def _lr(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineLR(_Scheduler):
    """lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / total_steps)) / 2 (torch's
    CosineAnnealingLR with eta_min = min_lr). After total_steps the lr stays at min_lr, where
    torch's would rise again along the cosine: a schedule that ended should not restart."""

    def __init__(self, optimizer, total_steps, min_lr=0.0):
        super().__init__(optimizer)
        _require(isinstance(total_steps, int) and total_steps > 0,
                 f"CosineLR: total_steps must be a positive int, got {total_steps!r}")
        self.total_steps, self.min_lr = total_steps, _number("CosineLR: min_lr", min_lr)
        _require(self.min_lr >= 0, f"CosineLR: min_lr must be >= 0, got {min_lr}")

    def _lr(self, epoch):
        t = min(epoch, self.total_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * (
            1 + math.cos(math.pi * t / self.total_steps)) / 2
