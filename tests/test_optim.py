"""gg.optim: SGD/Adam vs torch.optim, validation, rejected steps, penalties, schedulers, and the
lecture's update rules as one SGD step."""
import math

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import nn, optim

F64 = "float64"


def problem(rng):
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    gg.manual_seed(3)
    return nn.mlp([3, 5, 2], activation="tanh", dtype=F64), x, y


def torch_twin(torch, model):
    """torch.nn layers holding the same weights (torch stores Linear weights as (out, in))."""
    ref = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(),
                              torch.nn.Linear(5, 2)).double()
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref.parameters()):
            q.copy_(torch.from_numpy(p.numpy().T.copy()))
    return ref


def assert_same_params(model, ref):
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy().T, rtol=1e-12, atol=1e-14)


def run_both(torch, rng, make, make_ref, steps=10, skip_bias_on_odd=False):
    """Train the same model with gpugrad and torch for `steps` steps, comparing every step."""
    model, x, y = problem(rng)
    ref = torch_twin(torch, model)
    opt, topt = make(model.parameters()), make_ref(ref.parameters())
    params = [p.data for p in model.parameters()]
    for step in range(steps):
        out_bias = skip_bias_on_odd and step % 2 == 1   # last bias gets no grad on odd steps
        opt.zero_grad()
        h = gg.tanh(gg.tensor(x) @ model[0].weight + model[0].bias) @ model[2].weight
        gg.mse_loss(h if out_bias else h + model[2].bias, y).backward()
        grads = [None if p.grad is None else (p.grad.data, p.grad.numpy().copy())
                 for p in model.parameters()]
        opt.step()
        for g in grads:  # the optimizer reads gradients, never writes them
            if g is not None:
                np.testing.assert_array_equal(g[0], g[1])
        topt.zero_grad()
        th = torch.tanh(torch.from_numpy(x) @ ref[0].weight.T + ref[0].bias) @ ref[2].weight.T
        torch.nn.functional.mse_loss(th if out_bias else th + ref[2].bias,
                                     torch.from_numpy(y)).backward()
        topt.step()
        assert_same_params(model, ref)
    assert all(p.data is a for p, a in zip(model.parameters(), params))  # updated in place


SGD_CASES = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9, nesterov=True),
             dict(lr=0.1, weight_decay=0.05), dict(lr=0.1, momentum=0.8, dampening=0.3),
             dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
             dict(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.05)]


@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: ",".join(kw))
def test_sgd_matches_torch(torch, rng, kw):
    run_both(torch, rng, lambda ps: optim.SGD(ps, **kw), lambda ps: torch.optim.SGD(ps, **kw))


@pytest.mark.parametrize("kw", [dict(lr=0.05), dict(lr=0.05, weight_decay=0.1),
                                dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6)],
                         ids=lambda kw: ",".join(kw))
def test_adam_matches_torch(torch, rng, kw):
    run_both(torch, rng, lambda ps: optim.Adam(ps, **kw), lambda ps: torch.optim.Adam(ps, **kw))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_params_without_grad_are_skipped_as_torch(torch, rng, name):
    # Adam's step count advances only for parameters that had a gradient
    ours = {"sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), "adam": optim.Adam}[name]
    theirs = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
              "adam": torch.optim.Adam}[name]
    run_both(torch, rng, ours, theirs, steps=6, skip_bias_on_odd=True)


