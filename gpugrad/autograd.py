"""Derivatives as functions, with PyTorch's names and conventions (torch.autograd.grad,
torch.autograd.functional, torch.func.jvp).

Reverse mode: `grad` walks the graph like backward() but returns the gradients instead of adding
them to .grad; with create_graph=True the walk itself is recorded, so its results can be
differentiated again (gradients of gradients, Hessians). Forward mode: `jvp` runs the function
once with a tangent carried beside every value, the lecture's (v, w) pairs, by each op's own
rule (Function.jvp); no graph is built for it.
"""
from .errors import DeviceError, ShapeError
from .modes import current as _modes
from .modes import forward_ad
from .ops import stack
from .tensor import (Tensor, _held, _seed, give_tangent, release, sweep,
                     take_back_tangents)

__all__ = ["grad", "jacobian", "hessian", "vjp", "hvp", "jvp"]


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """The gradients of `outputs` (weighted by `grad_outputs`, ones for one-element outputs)
    with respect to each of `inputs`, as a tuple; .grad is left alone. Inputs may be leaves or
    intermediate tensors. An input the outputs do not depend on raises, or gives None with
    allow_unused=True."""
    outputs = _tensors(outputs, "outputs")
    inputs = _tensors(inputs, "inputs")
    if grad_outputs is None or isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs] * len(outputs) if grad_outputs is None else [grad_outputs]
    grad_outputs = list(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad: {len(grad_outputs)} grad_outputs for {len(outputs)} outputs")
    for i, out in enumerate(outputs):
        if not out._rg:
            raise RuntimeError(f"grad: output {i} does not require grad and has no graph")
    for i, x in enumerate(inputs):
        if not x._rg:
            raise RuntimeError(f"grad: input {i} does not require grad (set "
                               f"requires_grad=True before computing the outputs)")
    roots = [(out, _seed(out, g, "grad")) for out, g in zip(outputs, grad_outputs)]
    tensors = create_graph or _modes().forward
    if not tensors:
        roots = [(out, s.data if isinstance(s, Tensor) else s) for out, s in roots]
    wanted = {id(x._ctx) for x in inputs if x._ctx is not None}
    order, leaves, reached = sweep(roots, tensors, create_graph, wanted)
    if not (create_graph if retain_graph is None else retain_graph):
        release(order)
    results, handed_out = [], set()
    for i, x in enumerate(inputs):
        g = leaves[id(x)][1] if id(x) in leaves and x._ctx is None else (
            reached.get(id(x._ctx)) if x._ctx is not None else None)
        if g is None:
            if not allow_unused:
                raise RuntimeError(f"grad: input {i} (shape {x.shape}) was not used to compute "
                                   f"the outputs; pass allow_unused=True to get None for it")
            results.append(None)
            continue
        results.append(_fresh(g, x, handed_out))
    return tuple(results)


def _fresh(g, x, handed_out):
    """g as a Tensor in x's dtype that shares memory with no other result (as in PyTorch, a
    result may be the grad_outputs tensor itself, e.g. the gradient of y with respect to y)."""
    if isinstance(g, Tensor):
        if g.dtype != x.dtype or id(g.data) in handed_out or g.data.base is not None:
            g = g.astype(x.dtype)  # differentiable copy
    else:
        if g.dtype != x.dtype or id(g) in handed_out or g.base is not None:
            g = g.astype(x.dtype)  # copies
        g = Tensor._make(g, x._bk)
    handed_out.add(id(g.data))
    return g


def _tensors(xs, what):
    if isinstance(xs, Tensor):
        return [xs]
    if not isinstance(xs, (list, tuple)) or not all(isinstance(x, Tensor) for x in xs):
        raise TypeError(f"{what} must be a Tensor or a sequence of Tensors")
    return list(xs)


# -- torch.autograd.functional --------------------------------------------------------------------

def _as_tuple(xs, what, fn_name):
    if isinstance(xs, Tensor):
        return (xs,), False
    if isinstance(xs, (list, tuple)) and all(isinstance(x, Tensor) for x in xs):
        return tuple(xs), True
    raise TypeError(f"{fn_name}: {what} must be a Tensor or a tuple of Tensors, got "
                    f"{type(xs).__name__}")


def _fresh_inputs(inputs, create_graph):
    """Leaves to differentiate with respect to: with create_graph an input that requires grad
    stays connected to its own graph (through an identity op); otherwise a detached copy."""
    return tuple(x.reshape(x.shape) if create_graph and x._rg
                 else Tensor._make(x.data, x._bk, x.dtype.kind == "f") for x in inputs)


def _outputs(fn, args, fn_name):
    out = fn(*args)
    outs, is_tuple = _as_tuple(out, "the function's output", fn_name)
    return outs, is_tuple


def _grads_or_zeros(outputs, inputs, v, create_graph, retain_graph=None):
    """grad() with zeros (not None) for inputs the outputs do not use, as torch's functional
    API returns."""
    live = [o for o in outputs if o._rg]
    vs = [g for o, g in zip(outputs, v) if o._rg]
    gs = grad(live, inputs, vs, retain_graph=retain_graph, create_graph=create_graph,
              allow_unused=True) if live else (None,) * len(inputs)
    return tuple(g if g is not None else Tensor._make(x._bk.xp.zeros_like(x.data), x._bk)
                 for g, x in zip(gs, inputs))


def _detach(xs, create_graph):
    return tuple(x if create_graph else x.detach() for x in xs)


def _check_like(vs, xs, what, fn_name):
    if len(vs) != len(xs):
        raise ValueError(f"{fn_name}: {what} has {len(vs)} entries for {len(xs)} tensors")
    for i, (v, x) in enumerate(zip(vs, xs)):
        if v.shape != x.shape:
            raise ShapeError(f"{fn_name}: {what}[{i}] has shape {v.shape}, expected {x.shape}")
        if v._bk is not x._bk:
            raise DeviceError(f"{fn_name}: {what}[{i}] is on '{v.device}', expected "
                              f"'{x.device}'")


def vjp(fn, inputs, v=None, create_graph=False, strict=False):
    """(fn(inputs), v^T J): the vector-Jacobian product, shaped like `inputs`."""
    inputs, in_tuple = _as_tuple(inputs, "inputs", "vjp")
    xs = _fresh_inputs(inputs, create_graph)
    outs, out_tuple = _outputs(fn, xs, "vjp")
    if v is None:
        if len(outs) != 1 or outs[0].size != 1:
            raise RuntimeError("vjp: v can be omitted only when fn returns one single-element "
                               "tensor")
        vs = (None,)
    else:
        vs, _ = _as_tuple(v, "v", "vjp")
        _check_like(vs, outs, "v", "vjp")
    _strict(strict, outs, "vjp")
    gs = _grads_or_zeros(outs, xs, vs, create_graph)
    return _shape(_detach(outs, create_graph), out_tuple), _shape(gs, in_tuple)


def hvp(fn, inputs, v, create_graph=False, strict=False):
    """(fn(inputs), H v) for a scalar fn, shaped like `inputs`: reverse over reverse, as
    torch.autograd.functional.hvp (the gradient, recorded, then differentiated along v)."""
    inputs, in_tuple = _as_tuple(inputs, "inputs", "hvp")
    vs, _ = _as_tuple(v, "v", "hvp")
    _check_like(vs, inputs, "v", "hvp")
    xs = _fresh_inputs(inputs, create_graph)
    outs, _ = _outputs(fn, xs, "hvp")
    out = _scalar(outs, "hvp")
    _strict(strict, outs, "hvp")
    gs = _grads_or_zeros((out,), xs, (None,), create_graph=True)
    hv = _grads_or_zeros(gs, xs, vs, create_graph)
    return (out if create_graph else out.detach()), _shape(_detach(hv, create_graph), in_tuple)


def jacobian(fn, inputs, create_graph=False, strict=False):
    """d fn(inputs) / d inputs: for one output and one input a Tensor of shape
    output.shape + input.shape; a tuple per input where inputs is a tuple; a tuple per output
    (of those) where fn returns a tuple. Reverse mode, one backward per output element."""
    inputs, in_tuple = _as_tuple(inputs, "inputs", "jacobian")
    xs = _fresh_inputs(inputs, create_graph)
    outs, out_tuple = _outputs(fn, xs, "jacobian")
    _strict(strict, outs, "jacobian")
    rows = []
    for out in outs:
        per_input = [[] for _ in xs]
        for k in range(out.size):
            onehot = out._bk.xp.zeros(out.size, out.dtype)
            onehot[k] = 1
            gs = _grads_or_zeros((out,), xs, (Tensor._make(onehot.reshape(out.shape),
                                                           out._bk),),
                                 create_graph, retain_graph=True)
            for j, g in enumerate(gs):
                per_input[j].append(g)
        rows.append(tuple(_stack(parts, out.shape, x) for parts, x in zip(per_input, xs)))
    rows = [_shape(r, in_tuple) for r in rows]
    return tuple(rows) if out_tuple else rows[0]


def hessian(fn, inputs, create_graph=False, strict=False):
    """The matrix of second derivatives of a scalar fn: for one input a Tensor of shape
    input.shape + input.shape; for a tuple of inputs a tuple of tuples, [i][j] = d2 f/dxi dxj.
    The Jacobian of the recorded gradient (reverse over reverse)."""
    _, in_tuple = _as_tuple(inputs, "inputs", "hessian")

    def gradient(*xs):
        out = _scalar(_as_tuple(fn(*xs), "the function's output", "hessian")[0], "hessian")
        _strict(strict, (out,), "hessian")
        return _grads_or_zeros((out,), xs, (None,), create_graph=True)

    h = jacobian(gradient, inputs, create_graph=create_graph)  # one row per input's gradient
    return h if in_tuple else h[0]


def jvp(fn, primals, tangents, strict=False):
    """(fn(*primals), J tangents) by forward mode, as torch.func.jvp: one run of fn with every
    value carrying its tangent beside it, by each op's own forward-mode rule. No graph is built
    for it. Outputs come back detached; an output that depends on no tangent gets zeros."""
    primals, _ = _as_tuple(primals, "primals", "jvp")
    tangents, _ = _as_tuple(tangents, "tangents", "jvp")
    _check_like(tangents, primals, "tangents", "jvp")
    if _modes().forward:
        raise NotImplementedError("jvp: nested jvp (forward over forward) is not supported; "
                                  "differentiate a jvp by reverse mode instead")
    for p, t in zip(primals, tangents):
        if p.dtype.kind != "f" or t.dtype.kind != "f":
            raise TypeError(f"jvp: primals and tangents must be floating point, got {p.dtype} "
                            f"and {t.dtype}")
    held = []  # every tangent given out below: taken back when this call returns
    token = _held.set(held)
    try:
        xs = []
        for p, t in zip(primals, tangents):
            x = Tensor._make(p.data, p._bk, p._rg)
            give_tangent(x, t.data.astype(p.dtype, copy=False))
            xs.append(x)
        with forward_ad():
            out = fn(*xs)
        outs, out_tuple = _as_tuple(out, "the function's output", "jvp")
        _strict(strict, outs, "jvp", tangent=True)
        tans = tuple(Tensor._make(_tangent(o), o._bk) for o in outs)
    finally:
        _held.reset(token)
        take_back_tangents(held)
    return _shape(tuple(o.detach() for o in outs), out_tuple), _shape(tans, out_tuple)


def _tangent(out):
    tan = getattr(out, "_tan", None)
    if tan is None:
        return out._bk.xp.zeros_like(out.data)
    return tan.copy() if tan.base is not None else tan  # never a view of a broadcast


def _stack(parts, out_shape, x):
    """The per-element gradients as one Tensor of shape out_shape + x.shape (differentiable,
    for create_graph)."""
    if not parts:
        return Tensor._make(x._bk.xp.zeros(out_shape + x.shape, x.dtype), x._bk)
    return stack(parts).reshape(out_shape + x.shape)


def _scalar(outs, fn_name):
    if len(outs) != 1 or outs[0].size != 1:
        raise RuntimeError(f"{fn_name}: the function must return one single-element tensor, "
                           f"got shapes {[tuple(o.shape) for o in outs]}")
    out = outs[0]
    return out.reshape(()) if out.ndim else out


def _strict(strict, outs, fn_name, tangent=False):
    if not strict:
        return
    for i, o in enumerate(outs):
        independent = (getattr(o, "_tan", None) is None) if tangent else not o._rg
        if independent:
            raise RuntimeError(f"{fn_name}: output {i} does not depend on the inputs "
                               f"(strict=True)")


def _shape(xs, as_tuple):
    return tuple(xs) if as_tuple else xs[0]

