"""The differentiable ops as a table, for the higher-order and forward-mode tests: one case per op
variant, with the gpugrad function, the same function in PyTorch, and its inputs (shapes and
domains). Imported by tests/ and tests/gpu/ alike; PyTorch is only touched when a torch function
is called, so the table imports without it."""
import zlib
from collections import namedtuple

import numpy as np

import gpugrad as gg

try:
    import torch as th
except ImportError:  # the torch side of each case is then never called
    th = None

# spec: (shape, domain); domain None: standard normal, "pos": in [0.5, 3), "nz": |x| >= 0.2
Case = namedtuple("Case", "id g t specs")

LABELS = np.array([2, 0, 3])               # cross_entropy's labels for (3, 4) logits
IDX = np.array([0, 2, 0, 1, 2])            # an integer index that repeats rows
MASK = np.array([[True, False, True, True], [False, True, False, True], [True, True, False,
                                                                           False]])


def _tt(a):
    return th.from_numpy(np.asarray(a))


def _lsm(x, dim):
    """log_softmax over several axes in torch (torch's own takes one)."""
    return x - th.logsumexp(x, dim=dim, keepdim=True)


def _same(id_, fn, *specs):
    """A case whose function reads the same in gpugrad and in torch (operators, methods)."""
    return Case(id_, fn, fn, list(specs))


M, V, B = ((3, 4), None), ((4,), None), ((3, 1), None)
P34, P4 = ((3, 4), "pos"), ((4,), "pos")

