"""Higher-order reverse mode (issue 12): backward(create_graph=True), gg.autograd.grad and the
functional API (jacobian, hessian, vjp, hvp), checked for every op by gg.gradgradcheck (central
differences of the analytic first derivatives) and against PyTorch, which is only an oracle here
(the PyTorch comparisons skip where it is not installed). Float64 throughout."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import autograd as ag
from gpugrad import nn, optim

from _ad_cases import (CASES, DETACHED, DETACHED_IDS, EDGE_IDS, EDGES, IDS, gg_leaves, inputs,
                       second, th_leaves)

# PyTorch's own warning on backward(create_graph=True) (a parameter-gradient reference cycle)
pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")

TOL = dict(rtol=1e-10, atol=1e-10)


def _close(got, want, **tol):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **(tol or TOL))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradgradcheck(case):
    assert gg.gradgradcheck(case.g, gg_leaves(inputs(case)))


@pytest.mark.parametrize("case", CASES + DETACHED, ids=IDS + DETACHED_IDS)
def test_second_derivatives_match_torch(case, torch):
    arrays = inputs(case)
    xs = gg_leaves(arrays)
    got = second(ag.grad, lambda a: gg.tensor(a, requires_grad=True), case.g(*xs), xs)
    ts = th_leaves(arrays)
    want = second(torch.autograd.grad,
                   lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True),
                   case.t(*ts), ts)
    for g, w in zip(got, want, strict=True):
        _close(g, w)


@pytest.mark.parametrize("case", EDGES, ids=EDGE_IDS)
def test_second_derivatives_at_edges_match_torch(case, torch):
    arrays = case.specs
    xs = gg_leaves(arrays)
    with np.errstate(all="ignore"):
        got = second(ag.grad, lambda a: gg.tensor(a, requires_grad=True), case.g(*xs), xs)
    ts = th_leaves(arrays)
    want = second(torch.autograd.grad,
                   lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True),
                   case.t(*ts), ts)
    # with respect to the inputs only: d/dr of pow's masked local gradient is 0 here, where
    # PyTorch's formula (the upstream multiplied inside its where) gives NaN
    for g, w in zip(got[:-1], want[:-1], strict=True):
        _close(g, w, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert np.isfinite(got[-1]).all()


def test_astype_through_float32_matches_torch(torch):
    """A cast down and back: each dtype's derivatives stay in their dtype, to float32 rounding."""
    a = np.array([0.5, -1.0, 2.0])
    results = []
    for lib, grad, leaf in ((gg, ag.grad, lambda z: gg.tensor(z, requires_grad=True)),
                            (torch, torch.autograd.grad,
                             lambda z: torch.tensor(z, requires_grad=True))):
        x = leaf(a)
        y = (x.to(torch.float32) if lib is torch else x.astype("float32")).sin()
        y = (y.to(torch.float64) if lib is torch else y.astype("float64")) * x
        (g,) = grad(y.sum(), [x], create_graph=True)
        assert g.dtype == (torch.float64 if lib is torch else np.float64)
        (h,) = grad((g * g).sum(), [x])
        results.append((g.detach().numpy(), h.numpy()))
    for got, want in zip(*results, strict=True):
        _close(got, want, rtol=1e-6, atol=1e-7)


def _nth_derivative(grad, f, x, n):
    y = f(x)
    for _ in range(n):
        (y,) = grad(y.sum(), [x], create_graph=True)
    return y


def test_third_and_fourth_order_match_torch(torch):
    a = np.linspace(-1.5, 1.5, 7)
    x = gg.tensor(a, requires_grad=True)
    tx = torch.tensor(a, requires_grad=True)

    def f(v):
        return (v.tanh() * 2).sin() * v
    for n in (3, 4):
        _close(_nth_derivative(ag.grad, f, x, n).numpy(),
               _nth_derivative(torch.autograd.grad, f, tx, n).detach().numpy())