@pytest.mark.parametrize("make, pattern", [
    (lambda p: optim.SGD([], lr=0.1), "empty parameter list"),
    (lambda p: optim.SGD(p, lr=0.1), "got a single Tensor"),
    (lambda p: optim.SGD([p, 3.0], lr=0.1), "parameter 1 is a float"),
    (lambda p: optim.SGD([gg.ones(2)], lr=0.1), "requires grad"),
    (lambda p: optim.SGD([p * 2], lr=0.1), "leaf"),
    (lambda p: optim.Adam([p, p]), "more than once"),
    (lambda p: optim.SGD([p], lr=-0.1), "lr must be >= 0, got -0.1"),
    (lambda p: optim.SGD([p], lr=0.1, momentum=-0.5), "momentum must be >= 0, got -0.5"),
    (lambda p: optim.SGD([p], lr=0.1, nesterov=True), "nesterov needs momentum > 0"),
    (lambda p: optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, dampening=0.1),
     "dampening 0"),
    (lambda p: optim.SGD([p], lr=0.1, weight_decay=-1), "weight_decay must be >= 0"),
    (lambda p: optim.Adam([p], betas=(1.0, 0.999)), r"beta1 must be in \[0, 1\), got 1.0"),
    (lambda p: optim.Adam([p], betas=(0.9, -0.1)), r"beta2 must be in \[0, 1\), got -0.1"),
    (lambda p: optim.Adam([p], eps=0), "eps must be > 0, got 0"),
    (lambda p: optim.Adam([p], lr="fast"), "lr must be a number"),
])
def test_construction_errors(make, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        make(gg.ones(2, requires_grad=True))


@pytest.mark.parametrize("bad_grad, error, pattern", [
    (lambda: gg.zeros(4, 2), gg.ShapeError, r"parameter 1 has shape \(2, 4\) but its grad has "
                                            r"shape \(4, 2\)"),
    (lambda: gg.zeros(2, 4, dtype="int64"), TypeError, "grad has dtype int64"),
    (lambda: np.zeros((2, 4)), TypeError, "grad is a ndarray"),
])
@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.Adam(ps)])
def test_rejected_step_changes_no_parameter(make, bad_grad, error, pattern):
    params = [gg.ones(3, requires_grad=True), gg.ones(2, 4, requires_grad=True),
              gg.ones(5, requires_grad=True)]
    opt = make(params)
    for p in params:
        p.grad = gg.ones(*p.shape)
    params[1].grad = bad_grad()
    with pytest.raises(error, match=pattern):
        opt.step()
    assert all((p.numpy() == 1).all() for p in params)
    assert all(set(st) == set() for st in opt.state)   # no momentum / moment buffers either


def test_zero_grad_sets_none():
    p = gg.ones(2, requires_grad=True)
    (p * p).sum().backward()
    opt = optim.SGD([p], lr=0.1)
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # nothing to do, nothing changes
    np.testing.assert_array_equal(p.numpy(), 1)


# -- penalties ---------------------------------------------------------------------------------

def test_l1_and_l2_penalty_values_and_gradients(rng):
    w1, w2 = rng.standard_normal((3, 2)), rng.standard_normal(4)
    a, b = gg.tensor(w1, requires_grad=True), gg.tensor(w2, requires_grad=True)
    l1 = optim.l1_penalty([a, b], 0.3)
    assert l1.shape == () and l1.item() == pytest.approx(0.3 * (np.abs(w1).sum() +
                                                                 np.abs(w2).sum()), rel=1e-14)
    l1.backward()
    np.testing.assert_allclose(a.grad.numpy(), 0.3 * np.sign(w1), rtol=1e-15)
    np.testing.assert_allclose(b.grad.numpy(), 0.3 * np.sign(w2), rtol=1e-15)
    a.grad = b.grad = None
    l2 = optim.l2_penalty((p for p in (a, b)), 0.3)   # generators work (model.parameters())
    assert l2.item() == pytest.approx(0.3 * ((w1 ** 2).sum() + (w2 ** 2).sum()), rel=1e-14)
    l2.backward()
    np.testing.assert_allclose(a.grad.numpy(), 0.6 * w1, rtol=1e-15)
    with pytest.raises(ValueError, match="strength must be >= 0"):
        optim.l1_penalty([a], -1.0)
    with pytest.raises(TypeError, match="parameter 1 is a ndarray"):
        optim.l2_penalty([a, w2], 0.1)


def test_l2_penalty_equals_weight_decay_of_twice_the_strength(rng):
    x, y = rng.standard_normal((8, 3)), rng.standard_normal(8)
    w0 = rng.standard_normal(3)
    w_pen, w_wd = gg.tensor(w0, requires_grad=True), gg.tensor(w0, requires_grad=True)
    opt_pen, opt_wd = optim.SGD([w_pen], lr=0.05), optim.SGD([w_wd], lr=0.05, weight_decay=0.2)
    for _ in range(3):
        for w, opt, extra in ((w_pen, opt_pen, True), (w_wd, opt_wd, False)):
            opt.zero_grad()
            loss = gg.mse_loss(gg.tensor(x) @ w, y)
            (loss + optim.l2_penalty([w], 0.1) if extra else loss).backward()
            opt.step()
    np.testing.assert_allclose(w_pen.numpy(), w_wd.numpy(), rtol=1e-13)


