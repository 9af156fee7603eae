"""gg.gradcheck: compare backprop against central differences, in float64.

The output is projected on a fixed random direction r (so any output shape works and one backward
gives the analytic vector-Jacobian product J^T r); the numeric side perturbs each input element by
+-eps and differentiates the same projection: (f(x+eps) - f(x-eps)) / 2 eps.
"""
import numpy as np

from .errors import GradcheckError
from .tensor import Tensor, enable_grad, no_grad


def _as_inputs(inputs, op):
    if isinstance(inputs, Tensor):
        return (inputs,)
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"{op}: inputs must be a Tensor or a list/tuple of inputs, got "
                        f"{type(inputs).__name__}")
    return tuple(inputs)


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3):
    """True if every float input's gradient matches; else GradcheckError naming the input, the
    element index, and the numeric and analytic values of the worst mismatch."""
    inputs = _as_inputs(inputs, "gradcheck")
    for name, value in (("eps", eps), ("atol", atol), ("rtol", rtol)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or \
                (name == "eps" and value == 0):
            kind = "positive" if name == "eps" else "non-negative"
            raise ValueError(f"gradcheck: {name} must be a {kind} number, got {value!r}")
    # float64 copies of the float tensors that want a gradient; everything else passes through
    args = [Tensor._make(a.data.astype(np.float64), a._bk, requires_grad=True)
            if isinstance(a, Tensor) and a.requires_grad else a for a in inputs]
    checked = [i for i, a in enumerate(inputs) if isinstance(a, Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad; pass tensors with "
                         "requires_grad=True")
    out = fn(*args)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if out.dtype != np.float64:
        raise TypeError(f"gradcheck: fn returned {out.dtype}; with float64 inputs it must "
                        f"compute in float64 (does it cast, or mix in float32 tensors?)")
    r = np.random.default_rng(0).standard_normal(out.shape)
    r_dev = out._bk.asarray(r)
    if out.requires_grad:
        out.backward(r_dev)

    def projected():
        with no_grad():
            return float((fn(*args).numpy() * r).sum())

    for i in checked:
        x = args[i]
        analytic = np.zeros(x.shape) if x.grad is None else x.grad.numpy()
        host = x.numpy().copy()
        numeric = np.empty(x.shape)
        for idx in np.ndindex(*x.shape):
            orig = host[idx]
            host[idx] = orig + eps
            x.data = x._bk.asarray(host.copy())
            f_plus = projected()
            host[idx] = orig - eps
            x.data = x._bk.asarray(host.copy())
            f_minus = projected()
            host[idx] = orig
            numeric[idx] = (f_plus - f_minus) / (2 * eps)
        x.data = x._bk.asarray(host)
        err = np.abs(numeric - analytic) - (atol + rtol * np.abs(numeric))
        if err.size and (np.nanmax(err) > 0 or np.isnan(err).any()):
            worst = np.unravel_index(np.nanargmax(np.where(np.isnan(err), np.inf, err)),
                                     err.shape)
            raise GradcheckError(
                f"gradcheck: input {i} (shape {x.shape}) at index {tuple(int(k) for k in worst)}: "
                f"numeric {numeric[worst]:.10g} vs analytic {analytic[worst]:.10g} "
                f"(atol={atol}, rtol={rtol})")
    return True


def gradgradcheck(fn, inputs, grad_outputs=None, eps=1e-6, atol=1e-5, rtol=1e-3):
    """True if the second derivatives match; else GradcheckError, as gradcheck reports.

    The analytic first derivatives, u^T J (J: fn's Jacobian; u: `grad_outputs`, random by
    default), are recorded with create_graph=True and projected on a fixed random direction;
    gradcheck then compares that projection's gradient (backward through the recorded backward)
    against central differences of the analytic first derivatives, with respect to every
    float input and to u. Float64 throughout."""
    from . import autograd
    inputs = _as_inputs(inputs, "gradgradcheck")
    checked = [i for i, a in enumerate(inputs) if isinstance(a, Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("gradgradcheck: no input requires grad; pass tensors with "
                         "requires_grad=True")
    with no_grad():
        out = fn(*[Tensor._make(a.data.astype(np.float64), a._bk) if i in checked else a
                   for i, a in enumerate(inputs)])
    if not isinstance(out, Tensor):
        raise TypeError(f"gradgradcheck: fn must return a Tensor, got {type(out).__name__}")
    rng = np.random.default_rng(1)
    if grad_outputs is None:
        u = Tensor._make(out._bk.asarray(rng.standard_normal(out.shape)), out._bk,
                         requires_grad=True)
    else:
        u = grad_outputs if isinstance(grad_outputs, Tensor) else Tensor(grad_outputs)
        if u.shape != out.shape:
            raise ValueError(f"gradgradcheck: grad_outputs has shape {u.shape}, fn's output "
                             f"{out.shape}")
    directions = [out._bk.asarray(rng.standard_normal(inputs[i].shape)) for i in checked]

    def first_derivatives(*args):
        *xs, u_ = args
        with enable_grad():  # gradcheck evaluates this under no_grad: the inner grad needs one
            y = fn(*xs)
            if not y.requires_grad:
                return (u_ * 0).sum()
            gs = autograd.grad(y, [xs[i] for i in checked], u_, create_graph=True,
                               allow_unused=True)
            terms = [(g * r).sum() for g, r in zip(gs, directions) if g is not None]
        if not terms:
            return (u_ * 0).sum()
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    return gradcheck(first_derivatives, inputs + (u,), eps=eps, atol=atol, rtol=rtol)
