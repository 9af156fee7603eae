"""Forward mode (issue 12): gg.autograd.jvp carries a tangent beside every value by each op's own
rule (Function.jvp). Every op is checked against central differences, against reverse mode
(<J v, u> == <v, J^T u>), and against torch.func.jvp where PyTorch is installed; then jvp's
semantics, and forward-over-reverse against reverse-over-reverse. Float64 throughout."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import autograd as ag

from _ad_cases import CASES, DETACHED, DETACHED_IDS, EDGE_IDS, EDGES, IDS, gg_leaves, inputs, like

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

TOL = dict(rtol=1e-10, atol=1e-10)
H = 1e-6  # central differences: error ~ H^2 f''' + rounding / H


def _close(got, want, **tol):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **(tol or TOL))


def _tangents(arrays, seed=3):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(a.shape) for a in arrays]


def _jvp(fn, arrays, tangents):
    out, tan = ag.jvp(fn, tuple(gg.tensor(a) for a in arrays),
                      tuple(gg.tensor(t) for t in tangents))
    return out.numpy(), tan.numpy()


def _central(fn, arrays, tangents):
    def at(step):
        with gg.no_grad():
            return fn(*(gg.tensor(a + step * t) for a, t in zip(arrays, tangents))).numpy()
    return (at(H) - at(-H)) / (2 * H)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jvp_matches_central_differences(case):
    arrays = inputs(case)
    vs = _tangents(arrays)
    out, tan = _jvp(case.g, arrays, vs)
    with gg.no_grad():
        _close(out, case.g(*(gg.tensor(a) for a in arrays)).numpy(), rtol=0, atol=0)
    assert tan.shape == out.shape and tan.dtype == np.float64
    _close(tan, _central(case.g, arrays, vs), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", CASES + DETACHED, ids=IDS + DETACHED_IDS)
def test_jvp_matches_torch_func_jvp(case, torch):
    arrays = inputs(case)
    vs = _tangents(arrays)
    out, tan = _jvp(case.g, arrays, vs)
    tout, ttan = torch.func.jvp(case.t, tuple(torch.tensor(a) for a in arrays),
                                tuple(torch.tensor(v) for v in vs))
    _close(out, tout.numpy())
    _close(tan, ttan.numpy())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jvp_agrees_with_reverse_mode(case):
    """<J v, u> == <v, J^T u>: the forward rule and the backward are transposes."""
    arrays = inputs(case)
    vs = _tangents(arrays)
    out, tan = _jvp(case.g, arrays, vs)
    u = like(out, 4)
    _, vjps = ag.vjp(case.g, tuple(gg.tensor(a) for a in arrays), gg.tensor(u))
    vjps = vjps if isinstance(vjps, tuple) else (vjps,)
    _close((tan * u).sum(), sum((v * g.numpy()).sum() for v, g in zip(vs, vjps, strict=True)))


@pytest.mark.parametrize("case", EDGES, ids=EDGE_IDS)
def test_jvp_at_edges_matches_torch(case, torch):
    vs = _tangents(case.specs)
    with np.errstate(all="ignore"):
        out, tan = _jvp(case.g, case.specs, vs)
    tout, ttan = torch.func.jvp(case.t, tuple(torch.tensor(a) for a in case.specs),
                                tuple(torch.tensor(v) for v in vs))
    _close(out, tout.numpy(), equal_nan=True, rtol=1e-12)
    _close(tan, ttan.numpy(), equal_nan=True, rtol=1e-12)


def test_jvp_through_float32_matches_torch(torch):
    a, v = X.ravel(), V.ravel()
    out, tan = _jvp(lambda x: x.astype("float32").exp().astype("float64") * x, [a], [v])
    tout, ttan = torch.func.jvp(lambda x: x.to(torch.float32).exp().to(torch.float64) * x,
                                (torch.tensor(a),), (torch.tensor(v),))
    _close(out, tout.numpy(), rtol=1e-6)
    _close(tan, ttan.numpy(), rtol=1e-6)
    out32, tan32 = ag.jvp(lambda x: x.sin(), gg.tensor(a.astype(np.float32)),
                          gg.tensor(v.astype(np.float32)))
    assert out32.dtype == tan32.dtype == np.float32


MULTI = [(c, i) for c in CASES if len(c.specs) > 1 for i in range(len(c.specs))]


@pytest.mark.parametrize("case,i", MULTI, ids=[f"{c.id}-only{i}" for c, i in MULTI])
def test_partial_tangents(case, i, torch):
    """Only input i has a tangent; the others are closure constants (their rule sees None)."""
    arrays = inputs(case)
    v = _tangents(arrays)[i]

    def only(fn, consts):
        return lambda x: fn(*(x if j == i else c for j, c in enumerate(consts)))
    out, tan = _jvp(only(case.g, [gg.tensor(a) for a in arrays]), [arrays[i]], [v])
    _close(tan, _central(only(case.g, [gg.tensor(a) for a in arrays]), [arrays[i]], [v]),
           rtol=1e-6, atol=1e-7)
    _, ttan = torch.func.jvp(only(case.t, [torch.tensor(a) for a in arrays]),
                             (torch.tensor(arrays[i]),), (torch.tensor(v),))
    _close(tan, ttan.numpy())


# -- jvp's semantics ----------------------------------------------------------------------------

X = np.array([[0.5, -1.0, 2.0], [0.3, 0.8, -0.4]])
V = np.array([[1.0, 0.5, -1.0], [2.0, -0.3, 0.1]])


def test_outputs_are_detached_and_no_graph_is_built():
    x = gg.tensor(X, requires_grad=True)
    out, tan = ag.jvp(lambda a: (a.sin() * a).sum(0), (x,), (gg.tensor(V),))
    assert not out.requires_grad and out.is_leaf and out.grad is None
    assert not tan.requires_grad and tan.is_leaf
    assert x.grad is None and getattr(x, "_tan", None) is None
    seen = {}

    def fn(a):
        seen["inner"] = a.exp() * 2
        return seen["inner"].sum()
    ag.jvp(fn, (gg.tensor(X),), (gg.tensor(V),))  # a primal without grad: no graph inside
    assert not seen["inner"].requires_grad and seen["inner"].is_leaf


def test_tuple_outputs_and_inputs(torch):
    def f(a, b):
        return a * b, (a.exp() @ b.T).tanh()
    w = np.array([[0.1, 0.2, 0.3], [-0.5, 0.4, 1.0]])
    outs, tans = ag.jvp(f, (gg.tensor(X), gg.tensor(w)), (gg.tensor(V), gg.tensor(X)))
    assert isinstance(outs, tuple) and isinstance(tans, tuple) and len(tans) == 2
    touts, ttans = torch.func.jvp(f, (torch.tensor(X), torch.tensor(w)),
                                  (torch.tensor(V), torch.tensor(X)))
    for a, b in zip(outs + tans, touts + ttans, strict=True):
        _close(a.numpy(), b.numpy())
    out, tan = ag.jvp(lambda a: (a.sin(),), gg.tensor(X), gg.tensor(V))
    assert isinstance(out, tuple) and len(tan) == 1
    _close(tan[0].numpy(), np.cos(X) * V)


def test_output_without_tangent_dependence_is_zeros():
    c = gg.tensor(X)
    outs, tans = ag.jvp(lambda a: (a * 2, c.sin(), gg.tensor(X).sum()), (gg.tensor(V),),
                        (gg.tensor(X),))
    _close(tans[0].numpy(), 2 * X)
    assert tans[1].shape == X.shape and not tans[1].numpy().any()
    assert tans[2].shape == () and tans[2].numpy() == 0
    with pytest.raises(RuntimeError, match="does not depend"):
        ag.jvp(lambda a: c.sin(), (gg.tensor(V),), (gg.tensor(X),), strict=True)


def test_nested_jvp_raises():
    def inner(a):
        return ag.jvp(gg.sin, (a,), (gg.tensor(V),))[1]
    with pytest.raises(NotImplementedError, match="nested"):
        ag.jvp(inner, (gg.tensor(X),), (gg.tensor(V),))


def test_tangent_shape_and_count_mismatch():
    with pytest.raises(gg.ShapeError, match=r"tangents\[0\] has shape \(3,\)"):
        ag.jvp(gg.sin, (gg.tensor(X),), (gg.tensor(np.ones(3)),))
    with pytest.raises(ValueError, match="entries"):
        ag.jvp(gg.sin, (gg.tensor(X),), (gg.tensor(V), gg.tensor(V)))
    with pytest.raises(TypeError, match="floating point"):
        ag.jvp(gg.sin, (gg.tensor(X),), (gg.tensor(np.ones(X.shape, dtype=np.int64)),))


def test_jvp_leaves_modes_and_inputs_as_they_were():
    x = gg.tensor(X, requires_grad=True)
    with pytest.raises(ZeroDivisionError):
        ag.jvp(lambda a: a * (1 / 0), (x,), (gg.tensor(V),))
    y = (x * x).sum()  # forward mode is off again: an ordinary graph and backward
    y.backward()
    _close(x.grad.numpy(), 2 * X)
    assert getattr(x, "_tan", None) is None


def test_setitem_writes_the_tangent(torch):
    a = np.array([1.0, 2.0, 3.0])
    fns = []
    for lib in (gg, torch):
        def into_zeros(z, lib=lib):
            y = lib.zeros(3, dtype=lib.float64 if lib is torch else "float64")
            y[0] = z[1]
            y[1:] = z[:2] * z[1:]
            return y

        def constant_over(z):
            y = z * 1.0
            y[0] = 5.0
            return y
        fns.append((into_zeros, constant_over))
    for f, tf in zip(*fns, strict=True):
        out, tan = _jvp(f, [a], [np.ones(3)])
        tout, ttan = torch.func.jvp(tf, (torch.tensor(a),), (torch.ones(3, dtype=torch.float64),))
        _close(out, tout.numpy())
        _close(tan, ttan.numpy())


def test_no_tangent_outlives_its_jvp():
    """Tensors kept from one jvp call (a cache, a recorded graph) are constants to the next."""
    a, v, w = np.array([0.5, 1.5]), np.array([1.0, -2.0]), np.array([3.0, 0.25])
    kept = {}

    def f(z):
        kept["z"], kept["y"] = z, z * 2
        kept["graph"] = (z.exp() * z).sum()  # recorded (z requires grad), with tangents
        return kept["y"]
    x = gg.tensor(a, requires_grad=True)
    ag.jvp(f, (x,), (gg.tensor(v),))
    assert getattr(kept["z"], "_tan", None) is None and getattr(kept["y"], "_tan", None) is None
    _, tan = ag.jvp(lambda u: u + kept["y"] * kept["z"], (gg.tensor(w),), (gg.tensor(v),))
    _close(tan.numpy(), v)

    def g(u):  # differentiates the kept graph again: its gradient is a constant here
        (gz,) = ag.grad(kept["graph"], [kept["z"]], create_graph=True, retain_graph=True)
        return gz * u
    _, tan = ag.jvp(g, (gg.tensor(w),), (gg.tensor(v),))
    _close(tan.numpy(), np.exp(a) * (1 + a) * v)


def test_jvp_matches_the_lectures_dual_numbers():
    # l4 = l3 after three steps of the logistic map, (v, w) = (4v(1-v), 4w - 8vw) from (x, 1)
    a = np.array([0.1, 0.25, 0.7])
    v, w = a.copy(), np.ones(3)
    for _ in range(3):
        v, w = 4 * v * (1 - v), 4 * w - 8 * v * w

    def l4(x):
        for _ in range(3):
            x = 4 * x * (1 - x)
        return x
    out, tan = _jvp(l4, [a], [np.ones(3)])
    _close(out, v)
    _close(tan, w)


# -- forward over reverse -----------------------------------------------------------------------

def _projected(case, arrays):
    """The case as a scalar function: <case(xs), r> for a fixed r."""
    with gg.no_grad():
        r = gg.tensor(like(case.g(*(gg.tensor(a) for a in arrays)), 5))
    return lambda *xs: (case.g(*xs) * r).sum()


@pytest.mark.parametrize("create_graph", [True, False])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_over_reverse_is_the_hessian_vector_product(case, create_graph):
    arrays = inputs(case)
    vs = _tangents(arrays)
    f = _projected(case, arrays)

    def gradient(*xs):
        return tuple(g if g is not None else x * 0 for g, x in
                     zip(ag.grad(f(*xs), xs, create_graph=create_graph, allow_unused=True), xs))
    _, tans = ag.jvp(gradient, tuple(gg_leaves(arrays)), tuple(gg.tensor(v) for v in vs))
    _, hv = ag.hvp(f, tuple(gg.tensor(a) for a in arrays), tuple(gg.tensor(v) for v in vs))
    for a, b in zip(tans, hv, strict=True):
        _close(a.numpy(), b.numpy())


def test_forward_over_reverse_matches_torch(torch):
    a, v = X.ravel(), V.ravel()

    def f(x):
        return ((x.tanh() * x).sum() ** 2) + (x.sin() * x.exp()).sum()

    def g(x):
        return ag.grad(f(x), x, create_graph=True)[0]
    x = gg.tensor(a, requires_grad=True)
    grad_x, hv = ag.jvp(g, (x,), (gg.tensor(v),))
    assert x.grad is None and not grad_x.requires_grad
    _, rr = ag.hvp(f, gg.tensor(a), gg.tensor(v))
    _, thv = torch.autograd.functional.hvp(f, torch.tensor(a), torch.tensor(v))
    _, tfr = torch.func.jvp(torch.func.grad(f), (torch.tensor(a),), (torch.tensor(v),))
    _close(hv.numpy(), rr.numpy())
    _close(hv.numpy(), thv.numpy())
    _close(hv.numpy(), tfr.numpy())