def test_third_order_against_closed_form():
    # d^3/dx^3 sin(x) = -cos(x), through the backward of the backward of the backward
    a = np.linspace(-2, 2, 5)
    x = gg.tensor(a, requires_grad=True)
    _close(_nth_derivative(ag.grad, gg.sin, x, 3).numpy(), -np.cos(a))


# -- backward(create_graph=True) and gg.autograd.grad semantics ---------------------------------

def _x(values=(0.5, -1.0, 2.0)):
    return gg.tensor(np.array(values, dtype=np.float64), requires_grad=True)


def test_create_graph_grad_requires_grad_and_backpropagates(torch):
    a = np.array([0.5, -1.0, 2.0])
    x = gg.tensor(a, requires_grad=True)
    (x ** 3).sum().backward(create_graph=True)
    assert x.grad.requires_grad and not x.grad.is_leaf
    _close(x.grad.numpy(), 3 * a ** 2)
    (x.grad * x.grad).sum().backward()  # accumulates d/dx (3x^2)^2 = 36 x^3 into x.grad
    tx = torch.tensor(a, requires_grad=True)
    (tx ** 3).sum().backward(create_graph=True)
    (tx.grad * tx.grad).sum().backward()
    _close(x.grad.numpy(), tx.grad.detach().numpy())
    _close(x.grad.numpy(), 3 * a ** 2 + 36 * a ** 3)


def test_create_graph_grads_accumulate_connected_to_both_graphs(torch):
    a = np.array([0.5, -1.0, 2.0])
    x = gg.tensor(a, requires_grad=True)
    tx = torch.tensor(a, requires_grad=True)
    for v in (x, tx):
        (v.sin()).sum().backward(create_graph=True)
        (v * v * v).sum().backward(create_graph=True)
    _close(x.grad.numpy(), np.cos(a) + 3 * a ** 2)
    # the sum is one graph: its derivative is the sum of both second derivatives
    (h,) = ag.grad(x.grad.sum(), [x])
    (th_,) = torch.autograd.grad(tx.grad.sum(), [tx])
    _close(h.numpy(), -np.sin(a) + 6 * a)
    _close(h.numpy(), th_.numpy())


def test_plain_backward_after_create_graph_leaves_the_recorded_grad_intact():
    # x.grad from create_graph may be part of another graph; a later plain backward sums into
    # a new .grad (PyTorch adds in place and then refuses to differentiate z)
    x = gg.tensor([0.3, 0.7], dtype="float64", requires_grad=True)
    (x ** 3).sum().backward(create_graph=True)
    first = x.grad
    z = (first * x).sum()  # 3x^3 summed: dz/dx = 9x^2
    (x ** 2).sum().backward()
    assert x.grad is not first and not x.grad.requires_grad
    np.testing.assert_allclose(x.grad.numpy(), 3 * x.numpy() ** 2 + 2 * x.numpy())
    np.testing.assert_allclose(first.numpy(), 3 * x.numpy() ** 2)
    np.testing.assert_allclose(gg.autograd.grad(z, x)[0].numpy(), 9 * x.numpy() ** 2)


def test_retain_graph_defaults_to_create_graph():
    x = _x()
    y = (x.exp() * x).sum()
    y.backward(create_graph=True)
    first = x.grad.numpy().copy()
    y.backward()  # the graph was retained: a second backward works and accumulates
    _close(x.grad.numpy(), 2 * first)


def test_create_graph_without_retain_graph_frees_the_first_graph(torch):
    a = np.array([0.5, -1.0, 2.0])
    # exp's backward reads its output, a node of the first graph: freed, as in PyTorch
    tx = torch.tensor(a, requires_grad=True)
    tx.exp().sum().backward(create_graph=True, retain_graph=False)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        tx.grad.sum().backward()
    x = gg.tensor(a, requires_grad=True)
    y = x.exp().sum()
    y.backward(create_graph=True, retain_graph=False)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        x.grad.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()


