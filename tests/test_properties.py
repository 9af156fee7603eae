"""Property-based gradient fuzzing: random shapes (0-d, size-1 and broadcast dimensions, empty
arrays where the op allows them) and random compositions of ops, each checked by gg.gradcheck in
float64 and, where PyTorch imports, against PyTorch's values and gradients.

Hypothesis profiles: "ci" (the default: 25 examples per property, derandomized so CI is
reproducible) and "thorough" (500 random examples), picked with
GPUGRAD_HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_properties.py
"""
import os
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpugrad as gg

try:
    import torch
except ImportError:  # gradcheck still runs; the PyTorch comparison is skipped
    torch = None

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("GPUGRAD_HYPOTHESIS_PROFILE", "ci"))

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)      # empty allowed
NONEMPTY = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
ELEMENTS = st.floats(-2, 2, allow_nan=False, allow_subnormal=False)


def values(shape, domain="any"):
    """float64 arrays with values in the op's smooth domain (gradcheck differentiates
    numerically, so kinks, poles and ties must be farther away than its eps)."""
    return hnp.arrays(np.float64, shape, elements=ELEMENTS).map(DOMAINS[domain])


def _distinct(a):
    # max: no ties (the gradient splits between tied maxima, a finite difference does not)
    ranks = np.argsort(np.argsort(a, axis=None, kind="stable")).reshape(a.shape)
    return (ranks - a.size / 2) * 0.25


DOMAINS = {
    "any": lambda a: a,
    "positive": lambda a: np.abs(a) + 0.5,                      # log, sqrt, pow's base
    "nonzero": lambda a: np.where(a >= 0, a + 0.25, a - 0.25),  # kinks (abs, relu), divisors
    "distinct": _distinct,
}


def check(fn, arrays, torch_fn=None):
    """gradcheck `fn` at `arrays` (float64), then compare values and gradients with PyTorch."""
    assert gg.gradcheck(fn, [gg.tensor(a, requires_grad=True) for a in arrays])
    if torch is None or torch_fn is None:
        return
    ours = [gg.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, tout = fn(*ours), torch_fn(*theirs)
    assert out.shape == tuple(tout.shape) and out.dtype == np.float64
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-9, atol=1e-12)
    r = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(r)
    tout.backward(torch.tensor(r))
    for x, tx in zip(ours, theirs):
        want = np.zeros(x.shape) if tx.grad is None else tx.grad.numpy()
        got = np.zeros(x.shape) if x.grad is None else x.grad.numpy()
        assert got.shape == x.shape
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def T(name):
    """A torch function by name, resolved late (torch may be missing)."""
    return lambda *a, **k: getattr(torch, name)(*a, **k)


# -- single ops on random shapes -----------------------------------------------------------------

BINARY = {  # name: (op, domain of a, domain of b)
    "add": (lambda a, b: a + b, "any", "any"),
    "sub": (lambda a, b: a - b, "any", "any"),
    "mul": (lambda a, b: a * b, "any", "any"),
    "div": (lambda a, b: a / b, "any", "nonzero"),
    "pow": (lambda a, b: a ** b, "positive", "any"),
}


@given(op=st.sampled_from(sorted(BINARY)), data=st.data(),
       shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3,
                                                min_side=0, max_side=3))
def test_binary_ops_broadcast_any_shapes(op, shapes, data):
    fn, dom_a, dom_b = BINARY[op]
    a = data.draw(values(shapes.input_shapes[0], dom_a), label="a")
    b = data.draw(values(shapes.input_shapes[1], dom_b), label="b")
    check(fn, [a, b], fn)


UNARY = {  # name: (gpugrad op, torch op, domain)
    "exp": (gg.exp, T("exp"), "any"), "log": (gg.log, T("log"), "positive"),
    "sin": (gg.sin, T("sin"), "any"), "cos": (gg.cos, T("cos"), "any"),
    "tanh": (gg.tanh, T("tanh"), "any"), "sqrt": (gg.sqrt, T("sqrt"), "positive"),
    "abs": (gg.abs, T("abs"), "nonzero"), "sigmoid": (gg.sigmoid, T("sigmoid"), "any"),
    "relu": (gg.relu, T("relu"), "nonzero"), "neg": (lambda x: -x, lambda x: -x, "any"),
    "rpow": (lambda x: 2.0 ** x, lambda x: 2.0 ** x, "any"),
}


