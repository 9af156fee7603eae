"""Every differentiable op: gradcheck in float64 on broadcasting shapes, and PyTorch agreement."""
import numpy as np
import pytest

import gpugrad as gg
from conftest import t64

# (name, gpugrad fn, torch fn, input shapes, positive inputs?)
BINARY_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((5,), ())]

BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
    "pow": (lambda a, b: a ** b, lambda a, b: a ** b),
}

UNARY = {
    "exp": (gg.exp, "exp", False),
    "log": (gg.log, "log", True),
    "sin": (gg.sin, "sin", False),
    "cos": (gg.cos, "cos", False),
    "tanh": (gg.tanh, "tanh", False),
    "sqrt": (gg.sqrt, "sqrt", True),
    "abs": (gg.abs, "abs", False),
    "sigmoid": (gg.sigmoid, "sigmoid", False),
    "relu": (gg.relu, "relu", False),
    "neg": (lambda x: -x, "neg", False),
    "softmax0": (lambda x: gg.softmax(x, axis=0), lambda t, x: t.softmax(x, 0), False),
    "softmax": (gg.softmax, lambda t, x: t.softmax(x, -1), False),
    "log_softmax": (gg.log_softmax, lambda t, x: t.log_softmax(x, -1), False),
    "square": (lambda x: x ** 2, lambda t, x: x ** 2, False),
    "rpow": (lambda x: 2.0 ** x, lambda t, x: 2.0 ** x, False),
    "rdiv": (lambda x: 1.0 / x, lambda t, x: 1.0 / x, True),
    "rsub": (lambda x: 3.0 - x, lambda t, x: 3.0 - x, False),
}

REDUCE = {
    "sum": (lambda x: x.sum(), lambda t, x: x.sum()),
    "sum1": (lambda x: x.sum(axis=1), lambda t, x: x.sum(1)),
    "sum_keep": (lambda x: x.sum(axis=(0, 2), keepdims=True), lambda t, x: x.sum((0, 2), True)),
    "mean": (lambda x: x.mean(), lambda t, x: x.mean()),
    "mean_neg": (lambda x: x.mean(axis=-1), lambda t, x: x.mean(-1)),
    "max": (lambda x: x.max(), lambda t, x: x.amax()),
    "max1": (lambda x: x.max(axis=1), lambda t, x: x.amax(1)),
    "max_keep": (lambda x: x.max(axis=0, keepdims=True), lambda t, x: x.amax(0, True)),
    "reshape": (lambda x: x.reshape(6, -1), lambda t, x: x.reshape(6, -1)),
    "reshape_tuple": (lambda x: x.reshape((4, 6)), lambda t, x: x.reshape(4, 6)),
    "transpose": (lambda x: x.transpose(), lambda t, x: x.permute(2, 1, 0)),
    "transpose_axes": (lambda x: x.transpose(1, 0, 2), lambda t, x: x.permute(1, 0, 2)),
    "T": (lambda x: x.T, lambda t, x: x.permute(2, 1, 0)),
    "slice": (lambda x: x[1:, ::2], lambda t, x: x[1:, ::2]),
    "int_index": (lambda x: x[1, 2], lambda t, x: x[1, 2]),
    "neg_step": (lambda x: x[:, ::-1], lambda t, x: x.flip(1)),
    "ellipsis": (lambda x: x[..., 0], lambda t, x: x[..., 0]),
    "fancy_repeat": (lambda x: x[[0, 1, 0, 0]], lambda t, x: x[[0, 1, 0, 0]]),
    "fancy_pairs": (lambda x: x[[0, 1, 1], [2, 0, 2]], lambda t, x: x[[0, 1, 1], [2, 0, 2]]),
}