def test_create_graph_without_retain_graph_keeps_what_does_not_reach_it():
    # x^3's gradient 3x^2 is made of new ops on the leaf x: differentiable after the free
    x = _x()
    (x ** 3).sum().backward(create_graph=True, retain_graph=False)
    (h,) = ag.grad(x.grad.sum(), [x])
    _close(h.numpy(), 6 * x.numpy())


def test_autograd_grad_leaves_dot_grad_alone():
    x, w = _x(), _x((1.0, 2.0, 3.0))
    (x * w).sum().backward()
    before = x.grad.numpy().copy()
    y = (x * w * x).sum()
    (g,) = ag.grad(y, [x], create_graph=True)
    ag.grad(g.sum(), [x, w])
    _close(x.grad.numpy(), before)
    assert w.grad.numpy().tolist() == x.numpy().tolist()  # only the first backward's
    z = _x()
    ag.grad((z * z).sum(), z)
    assert z.grad is None


def test_allow_unused():
    x, unused = _x(), _x()
    y = (x * x).sum()
    with pytest.raises(RuntimeError, match="input 1 .* not used"):
        ag.grad(y, [x, unused], retain_graph=True)
    gx, gu = ag.grad(y, [x, unused], allow_unused=True)
    assert gu is None
    _close(gx.numpy(), 2 * x.numpy())


def test_grad_with_respect_to_a_non_leaf(torch):
    a = np.array([0.5, -1.0, 2.0])
    x = gg.tensor(a, requires_grad=True)
    h = x * 2
    y = (h.sin() * x).sum() + (h * h).sum()  # h used twice: its gradient is the sum
    gh, gx = ag.grad(y, [h, x], create_graph=True)
    _close(gh.numpy(), np.cos(2 * a) * a + 4 * a)
    (hh,) = ag.grad(gh.sum(), [x])  # d/dx of cos(2x) x + 2 h
    tx = torch.tensor(a, requires_grad=True)
    th_ = tx * 2
    tgh, tgx = torch.autograd.grad((th_.sin() * tx).sum() + (th_ * th_).sum(), [th_, tx],
                                   create_graph=True)
    _close(gx.numpy(), tgx.detach().numpy())
    _close(hh.numpy(), torch.autograd.grad(tgh.sum(), [tx])[0].numpy())


def test_multiple_outputs_with_grad_outputs(torch):
    a = np.array([0.5, -1.0, 2.0])
    u1, u2 = np.array([1.0, 2.0, -1.0]), np.array(3.0)
    x = gg.tensor(a, requires_grad=True)
    (g,) = ag.grad([x.sin() * x, (x * x).sum()], [x], [gg.tensor(u1), gg.tensor(u2)],
                   create_graph=True)
    (h,) = ag.grad(g.sum(), [x])
    tx = torch.tensor(a, requires_grad=True)
    (tg,) = torch.autograd.grad([tx.sin() * tx, (tx * tx).sum()], [tx],
                                [torch.tensor(u1), torch.tensor(u2)], create_graph=True)
    (th_,) = torch.autograd.grad(tg.sum(), [tx])
    _close(g.numpy(), tg.detach().numpy())
    _close(h.numpy(), th_.numpy())


def test_grad_outputs_requiring_grad_are_differentiated(torch):
    a, w = np.array([[0.5, -1.0], [2.0, 0.3]]), np.array([[1.0, -2.0], [0.5, 1.5]])
    x = gg.tensor(a, requires_grad=True)
    u = gg.tensor(np.ones((2, 2)), requires_grad=True)
    (g,) = ag.grad(x.tanh() @ x, [x], u, create_graph=True)
    gx, gu = ag.grad((g * gg.tensor(w)).sum(), [x, u])
    tx = torch.tensor(a, requires_grad=True)
    tu = torch.ones((2, 2), dtype=torch.float64, requires_grad=True)
    (tg,) = torch.autograd.grad(tx.tanh() @ tx, [tx], tu, create_graph=True)
    tgx, tgu = torch.autograd.grad((tg * torch.tensor(w)).sum(), [tx, tu])
    _close(gx.numpy(), tgx.numpy())
    _close(gu.numpy(), tgu.numpy())  # d/du <J^T u, w> = J w