@given(op=st.sampled_from(sorted(UNARY)), shape=SHAPES, data=st.data())
def test_unary_ops_any_shape(op, shape, data):
    fn, tfn, domain = UNARY[op]
    check(fn, [data.draw(values(shape, domain), label="x")], tfn)


def axes(ndim):
    """None, one axis (possibly negative) or a tuple of distinct axes."""
    if ndim == 0:
        return st.none()
    one = st.integers(-ndim, ndim - 1)
    return st.none() | one | st.lists(one, min_size=1, max_size=ndim, unique_by=lambda
                                      ax: ax % ndim).map(tuple)


def _torch_reduce(name, axis, keepdims):
    def fn(x):
        if x.ndim == 0:
            return x * 1.0  # reducing a 0-d tensor returns its element
        dims = tuple(range(x.ndim)) if axis is None else axis
        return getattr(torch, name)(x, dim=dims, keepdim=keepdims)
    return fn


@given(op=st.sampled_from(["sum", "mean", "max"]), data=st.data(), keepdims=st.booleans())
def test_reductions_any_axes(op, data, keepdims):
    # max of an empty tensor raises (tested in test_errors); sum and mean take empty ones
    shape = data.draw(NONEMPTY if op == "max" else SHAPES, label="shape")
    axis = data.draw(axes(len(shape)), label="axis")
    x = data.draw(values(shape, "distinct" if op == "max" else "any"), label="x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy: mean of an empty slice is NaN
        check(lambda t: getattr(t, op)(axis=axis, keepdims=keepdims), [x],
              _torch_reduce("amax" if op == "max" else op, axis, keepdims))


def _reshapes(shape):
    """A different shape with the same number of elements."""
    size = int(np.prod(shape))
    options = [(-1,), (size, 1), (1,) + tuple(shape), tuple(reversed(shape))]
    return st.sampled_from(options)


@given(shape=SHAPES, data=st.data())
def test_reshape_and_transpose(shape, data):
    x = data.draw(values(shape), label="x")
    new = data.draw(_reshapes(shape), label="new shape")
    perm = tuple(data.draw(st.permutations(range(len(shape))), label="perm"))
    check(lambda t: t.reshape(new) * 2.0, [x], lambda t: t.reshape(new) * 2.0)
    check(lambda t: t.transpose(perm) if perm else t.transpose(),
          [x], lambda t: t.permute(perm))


def _indexing_oracle(a, index):
    """NumPy is the oracle (torch has no negative-step slices): forward a[index], backward a
    scatter-add of the projection into a's shape."""
    r = np.random.default_rng(0).standard_normal(np.shape(a[index]))
    grad = np.zeros(a.shape)
    np.add.at(grad, index, r)
    return a[index], r, grad


@given(shape=SHAPES, data=st.data())
def test_basic_indexing(shape, data):
    x = data.draw(values(shape), label="x")
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True), label="index")
    check(lambda t: t[index], [x])
    want, r, grad = _indexing_oracle(x, index)
    t = gg.tensor(x, requires_grad=True)
    out = t[index]
    np.testing.assert_array_equal(out.numpy(), want)
    out.backward(r)
    np.testing.assert_array_equal(t.grad.numpy(), grad)


@given(shape=NONEMPTY.filter(lambda s: len(s) > 0), data=st.data())
def test_integer_array_indexing_accumulates_repeats(shape, data):
    x = data.draw(values(shape), label="x")
    index = data.draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)), label="index")
    check(lambda t: t[index], [x])
    want, r, grad = _indexing_oracle(x, index)
    t = gg.tensor(x, requires_grad=True)
    out = t[index]
    np.testing.assert_array_equal(out.numpy(), want)
    out.backward(r)
    np.testing.assert_allclose(t.grad.numpy(), grad, rtol=1e-12)


@st.composite
def matmul_shapes(draw):
    """NumPy matmul operands: 1-D vectors, matrices and broadcast batches, sizes 0 to 3."""
    n, k, m = draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=2))
    a = (k,) if draw(st.booleans()) else batch.input_shapes[0] + (n, k)
    b = (k,) if draw(st.booleans()) else batch.input_shapes[1] + (k, m)
    return a, b


@given(shapes=matmul_shapes(), data=st.data())
def test_matmul_vectors_batches_and_empty(shapes, data):
    a = data.draw(values(shapes[0]), label="a")
    b = data.draw(values(shapes[1]), label="b")
    check(lambda x, y: x @ y, [a, b], T("matmul"))