# -- schedulers ----------------------------------------------------------------------------------

def lr_sequence(sched, opt, n):
    seq = []
    for _ in range(n):
        opt.step()
        sched.step()
        seq.append(sched.get_last_lr())
    return seq


def test_step_lr_matches_torch(torch):
    opt = optim.SGD([gg.ones(1, requires_grad=True)], lr=0.4)
    topt = torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=0.4)
    ours = lr_sequence(optim.StepLR(opt, step_size=3, gamma=0.5), opt, 12)
    theirs = lr_sequence(torch.optim.lr_scheduler.StepLR(topt, step_size=3, gamma=0.5), topt, 12)
    np.testing.assert_allclose(ours, [t[0] for t in theirs], rtol=1e-14)
    assert opt.lr == ours[-1] == pytest.approx(0.4 * 0.5 ** 4)


def test_cosine_lr_matches_torch_and_stays_at_min(torch):
    opt = optim.SGD([gg.ones(1, requires_grad=True)], lr=0.4)
    topt = torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=0.4)
    sched = optim.CosineLR(opt, total_steps=10, min_lr=0.01)
    ours = lr_sequence(sched, opt, 10)
    theirs = lr_sequence(torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=10,
                                                                    eta_min=0.01), topt, 10)
    np.testing.assert_allclose(ours, [t[0] for t in theirs], rtol=1e-12)
    assert ours[4] == pytest.approx(0.01 + 0.39 * (1 + math.cos(math.pi / 2)) / 2)
    assert lr_sequence(sched, opt, 3) == [0.01] * 3    # torch's would rise again here


def test_scheduled_lr_is_what_step_uses():
    p = gg.zeros(1, dtype=F64, requires_grad=True)
    opt = optim.SGD([p], lr=1.0)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad = gg.ones(1, dtype=F64)
        opt.step()
        sched.step()
    np.testing.assert_array_equal(p.numpy(), [-(1 + 0.5 + 0.25)])


def test_scheduler_errors():
    opt = optim.SGD([gg.ones(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="step_size must be a positive int, got 0"):
        optim.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        optim.CosineLR(opt, total_steps=2.5)
    with pytest.raises(TypeError, match="expected a gg.optim optimizer"):
        optim.StepLR("sgd", step_size=1)


# -- the lecture's update rules are one SGD step ----------------------------------------------

def test_linear_regression_rule_is_one_sgd_step(rng):
    # L = sum_i (y_i - w^T x_i)^2; the lecture: w_j <- w_j + alpha sum_i 2 delta_i x_ij
    x, y, w0, alpha = rng.standard_normal((20, 3)), rng.standard_normal(20), \
        rng.standard_normal(3), 0.01
    w = gg.tensor(w0, requires_grad=True)
    ((gg.tensor(y) - gg.tensor(x) @ w) ** 2).sum().backward()
    optim.SGD([w], lr=alpha).step()
    delta = y - x @ w0
    np.testing.assert_allclose(w.numpy(), w0 + alpha * (2 * delta[:, None] * x).sum(0),
                               rtol=1e-13)


def test_sigmoid_perceptron_rule_is_one_sgd_step(rng):
    # L = sum_i (y_i - sigma(w^T x_i))^2: w_j <- w_j + alpha sum_i 2 delta_i s_i (1 - s_i) x_ij
    x, y, w0, alpha = rng.standard_normal((20, 3)), rng.random(20), rng.standard_normal(3), 0.1
    w = gg.tensor(w0, requires_grad=True)
    ((gg.tensor(y) - gg.sigmoid(gg.tensor(x) @ w)) ** 2).sum().backward()
    optim.SGD([w], lr=alpha).step()
    s = 1 / (1 + np.exp(-(x @ w0)))
    delta = y - s
    np.testing.assert_allclose(w.numpy(),
                               w0 + alpha * (2 * delta[:, None] * s[:, None] * (1 - s[:, None])
                                             * x).sum(0), rtol=1e-13)