@pytest.mark.parametrize("seed_kind", ["none", "array", "tensor"])
def test_create_graph_grads_share_no_memory(seed_kind):
    x, y = _x(), _x((4.0, 5.0, 6.0))
    z = x + y
    seed = {"none": None, "array": np.ones(3), "tensor": gg.ones(3, dtype="float64")}[seed_kind]
    if seed is None:
        z = z.sum()
    z.backward(seed, create_graph=True)
    assert not np.shares_memory(x.grad.data, y.grad.data)
    assert x.grad is not y.grad
    if seed is not None:
        seed_data = seed.data if isinstance(seed, gg.Tensor) else seed
        assert x.grad is not seed and y.grad is not seed
        assert not np.shares_memory(x.grad.data, seed_data)
        assert not np.shares_memory(y.grad.data, seed_data)
    _close(x.grad.numpy(), np.ones(3))
    # ag.grad likewise: two results, two arrays
    gx, gy = ag.grad((x + y).sum(), [x, y], create_graph=True)
    assert not np.shares_memory(gx.data, gy.data)


def test_inplace_write_after_forward_detected_under_create_graph():
    x = _x()
    c = gg.tensor(np.array([1.0, 2.0, 3.0]))
    y = (x * c).sin().sum()
    c[0] = 7.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(create_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        ag.grad(y, [x], create_graph=True)
    assert x.grad is None


def test_inplace_write_before_differentiating_the_gradient_detected(torch):
    # the recorded backward of x * x * c saves x: writing x before differentiating it again
    # is refused, as PyTorch refuses it
    for lib, make in ((gg, lambda a: gg.tensor(a, requires_grad=True)),
                      (torch, lambda a: torch.tensor(a, requires_grad=True))):
        x, c = make(np.array([0.5, -1.0, 2.0])), make(np.array([1.0, 2.0, 3.0]))
        grad = ag.grad if lib is gg else torch.autograd.grad
        (g,) = grad((x * x * c).sum(), [x], create_graph=True)  # 2 x c
        with lib.no_grad():
            x[1] = 0.0
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            grad(g.sum(), [x])


def test_forward_under_no_grad_is_a_clear_error():
    x = _x()
    with gg.no_grad():
        y = (x * x).sum()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward(create_graph=True)
    with pytest.raises(RuntimeError, match="output 0 does not require grad"):
        ag.grad(y, [x], create_graph=True)


def test_first_derivative_made_under_no_grad_cannot_be_differentiated():
    x = _x()
    y = (x * x * x).sum()
    with gg.no_grad():
        (g,) = ag.grad(y, [x], create_graph=True)  # the sweep records: create_graph wins
    (h,) = ag.grad(g.sum(), [x])
    _close(h.numpy(), 6 * x.numpy())


class _Cube(gg.Function):
    """a^3 with a correct backward; `frozen` reads the input as a constant array in it, so the
    first derivative is right and the second misses its 6 a term."""
    saved = (0,)
    frozen = False

    def forward(self, a):
        self.a = a
        return a * a * a

    def backward(self, upstream):
        a = self.bk.xp.asarray(self.a) if self.frozen else self.a
        return (upstream * 3 * a * a,)


def test_gradgradcheck_catches_a_backward_that_is_not_differentiable():
    x = gg.tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)
    assert gg.gradcheck(lambda a: _Cube.apply(a, frozen=True), [x])
    assert gg.gradgradcheck(lambda a: _Cube.apply(a), [x])
    with pytest.raises(gg.GradcheckError, match="input 0 .* numeric .* vs analytic"):
        gg.gradgradcheck(lambda a: _Cube.apply(a, frozen=True), [x])