@given(shape=NONEMPTY.filter(lambda s: len(s) > 0), data=st.data(),
       op=st.sampled_from(["softmax", "log_softmax"]))
def test_softmax_any_axis(shape, data, op):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = data.draw(values(shape), label="x") * 3.0
    check(lambda t: getattr(gg, op)(t, axis=axis), [x],
          lambda t: getattr(torch, op)(t, dim=axis))


@given(n=st.integers(1, 4), c=st.integers(1, 4), data=st.data(),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_any_size(n, c, data, reduction):
    logits = data.draw(values((n, c)), label="logits") * 3.0
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    check(lambda t: gg.cross_entropy(t, labels, reduction=reduction), [logits],
          lambda t: torch.nn.functional.cross_entropy(t, torch.tensor(labels),
                                                      reduction=reduction))


@given(shape=NONEMPTY, data=st.data(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_mse_loss_any_shape(shape, data, reduction):
    pred, target = data.draw(values(shape), label="pred"), data.draw(values(shape), label="t")
    check(lambda p, t: gg.mse_loss(p, t, reduction=reduction), [pred, target],
          lambda p, t: torch.nn.functional.mse_loss(p, t, reduction=reduction))


# -- random compositions ---------------------------------------------------------------------

class GG:
    """The ops a program may use, spelled for gpugrad (Torch below: the same, for PyTorch)."""
    tanh, sin, sigmoid, exp, log, sqrt = gg.tanh, gg.sin, gg.sigmoid, gg.exp, gg.log, gg.sqrt
    softmax = staticmethod(lambda x: gg.softmax(x, axis=-1))
    reduce = staticmethod(lambda x, name, axis, keep: getattr(x, name)(axis=axis, keepdims=keep))
    flatten = staticmethod(lambda x: x.reshape(-1))
    reverse_axes = staticmethod(lambda x: x.transpose())


class Torch:
    tanh, sin, sigmoid, exp, log, sqrt = (T(n) for n in ("tanh", "sin", "sigmoid", "exp", "log",
                                                          "sqrt"))
    softmax = staticmethod(lambda x: torch.softmax(x, dim=-1))
    reduce = staticmethod(lambda x, name, axis, keep: _torch_reduce(name, axis, keep)(x))
    flatten = staticmethod(lambda x: x.reshape(-1))
    reverse_axes = staticmethod(lambda x: x.permute(tuple(reversed(range(x.ndim)))))


# Smooth and bounded, so random chains stay in gradcheck's comfort zone (no kinks, no overflow).
UNARY_STEPS = {
    "tanh": lambda L, x: L.tanh(x), "sin": lambda L, x: L.sin(x),
    "sigmoid": lambda L, x: L.sigmoid(x), "square": lambda L, x: x * x,
    "exp_tanh": lambda L, x: L.exp(L.tanh(x)), "log1p_sq": lambda L, x: L.log(1.0 + x * x),
    "sqrt1p_sq": lambda L, x: L.sqrt(1.0 + x * x), "neg": lambda L, x: -x,
    "flatten": lambda L, x: L.flatten(x), "reverse_axes": lambda L, x: L.reverse_axes(x),
    "softmax": lambda L, x: L.softmax(x),
}
BINARY_STEPS = {
    "add": lambda L, x, y: x + y, "sub": lambda L, x, y: x - y, "mul": lambda L, x, y: x * y,
    "div": lambda L, x, y: x / (1.0 + y * y),
}


def run_step(L, pool, step):
    kind, name, *args = step
    if kind == "unary":
        return UNARY_STEPS[name](L, pool[args[0]])
    if kind == "binary":
        return BINARY_STEPS[name](L, pool[args[0]], pool[args[1]])
    return L.reduce(pool[args[0]], name, *args[1:])


def run_program(L, program, inputs):
    """Each step reads earlier values by position (inputs first) and appends its result."""
    pool = list(inputs)
    for step in program:
        pool.append(run_step(L, pool, step))
    return pool[-1]


def _broadcasts(a, b):
    try:
        np.broadcast_shapes(a, b)
        return True
    except ValueError:
        return False


@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3,
                                                max_side=3),
       n_inputs=st.integers(1, 3), n_steps=st.integers(1, 7), data=st.data())
def test_random_compositions(shapes, n_inputs, n_steps, data):
    inputs = [data.draw(values(s), label=f"input {i}")
              for i, s in enumerate(shapes.input_shapes[:n_inputs])]
    pool = [gg.tensor(a) for a in inputs]  # shapes as the program grows (no graph needed)
    program = []
    for _ in range(n_steps):
        i = data.draw(st.integers(0, len(pool) - 1), label="operand")
        shape = pool[i].shape
        kind = data.draw(st.sampled_from(["unary", "binary", "reduce"]), label="kind")
        if kind == "unary":
            names = [n for n in sorted(UNARY_STEPS) if shape or n != "softmax"]
            step = ("unary", data.draw(st.sampled_from(names)), i)
        elif kind == "binary":
            partners = [j for j, t in enumerate(pool) if _broadcasts(shape, t.shape)]  # i fits
            step = ("binary", data.draw(st.sampled_from(sorted(BINARY_STEPS))), i,
                    data.draw(st.sampled_from(partners), label="partner"))
        else:
            step = ("reduce", data.draw(st.sampled_from(["sum", "mean"])), i,
                    data.draw(axes(len(shape)), label="axis"), data.draw(st.booleans()))
        program.append(step)
        pool.append(run_step(GG, pool, step))
    check(lambda *xs: run_program(GG, program, xs), inputs,
          lambda *xs: run_program(Torch, program, xs))


# -- in place writes: the saved-value declarations are complete (issue 10) -----------------------

def _grad_after(fn, arrays, write=None):
    """x's gradient of sum(fn(x, c) * r), with `write` (which, new values) applied in place
    between the forward and the backward: None where backward refused (a stale saved value)."""
    x = gg.tensor(arrays[0], requires_grad=True)
    c = gg.tensor(arrays[1])
    y = fn(x, c)
    r = np.random.default_rng(1).standard_normal(y.shape)
    loss = (y * gg.tensor(r)).sum()  # mul saves y itself: write to y only through this check
    target = {"x": x, "c": c, "y": y}.get(write[0]) if write else None
    if target is not None:
        with gg.no_grad():
            target[...] = write[1]
    try:
        loss.backward() if target is not y else (y * gg.tensor(r)).sum().backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
        return None
    return x.grad.numpy()


@given(op=st.sampled_from(sorted(BINARY)), which=st.sampled_from(["x", "c", "y"]),
       shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2,
                                                min_side=1, max_side=3), data=st.data())
