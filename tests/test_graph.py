"""The graph and the backward walk: fan-out, depth, freeing, retain_graph, no_grad, detach."""
import gc
import weakref

import numpy as np
import pytest

import gpugrad as gg


def test_fan_out_sums_gradients():
    # x is used three times: dy/dx = 2x + 3 = 7 at x = 2
    x = gg.tensor(2.0, requires_grad=True)
    y = x * x + 3 * x
    y.backward()
    assert x.grad.item() == 7.0


def test_diamond_graph():
    x = gg.tensor(3.0, dtype="float64", requires_grad=True)
    a, b = x * 2, x ** 2
    (a * b).backward()  # d(2x * x^2)/dx = 6x^2
    assert x.grad.item() == 54.0


def test_same_tensor_on_both_sides():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    (x + x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2, 2])


def test_deep_chain_does_not_recurse():
    x = gg.tensor(1.0, dtype="float64", requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad.item() == 1.0


def test_graph_freed_after_backward():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_retain_graph_allows_second_backward_and_accumulates():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4, 8])
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_shared_trunk_freed_by_first_loss():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    h = gg.exp(x)
    h.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 2).sum().backward()


def test_grad_accumulates_across_calls_until_reset():
    x = gg.tensor([1.0, -1.0], requires_grad=True)
    for _ in range(3):
        (x * 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6, 6])
    x.grad = None
    (x * 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2, 2])


def test_leaf_grads_never_alias():
    x, y = gg.tensor([1.0, 2.0], requires_grad=True), gg.tensor([3.0, 4.0], requires_grad=True)
    g = np.array([1.0, 1.0], dtype=np.float32)
    (x + y).backward(g)
    x.grad.data[0] = 100.0  # a user writing into one gradient must not change the other
    assert y.grad.data[0] == 1.0 and g[0] == 1.0
    z = gg.tensor([[1.0, 2.0]], requires_grad=True)
    z.sum().backward()  # backward of sum is a broadcast view: the leaf gets its own array
    z.grad.data[0, 0] = 5.0
    assert z.grad.data[0, 1] == 1.0


def test_non_scalar_backward_needs_grad():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="one-element"):
        (x * 2).backward()
    (x * 2).backward(gg.tensor([1.0, 0.5]))
    np.testing.assert_array_equal(x.grad.numpy(), [2, 1])
    with pytest.raises(gg.ShapeError, match=r"\(3,\)"):
        (x * 2).backward(np.ones(3))


def test_backward_without_graph_errors():
    with pytest.raises(RuntimeError, match="does not require grad"):
        gg.tensor([1.0]).sum().backward()


def test_no_grad_records_nothing():
    x = gg.tensor([1.0], requires_grad=True)
    with gg.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf
    z = x * 2
    assert z.requires_grad and not z.is_leaf

    @gg.no_grad()
    def f(t):
        return t * 3
    assert not f(x).requires_grad
    with gg.no_grad():
        with gg.enable_grad():
            assert (x * 2).requires_grad


def test_detach_cuts_the_graph():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    d = y.detach()
    assert not d.requires_grad and d.data is y.data
    (y * d).sum().backward()  # d is a constant: dy/dx only through y
    np.testing.assert_array_equal(x.grad.numpy(), [4, 8])


def test_integer_tensors_never_require_grad():
    i = gg.tensor([1, 2, 3])
    assert i.dtype == np.int64
    with pytest.raises(TypeError, match="floating-point"):
        gg.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="floating-point"):
        i.requires_grad = True
    x = gg.tensor([0.5, 1.0, 1.5], requires_grad=True)
    y = (x * i).sum()  # int operand: a constant
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1, 2, 3])
    assert i.grad is None


def test_constants_of_every_kind():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    y = 2 * x + np.array([1.0, 1.0], dtype=np.float32) - [0.5, 0.5] + np.float64(1.0)
    assert y.dtype == np.float32  # NumPy scalars stay weak, like Python scalars
    np.testing.assert_array_equal(y.numpy(), [3.5, 5.5])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2, 2])
    r = np.array([1.0, 2.0], dtype=np.float32) / x  # ndarray on the left defers to Tensor
    assert isinstance(r, gg.Tensor)


def test_graph_releases_memory():
    x = gg.tensor(np.ones(1000), requires_grad=True)
    h = gg.exp(x)
    tensor_ref, array_ref = weakref.ref(h), weakref.ref(h.data)
    y = (h + 2).sum()  # add saves nothing
    del h
    gc.collect()
    # the graph keeps the arrays backward needs (exp's output), not the intermediate Tensor
    assert tensor_ref() is None and array_ref() is not None
    y.backward()
    gc.collect()
    assert y._ctx.freed and array_ref() is None


def test_an_op_keeps_only_what_it_saves():
    """exp saves its output, not its input: the input's array is not kept by the graph. mul
    saves its inputs (their arrays, and the Tensors, whose version counters backward checks);
    all of it goes with backward."""
    x = gg.tensor(np.ones(1000), requires_grad=True)
    h = x * 3.0
    h_ref, h_array = weakref.ref(h), weakref.ref(h.data)
    e = gg.exp(h)
    del h
    gc.collect()
    assert h_ref() is None and h_array() is None  # exp did not keep its input
    w = gg.tensor(np.ones(1000))
    y = (e * w).sum()
    e_ref = weakref.ref(e)
    del e
    gc.collect()
    assert e_ref() is not None  # mul keeps its input tensor for the version check
    y.backward()
    gc.collect()
    assert e_ref() is None


def test_dtypes_preserved_through_ops():
    x64 = gg.tensor(np.ones(3), requires_grad=True)
    x32 = gg.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    assert (x64 * 2.5).dtype == np.float64
    assert (x32 * 2.5).dtype == np.float32
    assert gg.exp(gg.tensor([1, 2])).dtype == np.float32  # ints promote to the default float
    assert (gg.tensor([1, 2]) / 2).dtype == np.float32
    (x32 * x64).sum().backward()  # mixed: the result is float64, each grad keeps its own dtype
    assert x32.grad.dtype == np.float32 and x64.grad.dtype == np.float64


def test_setitem_only_outside_the_graph():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place"):
        x[0] = 5.0
    with gg.no_grad():
        x[0] = 5.0
    assert x.numpy()[0] == 5.0
    c = gg.zeros(3)
    c[gg.tensor([0, 2])] = 1.0
    np.testing.assert_array_equal(c.numpy(), [1, 0, 1])