def test_gradgradcheck_arguments():
    x = gg.tensor(np.array([0.5, -1.0], dtype=np.float32), requires_grad=True)
    assert gg.gradgradcheck(lambda a: a.sin() * a, x)  # float32 inputs are checked in float64
    assert gg.gradgradcheck(lambda a, c: a * a * c, [x, gg.tensor(np.array([2.0, 3.0]))],
                            grad_outputs=np.array([1.0, -2.0]))
    with pytest.raises(ValueError, match="no input requires grad"):
        gg.gradgradcheck(gg.sin, [gg.tensor(np.ones(2))])
    with pytest.raises(ValueError, match="grad_outputs has shape"):
        gg.gradgradcheck(gg.sin, [x], grad_outputs=np.ones(3))


# -- torch.autograd.functional ------------------------------------------------------------------

A = np.array([[0.5, -1.0, 2.0], [0.3, 0.8, -0.4]])
B = np.array([0.7, -0.2, 1.1])


def _f_single(x):
    return (x.sin() * x).sum(0)


def _f_pair(x, b):
    return (x * b).tanh() @ b, (x * x).sum()


@pytest.mark.parametrize("create_graph", [False, True])
def test_jacobian_single(torch, create_graph):
    j = ag.jacobian(_f_single, gg.tensor(A), create_graph=create_graph)
    tj = torch.autograd.functional.jacobian(_f_single, torch.tensor(A))
    assert j.shape == (3,) + A.shape
    _close(j.numpy(), tj.numpy())


def test_jacobian_tuples(torch):
    j = ag.jacobian(_f_pair, (gg.tensor(A), gg.tensor(B)))
    tj = torch.autograd.functional.jacobian(_f_pair, (torch.tensor(A), torch.tensor(B)))
    assert isinstance(j, tuple) and len(j) == 2 and all(len(row) == 2 for row in j)
    assert j[0][0].shape == (2,) + A.shape and j[1][1].shape == B.shape
    for row, trow in zip(j, tj, strict=True):
        for g, t in zip(row, trow, strict=True):
            _close(g.numpy(), t.numpy())


def test_jacobian_unused_input_is_zeros(torch):
    def f(x, unused):
        return x.exp()
    j = ag.jacobian(f, (gg.tensor(B), gg.tensor(A)))
    tj = torch.autograd.functional.jacobian(f, (torch.tensor(B), torch.tensor(A)))
    assert j[1].shape == (3,) + A.shape and not j[1].numpy().any()
    for g, t in zip(j, tj, strict=True):
        _close(g.numpy(), t.numpy())


def test_jacobian_create_graph_is_differentiable(torch):
    x = gg.tensor(B, requires_grad=True)
    j = ag.jacobian(lambda v: v.sin() * v.sum(), x, create_graph=True)
    (h,) = ag.grad(j.sum(), [x])
    tx = torch.tensor(B, requires_grad=True)
    tj = torch.autograd.functional.jacobian(lambda v: v.sin() * v.sum(), tx, create_graph=True)
    _close(h.numpy(), torch.autograd.grad(tj.sum(), [tx])[0].numpy())


def _scalar_pair(x, b):
    return ((x * b).tanh() @ b).sum() + (x * x * x).sum() * b.sum()


def test_hessian_single_and_tuple(torch):
    h = ag.hessian(lambda x: (x.sin() * x).sum() ** 2, gg.tensor(A))
    th_ = torch.autograd.functional.hessian(lambda x: (x.sin() * x).sum() ** 2, torch.tensor(A))
    assert h.shape == A.shape + A.shape
    _close(h.numpy(), th_.numpy())
    hs = ag.hessian(_scalar_pair, (gg.tensor(A), gg.tensor(B)))
    ths = torch.autograd.functional.hessian(_scalar_pair, (torch.tensor(A), torch.tensor(B)))
    assert hs[0][1].shape == A.shape + B.shape and hs[1][0].shape == B.shape + A.shape
    for row, trow in zip(hs, ths, strict=True):
        for g, t in zip(row, trow, strict=True):
            _close(g.numpy(), t.numpy())