def test_a_write_after_forward_is_refused_or_harmless(op, which, shapes, data):
    """Write new values into x, the constant c or the output y after the forward: backward
    either refuses (the op saved that value) or gives exactly the gradient computed with the
    values of the forward. An op that reads a value it did not declare would fail this."""
    fn, dom_a, dom_b = BINARY[op]
    a = data.draw(values(shapes.input_shapes[0], dom_a), label="x")
    b = data.draw(values(shapes.input_shapes[1], dom_b), label="c")
    with np.errstate(all="ignore"):
        shape = {"x": a.shape, "c": b.shape, "y": np.broadcast_shapes(a.shape, b.shape)}[which]
    new = data.draw(values(shape, {"x": dom_a, "c": dom_b, "y": "positive"}[which]), label="new")
    clean = _grad_after(fn, [a, b])
    written = _grad_after(fn, [a, b], (which, new))
    if written is not None:
        np.testing.assert_array_equal(written, clean)


# -- modes per thread under random interleavings (issue 10) -------------------------------------

@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["no_grad", "enable_grad",
                                                               "exit"])), max_size=30))
def test_modes_under_any_interleaving_of_three_threads(actions):
    """Three threads enter and leave no_grad / enable_grad blocks in a random interleaving,
    one action at a time; each thread's mode is always what its own blocks say."""
    import queue
    import threading

    inbox = [queue.Queue() for _ in range(3)]
    report = queue.Queue()

    def worker(me):
        stack, blocks = [], []
        while True:
            action = inbox[me].get()
            if action is None:
                break
            if action == "exit":
                if blocks:
                    blocks.pop().__exit__(None, None, None)
                    stack.pop()
            else:
                ctx = getattr(gg, action)()
                ctx.__enter__()
                blocks.append(ctx)
                stack.append(action == "enable_grad")
            report.put((gg.is_grad_enabled(), stack[-1] if stack else True))
        while blocks:
            blocks.pop().__exit__(None, None, None)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for me, action in actions:
            inbox[me].put(action)
            got, expected = report.get(timeout=10)
            assert got == expected, (me, action)
            assert gg.is_grad_enabled()  # the test's own thread is never affected
    finally:
        for q in inbox:
            q.put(None)
        for t in threads:
            t.join(10)