CASES = [
    # binary arithmetic, with broadcasting both ways and Python-number operands
    _same("add", lambda a, b: a + b, M, M),
    _same("add-bcast", lambda a, b: a + b, M, V),
    _same("add-bcast2", lambda a, b: a + b, ((2, 1, 3), None), ((4, 1), None)),
    _same("add-scalar", lambda a: 2.5 + a, M),
    _same("sub-bcast", lambda a, b: a - b, B, V),
    _same("rsub-scalar", lambda a: 1.5 - a, M),
    _same("mul", lambda a, b: a * b, M, M),
    _same("mul-bcast", lambda a, b: a * b, ((2, 3, 1), None), V),
    _same("mul-self", lambda a: a * a, M),
    _same("div", lambda a, b: a / b, M, P34),
    _same("div-bcast", lambda a, b: a / b, B, P4),
    _same("rdiv-scalar", lambda a: 3.0 / a, P34),
    _same("pow-tensor", lambda a, p: a ** p, P34, P4),
    _same("pow-3", lambda a: a ** 3, M),
    _same("pow-2.5", lambda a: a ** 2.5, P34),
    _same("pow-neg", lambda a: a ** -1.5, P34),
    _same("pow-base-const", lambda p: 1.7 ** p, M),
    _same("neg", lambda a: -a, M),
    # matmul: every promotion and a broadcast batch
    _same("matmul-2d", lambda a, b: a @ b, M, ((4, 2), None)),
    _same("matmul-1d-2d", lambda a, b: a @ b, V, ((4, 2), None)),
    _same("matmul-2d-1d", lambda a, b: a @ b, M, V),
    _same("matmul-1d-1d", lambda a, b: a @ b, V, V),
    _same("matmul-batch-bcast", lambda a, b: a @ b, ((2, 1, 3, 4), None), ((3, 4, 2), None)),
    _same("matmul-batch-1d", lambda a, b: a @ b, ((2, 3, 4), None), V),
    # linear: x @ w + b as one op (gg.nn.Linear's), against torch's x @ w + b
    Case("linear", gg.linear, lambda x, w, b: x @ w + b, [M, ((4, 2), None), ((2,), None)]),
    Case("linear-1d", gg.linear, lambda x, w, b: x @ w + b, [V, ((4, 2), None), ((2,), None)]),
    Case("linear-batch", gg.linear, lambda x, w, b: x @ w + b,
         [((2, 3, 4), None), ((4, 2), None), ((3, 1), None)]),
    Case("linear-bias-bcast-up", gg.linear, lambda x, w, b: x @ w + b,
         [M, ((4, 2), None), ((2, 1, 2), None)]),
    # reductions
    _same("sum-all", lambda a: a.sum(), M),
    _same("sum-axis", lambda a: a.sum(1), ((2, 3, 4), None)),
    _same("sum-tuple-keep", lambda a: a.sum((0, 2), True), ((2, 3, 4), None)),
    _same("mean-all", lambda a: a.mean(), M),
    _same("mean-axis-keep", lambda a: a.mean(0, True), M),
    _same("mean-tuple", lambda a: a.mean((0, 2)), ((2, 3, 4), None)),
    Case("max-all", lambda a: a.max(), lambda a: a.amax(), [M]),
    Case("max-axis", lambda a: a.max(1), lambda a: a.amax(1), [((2, 3, 4), None)]),
    Case("max-tuple-keep", lambda a: a.max((0, 2), True), lambda a: a.amax((0, 2), True),
         [((2, 3, 4), None)]),
    Case("max-none-keep", lambda a: a.max(None, True),
         lambda a: a.amax((0, 1), True), [M]),
    # shapes
    _same("reshape", lambda a: a.reshape(2, 6) * a.reshape(2, 6).sin(), M),
    Case("transpose", lambda a: a.transpose(2, 0, 1) * 1.5, lambda a: a.permute(2, 0, 1) * 1.5,
         [((2, 3, 4), None)]),
    _same("transpose-T", lambda a, b: a.T @ b, M, ((3, 2), None)),
    _same("getitem-slice", lambda a: a[1:, ::2] * a[:2, 1::2], M),
    Case("getitem-int-repeats", lambda a: a[IDX] ** 2, lambda a: a[_tt(IDX)] ** 2, [M]),
    Case("getitem-mask", lambda a: a[MASK].sin(), lambda a: a[_tt(MASK)].sin(), [M]),
    Case("getitem-rows-cols", lambda a: a[IDX[:3], IDX[1:4]] ** 2,
         lambda a: a[_tt(IDX[:3]), _tt(IDX[1:4])] ** 2, [M]),
    Case("astype", lambda a: a.astype("float64") * a, lambda a: a.to(th.float64) * a, [M]),
    Case("to-same-device", lambda a: a.to("cpu") * a.sin(), lambda a: a.to("cpu") * a.sin(),
         [M]),
    # unary elementwise
    _same("exp", lambda a: a.exp(), M),
    _same("log", lambda a: a.log(), P34),
    _same("sin", lambda a: a.sin(), M),
    _same("cos", lambda a: a.cos(), M),
    _same("tanh", lambda a: a.tanh(), M),
    _same("sqrt", lambda a: a.sqrt(), P34),
    _same("abs", lambda a: a.abs() * a, ((3, 4), "nz")),
    _same("sigmoid", lambda a: a.sigmoid(), M),
    _same("relu", lambda a: a.relu() * a, ((3, 4), "nz")),
    # softmax family and the losses
    _same("softmax-last", lambda a: a.softmax(-1), M),
    _same("softmax-0", lambda a: a.softmax(0), M),
    Case("softmax-none", lambda a: a.softmax(None),
         lambda a: a.reshape(-1).softmax(0).reshape(a.shape), [M]),
    Case("softmax-tuple", lambda a: a.softmax((0, 2)), lambda a: _lsm(a, (0, 2)).exp(),
         [((2, 3, 2), None)]),
    _same("log_softmax-last", lambda a: a.log_softmax(-1), M),
    _same("log_softmax-0", lambda a: a.log_softmax(0), M),
    Case("log_softmax-none", lambda a: a.log_softmax(None), lambda a: _lsm(a, (0, 1)), [M]),
    Case("log_softmax-tuple", lambda a: a.log_softmax((0, 2)), lambda a: _lsm(a, (0, 2)),
         [((2, 3, 2), None)]),
    *[Case(f"cross_entropy-{r}", (lambda r: lambda a: gg.cross_entropy(a, LABELS, r))(r),
           (lambda r: lambda a: th.nn.functional.cross_entropy(a, _tt(LABELS),
                                                               reduction=r))(r), [M])
      for r in ("mean", "sum", "none")],
    *[Case(f"mse_loss-{r}", (lambda r: lambda a, b: gg.mse_loss(a, b, r))(r),
           (lambda r: lambda a, b: th.nn.functional.mse_loss(a, b, reduction=r))(r), [M, M])
      for r in ("mean", "sum", "none")],
    # where, broadcast_to, stack
    Case("where", lambda a, b: gg.where(MASK, a, b),
         lambda a, b: th.where(_tt(MASK), a, b), [B, V]),
    Case("where-scalar", lambda a: gg.where(MASK, a * a, 0.0),
         lambda a: th.where(_tt(MASK), a * a, 0.0), [M]),
    Case("broadcast_to", lambda a: gg.broadcast_to(a, (2, 3, 4)) * gg.broadcast_to(a, (2, 3, 4)),
         lambda a: a.broadcast_to((2, 3, 4)) * a.broadcast_to((2, 3, 4)), [B]),
    Case("stack-0", lambda a, b, c: gg.stack([a, b * a, c]),
         lambda a, b, c: th.stack([a, b * a, c]), [M, M, M]),
    Case("stack-last", lambda a, b: gg.stack([a, a * b], axis=-1),
         lambda a, b: th.stack([a, a * b], dim=-1), [M, M]),
    # compositions: a chain of ops, each backward differentiated inside a longer graph
    Case("chain-mlp", lambda x, w, b: gg.cross_entropy((x @ w + b).tanh(), LABELS),
         lambda x, w, b: th.nn.functional.cross_entropy((x @ w + b).tanh(), _tt(LABELS)),
         [M, ((4, 4), None), V]),
    _same("chain-unary", lambda a: (a.sigmoid() * a.exp()).sqrt().log() + a.cos().tanh(), M),
]