def test_hessian_unused_input_is_zeros():
    h = ag.hessian(lambda x, unused: (x ** 3).sum(), (gg.tensor(B), gg.tensor(A)))
    _close(h[0][0].numpy(), np.diag(6 * B))
    for block, shape in ((h[0][1], B.shape + A.shape), (h[1][0], A.shape + B.shape),
                         (h[1][1], A.shape + A.shape)):
        assert block.shape == shape and not block.numpy().any()


def test_vjp(torch):
    v = np.array([1.0, -2.0, 0.5])
    out, g = ag.vjp(_f_single, gg.tensor(A), gg.tensor(v))
    tout, tg = torch.autograd.functional.vjp(_f_single, torch.tensor(A), torch.tensor(v))
    assert not out.requires_grad and g.shape == A.shape
    _close(out.numpy(), tout.numpy())
    _close(g.numpy(), tg.numpy())
    vs = (gg.tensor(np.array([1.0, 2.0])), gg.tensor(np.array(-1.5)))
    outs, gs = ag.vjp(_f_pair, (gg.tensor(A), gg.tensor(B)), vs)
    touts, tgs = torch.autograd.functional.vjp(
        _f_pair, (torch.tensor(A), torch.tensor(B)), tuple(torch.tensor(v.numpy()) for v in vs))
    assert isinstance(outs, tuple) and isinstance(gs, tuple)
    for a, b in zip(outs + gs, touts + tgs, strict=True):
        _close(a.numpy(), b.numpy())


def test_vjp_scalar_output_default_v_and_unused_zeros():
    out, (gx, gu) = ag.vjp(lambda x, u: (x * x).sum(), (gg.tensor(B), gg.tensor(A)))
    _close(out.numpy(), (B * B).sum())
    _close(gx.numpy(), 2 * B)
    assert gu.shape == A.shape and not gu.numpy().any()
    with pytest.raises(RuntimeError, match="v can be omitted"):
        ag.vjp(lambda x: x * 2, gg.tensor(B))


def test_hvp(torch):
    v = np.linspace(-1, 1, A.size).reshape(A.shape)
    f = lambda x: (x.sin() * x).sum() ** 2  # noqa: E731
    out, hv = ag.hvp(f, gg.tensor(A), gg.tensor(v))
    tout, thv = torch.autograd.functional.hvp(f, torch.tensor(A), torch.tensor(v))
    assert isinstance(hv, gg.Tensor) and hv.shape == A.shape and not out.requires_grad
    _close(out.numpy(), tout.numpy())
    _close(hv.numpy(), thv.numpy())
    vs = (gg.tensor(v), gg.tensor(B[::-1].copy()))
    out, hvs = ag.hvp(_scalar_pair, (gg.tensor(A), gg.tensor(B)), vs)
    tout, thvs = torch.autograd.functional.hvp(
        _scalar_pair, (torch.tensor(A), torch.tensor(B)), tuple(torch.tensor(v.numpy())
                                                                 for v in vs))
    assert isinstance(hvs, tuple) and hvs[0].shape == A.shape and hvs[1].shape == B.shape
    for a, b in zip(hvs, thvs, strict=True):
        _close(a.numpy(), b.numpy())


def test_hvp_unused_and_linear_inputs_give_zeros():
    # b enters linearly only, u not at all: their rows of H v vanish
    out, (hx, hb, hu) = ag.hvp(lambda x, b, u: (x ** 3).sum() + b.sum(),
                               (gg.tensor(B), gg.tensor(B), gg.tensor(A)),
                               (gg.tensor(np.ones(3)), gg.tensor(np.ones(3)),
                                gg.tensor(np.ones(A.shape))))
    _close(hx.numpy(), 6 * B)
    assert not hb.numpy().any() and hu.shape == A.shape and not hu.numpy().any()


