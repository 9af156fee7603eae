"""Backward is all or nothing (issue 10, item 4): an exception part way through backward() leaves
no partial gradient in any leaf or in a retained graph, and calling backward() again gives
exactly the gradient one uninterrupted call gives."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad.tensor import Function


class Flaky(Function):
    """Identity whose backward raises `error` the first `fails` times it runs."""

    def forward(self, a):
        return a.copy()

    def backward(self, upstream):
        if self.state["fails"] > 0:
            self.state["fails"] -= 1
            raise self.state["error"]
        return (upstream,)


def _graph(fails, error):
    """Two leaves; w's gradient is complete before the flaky op runs, x's only after it."""
    x = gg.tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)
    w = gg.tensor(np.array([1.5, 2.0, -0.5]), requires_grad=True)
    h = Flaky.apply(gg.exp(x), state={"fails": fails, "error": error})
    loss = (h * w).sum() + (w * w).sum()  # w gets contributions on both sides of the failure
    return x, w, loss


def _expected():
    x, w, loss = _graph(0, None)
    loss.backward()
    return x.grad.numpy(), w.grad.numpy()


@pytest.mark.parametrize("error", [RuntimeError("op failed"), KeyboardInterrupt(),
                                   MemoryError("out of memory")],
                         ids=["exception", "KeyboardInterrupt", "MemoryError"])
def test_an_interrupted_backward_leaves_nothing_and_a_retry_is_exact(error):
    gx, gw = _expected()
    x, w, loss = _graph(1, error)
    with pytest.raises(type(error)):
        loss.backward()  # no retain_graph: the graph must still be there for the retry
    assert x.grad is None and w.grad is None
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), gx)
    np.testing.assert_array_equal(w.grad.numpy(), gw)


def test_existing_gradients_are_untouched_by_a_failed_backward():
    gx, gw = _expected()
    x, w, loss = _graph(0, None)
    loss.backward(retain_graph=True)
    first = x.grad.numpy().copy(), w.grad.numpy().copy()
    flaky = [fn for fn in _functions(loss) if isinstance(fn, Flaky)][0]
    flaky.state.update(fails=1, error=RuntimeError("second pass fails"))
    with pytest.raises(RuntimeError, match="second pass fails"):
        loss.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad.numpy(), first[0])
    np.testing.assert_array_equal(w.grad.numpy(), first[1])
    loss.backward()  # the retained graph holds no partial sums from the failed pass
    np.testing.assert_array_equal(x.grad.numpy(), 2 * gx)
    np.testing.assert_array_equal(w.grad.numpy(), 2 * gw)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()  # freed now, after a successful call without retain_graph


def _functions(t):
    seen, stack = [], [t._ctx]
    while stack:
        fn = stack.pop()
        if fn is None or isinstance(fn, gg.Tensor) or fn in seen:
            continue
        seen.append(fn)
        stack.extend(fn.next)
    return seen