def _to_torch(torch, t):
    return torch.tensor(t.numpy(), requires_grad=True, dtype=torch.float64)


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=str)
def test_binary_gradcheck(op, shapes, rng):
    a = t64(rng, *shapes[0], positive=op == "pow")
    b = t64(rng, *shapes[1], positive=op in ("div", "pow"))
    assert gg.gradcheck(BINARY[op][0], [a, b])


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=str)
def test_binary_matches_torch(op, shapes, rng, torch):
    a = t64(rng, *shapes[0], positive=op == "pow")
    b = t64(rng, *shapes[1], positive=op in ("div", "pow"))
    ta, tb = _to_torch(torch, a), _to_torch(torch, b)
    out, tout = BINARY[op][0](a, b), BINARY[op][1](ta, tb)
    g = rng.standard_normal(tout.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_gradcheck(op, rng):
    fn, _, positive = UNARY[op]
    x = t64(rng, 3, 4, positive=positive)
    assert gg.gradcheck(fn, [x])


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_matches_torch(op, rng, torch):
    fn, tfn, positive = UNARY[op]
    x = t64(rng, 3, 4, positive=positive)
    tx = _to_torch(torch, x)
    out = fn(x)
    tout = getattr(torch, tfn)(tx) if isinstance(tfn, str) else tfn(torch, tx)
    g = rng.standard_normal(tout.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("op", sorted(REDUCE))
def test_reduce_shape_gradcheck(op, rng):
    assert gg.gradcheck(REDUCE[op][0], [t64(rng, 2, 3, 4)])


@pytest.mark.parametrize("op", sorted(REDUCE))
def test_reduce_shape_matches_torch(op, rng, torch):
    x = t64(rng, 2, 3, 4)
    tx = _to_torch(torch, x)
    out, tout = REDUCE[op][0](x), REDUCE[op][1](torch, tx)
    assert out.shape == tuple(tout.shape)
    g = rng.standard_normal(tout.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-13)


def test_max_splits_gradient_among_ties(torch):
    x = gg.tensor([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]], dtype="float64", requires_grad=True)
    tx = torch.tensor(x.numpy(), requires_grad=True)
    x.max(axis=1).sum().backward()
    tx.amax(1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0.5, 0.5], [0.5, 0, 0.5]])
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


MATMUL_SHAPES = [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                 ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((3, 4), (2, 4, 5))]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_gradcheck(shapes, rng):
    assert gg.gradcheck(gg.matmul, [t64(rng, *shapes[0]), t64(rng, *shapes[1])])


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_matches_torch(shapes, rng, torch):
    a, b = t64(rng, *shapes[0]), t64(rng, *shapes[1])
    ta, tb = _to_torch(torch, a), _to_torch(torch, b)
    out, tout = a @ b, ta @ tb
    g = rng.standard_normal(tout.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-12)


LINEAR_SHAPES = [((3, 4), (4, 5), (5,)), ((4,), (4, 5), (5,)), ((2, 3, 4), (4, 5), (3, 1)),
                 ((3, 4), (4, 5), ()), ((3, 4), (4, 5), (2, 1, 5))]


@pytest.mark.parametrize("shapes", LINEAR_SHAPES, ids=str)
def test_linear_gradcheck_and_torch(shapes, rng, torch):
    x, w, b = (t64(rng, *s) for s in shapes)
    assert gg.gradcheck(gg.linear, [x, w, b])
    out = gg.linear(x, w, b)
    tx, tw, tb = (_to_torch(torch, t) for t in (x, w, b))
    tout = tx @ tw + tb
    g = rng.standard_normal(tout.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-12)
    for t, tt in ((x, tx), (w, tw), (b, tb)):
        np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=1e-12)


def test_linear_equals_matmul_plus_bias_bitwise(rng):
    """One op, the same float32 values as x @ w + b: the bias is added into the product in
    place, the same additions; a float64 bias still promotes, as `+` does."""
    x, w = gg.tensor(rng.standard_normal((6, 5)), dtype="float32"), gg.tensor(
        rng.standard_normal((5, 3)), dtype="float32", requires_grad=True)
    b = gg.tensor(rng.standard_normal(3), dtype="float32", requires_grad=True)
    out = gg.linear(x, w, b)
    assert out._ctx.name == "linear" and out.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), (x @ w + b).numpy())
    b64 = gg.tensor(rng.standard_normal(3), requires_grad=True)
    assert gg.linear(x, w, b64).dtype == (x @ w + b64).dtype
    assert gg.linear(x, w).numpy().tolist() == (x @ w).numpy().tolist()  # b=None: a matmul
    with pytest.raises(gg.ShapeError, match=r"linear: the bias of shape \(4,\)"):
        gg.linear(x, w, gg.zeros(4))
    with pytest.raises(gg.ShapeError, match="matmul: inner sizes differ"):
        gg.linear(x, gg.zeros(4, 3), b)