IDS = [c.id for c in CASES]


def inputs(case, seed=0):
    """The case's inputs as float64 NumPy arrays, drawn from a generator seeded by its id."""
    rng = np.random.default_rng([zlib.crc32(case.id.encode()), seed])
    arrays = []
    for shape, domain in case.specs:
        a = rng.standard_normal(shape)
        if domain == "pos":
            a = np.abs(a) + 0.5
        elif domain == "nz":
            a = np.sign(a) * (np.abs(a) + 0.2)
        arrays.append(a)
    return arrays


def gg_leaves(arrays, device="cpu"):
    return [gg.tensor(a, device=device, requires_grad=True) for a in arrays]


def th_leaves(arrays):
    return [th.tensor(a, dtype=th.float64, requires_grad=True) for a in arrays]


def like(out, seed):
    """A fixed random array shaped like an output (an upstream gradient, a tangent)."""
    return np.random.default_rng(seed).standard_normal(tuple(out.shape))


def host(x, shape):
    """A gradient as a host array (None, where nothing depends on the input: zeros)."""
    if x is None:
        return np.zeros(shape)
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


def second(grad, leaf, out, xs):
    """d/d(xs, r) of <grad(out, xs, r), w>: every second derivative of the case once, the
    upstream gradient r included (the backward is linear in it). `grad` is gg.autograd.grad or
    torch.autograd.grad; `leaf` makes a leaf requiring grad from an array."""
    r = leaf(like(out, 1))
    gs = grad(out, xs, r, create_graph=True, allow_unused=True)
    s = None
    for i, g in enumerate(gs):
        if g is not None:
            term = (g * leaf(like(g, 10 + i)).detach()).sum()
            s = term if s is None else s + term
    wrt = list(xs) + [r]
    if s is None or not s.requires_grad:  # a linear op: its first derivative is constant
        return [np.zeros(tuple(x.shape)) for x in wrt]
    return [host(h, tuple(x.shape)) for h, x in zip(grad(s, wrt, allow_unused=True), wrt)]


# Edge values where a derivative formula has a removable 0 * inf or a kink: gpugrad's values
# must be PyTorch's there (NaN where PyTorch gives NaN). (id, gpugrad fn, torch fn, arrays)
Z = np.array([0.0, 1.0, -2.0])
EDGES = [
    Case("pow-0-at-0", lambda a: a ** 0, lambda a: a ** 0, [Z]),
    Case("pow-1-at-0", lambda a: a ** 1, lambda a: a ** 1, [Z]),
    Case("pow-2-at-0", lambda a: a ** 2, lambda a: a ** 2, [Z]),
    Case("pow-3-at-0", lambda a: a ** 3, lambda a: a ** 3, [Z]),
    Case("pow-tensor-zeros", lambda a, p: a ** p, lambda a, p: a ** p,
         [np.array([0.0, 0.0, 2.0, 1.5]), np.array([0.0, 2.0, 0.0, 3.0])]),
    Case("pow-base-0", lambda p: 0.0 ** p, lambda p: 0.0 ** p, [np.array([0.0, 1.0, 2.5])]),
    Case("abs-at-0", lambda a: a.abs() * a, lambda a: a.abs() * a, [Z]),
    Case("relu-at-0", lambda a: a.relu() * a, lambda a: a.relu() * a, [Z]),
    Case("max-ties", lambda a: a.max(1) * a.max(), lambda a: a.amax(1) * a.amax(),
         [np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [3.0, -1.0, 3.0]])]),
    Case("sqrt-large", lambda a: a.sqrt() * a, lambda a: a.sqrt() * a,
         [np.array([1e-8, 1.0, 1e8])]),
]
EDGE_IDS = [c.id for c in EDGES]

# An input and its detached alias share one array: the alias is a constant to every derivative
# (central differences cannot see that, so these are checked against PyTorch only).
DETACHED = [
    _same("mul-detached", lambda a: a * a.detach() * a, M),
    _same("detached-mul", lambda a: a.detach() * a * a, M),
    _same("div-detached", lambda a: a.detach() / a + a / a.detach(), P34),
    _same("pow-detached", lambda a: a.detach() ** a + a ** a.detach(), P34),
    _same("matmul-detached", lambda a: (a @ a.detach().T) * (a.detach() @ a.T), M),
    Case("mse-detached", lambda a: gg.mse_loss(a.sin(), a.detach(), "sum"),
         lambda a: th.nn.functional.mse_loss(a.sin(), a.detach(), reduction="sum"), [M]),
]
DETACHED_IDS = [c.id for c in DETACHED]