def test_functional_api_create_graph_is_differentiable(torch):
    a, v = B, np.array([1.0, -1.0, 0.5])

    def f(x):
        return (x ** 4).sum() + (x.sin() * x).sum()
    results = []
    for functional, grad, make in (
            (ag, ag.grad, lambda z: gg.tensor(z, requires_grad=True)),
            (torch.autograd.functional, torch.autograd.grad,
             lambda z: torch.tensor(z, requires_grad=True))):
        x, vt = make(a), make(v)
        h = functional.hessian(f, x, create_graph=True)
        _, hv = functional.hvp(f, x, vt, create_graph=True)
        _, g = functional.vjp(lambda z: z.exp() * z, x, vt, create_graph=True)
        results.append([d.detach().numpy() for d in
                        grad(h.sum() + (hv * hv).sum() + (g * g).sum(), [x, vt])])
    for got, want in zip(*results, strict=True):
        _close(got, want)


def test_functional_api_keeps_inputs_untouched():
    x = gg.tensor(B, requires_grad=True)
    ag.hessian(lambda v: (v ** 3).sum(), x)
    ag.hvp(lambda v: (v ** 3).sum(), x, gg.tensor(np.ones(3)))
    assert x.grad is None and x.is_leaf


# -- an MLP's Hessian-vector product, and a gradient penalty trained ----------------------------

SIZES = [8, 16, 16, 4]


def _mlp_params(seed=0):
    rng = np.random.default_rng(seed)
    params = []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:], strict=True):
        params += [rng.standard_normal((n_in, n_out)) / np.sqrt(n_in),
                   rng.standard_normal(n_out) * 0.1]
    return params


def _mlp(x, params, act):
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i + 2 < len(params):
            h = act(h)
    return h


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_mlp_loss_hvp_matches_torch(torch, act):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, SIZES[0]))
    y = rng.integers(0, SIZES[-1], 6)
    params = _mlp_params()
    v = [rng.standard_normal(p.shape) for p in params]

    def loss(*ps):
        return gg.cross_entropy(_mlp(gg.tensor(x), ps, getattr(gg, act)), y)

    def tloss(*ps):
        return torch.nn.functional.cross_entropy(
            _mlp(torch.tensor(x), ps, getattr(torch, act)), torch.tensor(y))
    out, hv = ag.hvp(loss, tuple(gg.tensor(p) for p in params), tuple(gg.tensor(a) for a in v))
    tout, thv = torch.autograd.functional.hvp(tloss, tuple(torch.tensor(p) for p in params),
                                              tuple(torch.tensor(a) for a in v))
    _close(out.numpy(), tout.numpy())
    for a, b in zip(hv, thv, strict=True):
        _close(a.numpy(), b.numpy())