def test_nn_linear_is_one_op(rng):
    layer = gg.nn.Linear(5, 3)
    out = layer(gg.tensor(rng.standard_normal((2, 5)), dtype="float32"))
    assert out._ctx.name == "linear"
    assert gg.nn.Linear(5, 3, bias=False)(gg.zeros(2, 5))._ctx.name == "matmul"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(reduction, rng, torch):
    logits = t64(rng, 6, 5)
    labels = np.array([0, 4, 2, 2, 1, 3])
    assert gg.gradcheck(lambda z: gg.cross_entropy(z, labels, reduction=reduction), [logits])
    tl = _to_torch(torch, logits)
    out = gg.cross_entropy(logits, gg.tensor(labels), reduction=reduction)
    tout = torch.nn.functional.cross_entropy(tl, torch.tensor(labels), reduction=reduction)
    g = rng.standard_normal(tout.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(logits.grad.numpy(), tl.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(reduction, rng, torch):
    pred, target = t64(rng, 4, 3), t64(rng, 4, 3)
    assert gg.gradcheck(lambda p, t: gg.mse_loss(p, t, reduction=reduction), [pred, target])
    tp, tt = _to_torch(torch, pred), _to_torch(torch, target)
    out = gg.mse_loss(pred, target, reduction=reduction)
    tout = torch.nn.functional.mse_loss(tp, tt, reduction=reduction)
    g = rng.standard_normal(tout.shape)
    out.backward(g)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(pred.grad.numpy(), tp.grad.numpy(), rtol=1e-13)
    np.testing.assert_allclose(target.grad.numpy(), tt.grad.numpy(), rtol=1e-13)


def test_float32_cross_entropy_matches_torch(rng, torch):
    x = rng.standard_normal((64, 10)).astype(np.float32) * 5
    y = rng.integers(0, 10, 64)
    logits = gg.tensor(x, requires_grad=True)
    tl = torch.tensor(x, requires_grad=True)
    loss = gg.cross_entropy(logits, y)
    tloss = torch.nn.functional.cross_entropy(tl, torch.tensor(y))
    loss.backward()
    tloss.backward()
    assert loss.dtype == np.float32 and logits.grad.dtype == np.float32
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-6)
    np.testing.assert_allclose(logits.grad.numpy(), tl.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_extreme_values_stay_finite():
    x = gg.tensor([[-1e4, 0.0, 1e4], [1e4, -1e4, 0.0]], requires_grad=True)
    loss = gg.cross_entropy(x, [0, 1], reduction="none")
    loss.sum().backward()
    np.testing.assert_array_equal(loss.numpy(), [2e4, 2e4])
    np.testing.assert_array_equal(x.grad.numpy(), [[-1, 0, 1], [1, -1, 0]])
    assert np.isfinite(gg.softmax(x).numpy()).all()
    assert np.isfinite(gg.log_softmax(x).numpy()).all()


def test_sigmoid_saturates_at_float_max():
    big = float(np.finfo(np.float32).max)
    x = gg.tensor([-big, -1e4, 0.0, 1e4, big], requires_grad=True)
    s = gg.sigmoid(x)
    s.sum().backward()
    np.testing.assert_array_equal(s.numpy(), [0, 0, 0.5, 1, 1])
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 0.25, 0, 0])


def test_composite_expression_gradcheck(rng):
    # a small network-like composition: broadcasting, fan-out, reductions and indexing together
    w, b, x = t64(rng, 4, 3), t64(rng, 3), t64(rng, 5, 4)

    def f(w, b, x):
        h = gg.tanh(x @ w + b)
        return (gg.log_softmax(h * h.mean(axis=0) + h[:, :1]) ** 2).sum()
    assert gg.gradcheck(f, [w, b, x])
