"""The seed lecture's worked examples, computed by gpugrad."""
import math

import numpy as np
import pytest

import gpugrad as gg


def test_add_multiply_graph():
    # f(x, y, z) = (x + y) z at x=-2, y=5, z=-4: q = 3, f = -12; df/dx = df/dy = z = -4, df/dz = q = 3
    x, y, z = (gg.tensor(v, requires_grad=True) for v in (-2.0, 5.0, -4.0))
    q = x + y
    f = q * z
    f.backward()
    assert q.item() == 3 and f.item() == -12
    assert (x.grad.item(), y.grad.item(), z.grad.item()) == (-4, -4, 3)


def test_log_product_sin_graph():
    # f(x1, x2) = ln(x1) + x1 x2 - sin(x1); df/dx1 = 1/x1 + x2 - cos(x1), df/dx2 = x1
    x1 = gg.tensor(2.0, dtype="float64", requires_grad=True)
    x2 = gg.tensor(5.0, dtype="float64", requires_grad=True)
    f = gg.log(x1) + x1 * x2 - gg.sin(x1)
    f.backward()
    assert f.item() == pytest.approx(math.log(2) + 10 - math.sin(2), abs=1e-15)
    assert x1.grad.item() == pytest.approx(0.5 + 5 - math.cos(2), abs=1e-15)
    assert x2.grad.item() == 2.0
    assert gg.gradcheck(lambda a, b: gg.log(a) + a * b - gg.sin(a), [x1, x2])


def test_softmax_classifier_scores():
    # cat 3.2, car 5.1, frog -1.7 -> probabilities 0.13, 0.87, 0.00; L = -log(0.13) = 2.04 (cat)
    scores = gg.tensor([[3.2, 5.1, -1.7]], requires_grad=True)
    probs = gg.softmax(scores).numpy()[0]
    np.testing.assert_allclose(np.round(probs.astype(np.float64), 2), [0.13, 0.87, 0.0])
    loss = gg.cross_entropy(scores, [0])
    assert loss.item() == pytest.approx(-math.log(probs[0]), rel=1e-6)
    assert round(loss.item(), 2) == 2.04
    loss.backward()
    # dL/ds = softmax - onehot(cat)
    np.testing.assert_allclose(scores.grad.numpy()[0], probs - [1, 0, 0], rtol=1e-6, atol=1e-7)


def test_linear_regression_update_rule(rng):
    # L = sum_i (y_i - w^T x_i)^2  =>  dL/dw_j = -sum_i 2 delta_i x_ij, delta_i = y_i - w^T x_i
    x, y, w0 = rng.standard_normal((20, 3)), rng.standard_normal(20), rng.standard_normal(3)
    w = gg.tensor(w0, requires_grad=True)
    loss = ((gg.tensor(y) - gg.tensor(x) @ w) ** 2).sum()
    loss.backward()
    delta = y - x @ w0
    np.testing.assert_allclose(w.grad.numpy(), -(2 * delta[:, None] * x).sum(0), rtol=1e-12)
    # one gradient-descent step is the lecture's rule w_j <- w_j + alpha sum_i 2 delta_i x_ij
    alpha = 0.01
    np.testing.assert_allclose(w0 - alpha * w.grad.numpy(),
                               w0 + alpha * (2 * delta[:, None] * x).sum(0), rtol=1e-12)


def test_sigmoid_perceptron_rule(rng):
    # L = sum_i (y_i - sigma(w^T x_i))^2  =>  dL/dw_j = -sum_i 2 delta_i sigma_i (1 - sigma_i) x_ij
    x, y, w0 = rng.standard_normal((15, 4)), rng.random(15), rng.standard_normal(4)
    w = gg.tensor(w0, requires_grad=True)
    loss = ((gg.tensor(y) - gg.sigmoid(gg.tensor(x) @ w)) ** 2).sum()
    loss.backward()
    s = 1 / (1 + np.exp(-(x @ w0)))
    delta = y - s
    expected = -(2 * (delta * s * (1 - s))[:, None] * x).sum(0)
    np.testing.assert_allclose(w.grad.numpy(), expected, rtol=1e-12)


def test_sigmoid_derivative_identity():
    # sigma'(x) = sigma(x) (1 - sigma(x))
    x = gg.tensor(np.linspace(-6, 6, 13), requires_grad=True)
    s = gg.sigmoid(x)
    s.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), s.numpy() * (1 - s.numpy()), rtol=1e-15)


def test_gradient_descent_converges_with_decayed_learning_rate(rng):
    # the lecture: gradient descent on f(x, W) = Wx with squared loss finds the best W
    x = rng.standard_normal((50, 3))
    w_true = np.array([1.5, -2.0, 0.5])
    y = x @ w_true
    w = gg.tensor(np.zeros(3), requires_grad=True)
    lr = 0.1
    for step in range(300):
        loss = ((gg.tensor(x) @ w - gg.tensor(y)) ** 2).mean()
        w.grad = None
        loss.backward()
        with gg.no_grad():
            w.data = w.data - lr * w.grad.data
        lr = 0.1 * 0.995 ** step  # reduced as training goes on
    np.testing.assert_allclose(w.numpy(), w_true, atol=1e-3)