def test_gradient_penalty_training_matches_torch(torch):
    """loss = CE + lam ||d CE / d x||^2 (the input-gradient norm, recorded with create_graph),
    three SGD steps from the same weights in gpugrad and PyTorch."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((10, SIZES[0]))
    y = rng.integers(0, SIZES[-1], 10)
    lam, lr = 0.5, 0.1
    params = [gg.tensor(p, requires_grad=True) for p in _mlp_params(3)]
    tparams = [torch.tensor(p, requires_grad=True) for p in _mlp_params(3)]
    opt = optim.SGD(params, lr=lr, momentum=0.9)
    topt = torch.optim.SGD(tparams, lr=lr, momentum=0.9)
    losses = []
    for _ in range(3):
        xi = gg.tensor(x, requires_grad=True)
        ce = gg.cross_entropy(_mlp(xi, params, gg.tanh), y)
        (gx,) = ag.grad(ce, [xi], create_graph=True)
        total = ce + lam * (gx * gx).sum()
        opt.zero_grad()
        total.backward()
        opt.step()
        txi = torch.tensor(x, requires_grad=True)
        tce = torch.nn.functional.cross_entropy(_mlp(txi, tparams, torch.tanh),
                                                torch.tensor(y))
        (tgx,) = torch.autograd.grad(tce, [txi], create_graph=True)
        ttotal = tce + lam * (tgx * tgx).sum()
        topt.zero_grad()
        ttotal.backward()
        topt.step()
        losses.append(total.item())
        _close(total.item(), ttotal.item())
    for p, tp in zip(params, tparams, strict=True):
        _close(p.numpy(), tp.detach().numpy())
    assert losses[-1] < losses[0]


def test_gradient_penalty_with_a_module():
    """The same penalty through gg.nn modules: the parameters' gradients get the penalty's
    second-order term (checked against central differences of the whole loss)."""
    gg.manual_seed(0)
    model = nn.mlp([4, 5, 3], activation="tanh")
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4))
    y = np.array([0, 2, 1])

    def total():
        xi = gg.tensor(x, requires_grad=True)
        ce = gg.cross_entropy(model(xi), y)
        (gx,) = ag.grad(ce, [xi], create_graph=True)
        return ce + (gx * gx).sum()
    model.zero_grad()
    total().backward()
    w = list(model.parameters())[0]
    analytic = w.grad.numpy().copy()
    numeric, eps, host = np.empty(w.shape), 1e-6, w.numpy().copy()
    for idx in np.ndindex(*w.shape):
        for sign in (1, -1):
            probe = host.copy()
            probe[idx] += sign * eps
            w.data = probe
            value = total().item()
            numeric[idx] = value if sign == 1 else (numeric[idx] - value) / (2 * eps)
    w.data = host
    _close(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_gradients_as_ops_equal_the_kernels(reduction):
    # the two formulas ops/differentiable.py composes from ops (sigmoid's and cross-entropy's
    # gradient outputs) against the fused primitives the ordinary backward runs
    rng = np.random.default_rng(3)
    a, labels = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    for fn in (lambda x: gg.cross_entropy(x, labels, reduction=reduction),
               lambda x: x.sigmoid()):
        x = gg.tensor(a, requires_grad=True)
        out = fn(x)
        u = rng.standard_normal(out.shape)
        (plain,) = ag.grad(out, x, gg.tensor(u), retain_graph=True)
        (recorded,) = ag.grad(out, x, gg.tensor(u), create_graph=True)
        assert recorded.requires_grad
        _close(recorded.numpy(), plain.numpy(), rtol=1e-14, atol=1e-15)


def test_executor_refuses_a_loss_that_differentiates_its_own_backward():
    from gpugrad import nn, optim
    gg.manual_seed(0)
    model = nn.mlp([4, 3, 2])

    def penalised(out, y):  # a gradient penalty inside the recorded step
        loss = gg.cross_entropy(out, y)
        (g,) = ag.grad(loss, out, create_graph=True)
        return loss + (g * g).sum()

    ex = gg.Executor(model, loss=penalised, optimizer=optim.SGD(model.parameters(), lr=0.1))
    before = [p.numpy().copy() for p in model.parameters()]
    x, y = np.ones((2, 4), np.float32), np.array([0, 1])
    with pytest.raises(RuntimeError, match="Executor: a step cannot differentiate"):
        ex.step(x, y)
    for p, b in zip(model.parameters(), before):  # a refused step changes no parameter
        np.testing.assert_array_equal(p.numpy(), b)
    # the same loss runs eagerly
    loss = penalised(model(gg.tensor(x)), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_create_graph_backward_is_refused_under_gradient_hooks_but_grad_works():
    from gpugrad import hooks

    class Watcher:
        def ready(self, leaf, grad): pass
        def finish(self, leaves): pass
        def abort(self): pass

    x = _x()
    watcher = Watcher()
    handle = hooks.watch([x], watcher)
    try:
        y = (x * x * x).sum()
        with pytest.raises(RuntimeError, match="gradient hooks"):
            y.backward(create_graph=True)
        assert x.grad is None
        (g,) = ag.grad(y, x, create_graph=True)
        _close(ag.grad(g.sum(), x)[0].numpy(), 6 * x.numpy())
    finally:
        handle.remove()
