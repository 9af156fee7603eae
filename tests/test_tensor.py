"""Tensor creation, properties, host access and gradcheck itself."""
import numpy as np
import pytest

import gpugrad as gg


def test_python_data_defaults():
    assert gg.tensor(1.5).dtype == np.float32 and gg.tensor(1.5).shape == ()
    assert gg.tensor([[1.0, 2.0]]).dtype == np.float32
    assert gg.tensor([1, 2]).dtype == np.int64
    assert gg.tensor([True, False]).dtype == np.bool_
    assert gg.tensor([1, 2], dtype="float64").dtype == np.float64
    assert gg.tensor([1.0], dtype=np.float16).dtype == np.float16


def test_arrays_keep_dtype_and_are_copied():
    a = np.arange(4, dtype=np.float64)
    t = gg.tensor(a)
    assert t.dtype == np.float64 and t.device == "cpu"
    a[0] = 99
    assert t.numpy()[0] == 0  # the tensor owns its data
    assert gg.tensor(np.float64(2.0)).dtype == np.float64
    assert gg.tensor(t, dtype="float32").dtype == np.float32
    assert gg.Tensor([1.0, 2.0], requires_grad=True).requires_grad


def test_properties_and_host_access():
    t = gg.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2
    assert t.device == "cpu" and t.is_leaf and t.grad is None
    assert isinstance(t.numpy(), np.ndarray) and t.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert t.sum().item() == 15.0 and isinstance(t.sum().item(), float)
    assert np.asarray(t).shape == (2, 3)
    assert t.to("cpu") is t
    assert "requires_grad=True" in repr(t) and "device='cpu'" in repr(t)
    with pytest.raises(ValueError, match="one-element"):
        t.item()
    with pytest.raises(ValueError, match="ambiguous"):
        bool(t)


def test_factories(rng):
    assert gg.zeros(2, 3).shape == (2, 3) and gg.zeros((2, 3)).numpy().sum() == 0
    assert gg.ones(4, dtype="float64").dtype == np.float64
    gg.manual_seed(7)
    a = gg.randn(3, 4)
    gg.manual_seed(7)
    b = gg.randn(3, 4)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.dtype == np.float32
    u = gg.rand(1000)
    assert 0 <= u.numpy().min() and u.numpy().max() < 1
    assert gg.randn(2, requires_grad=True).requires_grad
    assert gg.zeros_like(a).shape == a.shape and gg.ones_like(a).numpy().sum() == 12
    with pytest.raises(TypeError, match="shape"):
        gg.zeros(-1)


def test_argmax_and_comparisons_are_not_differentiable():
    x = gg.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]], requires_grad=True)
    assert x.argmax(axis=1).tolist() == [1, 0]
    assert (x > 1.5).tolist() == [[False, True, True], [True, False, False]]
    assert not (x == 1.0).requires_grad
    acc = (x.argmax(axis=1) == gg.tensor([1, 2])).numpy().mean()
    assert acc == 0.5


def test_astype_is_differentiable():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    y = x.astype("float64")
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32 and x.grad.tolist() == [2, 4]


def test_gradcheck_catches_a_wrong_gradient():
    class BadSquare(gg.Function):
        def forward(self, a):
            self.a = a
            return a * a

        def backward(self, upstream):
            return (upstream * self.a * 2.01,)  # deliberately wrong local gradient

    x = gg.tensor([0.5, -1.0, 2.0], dtype="float64", requires_grad=True)
    with pytest.raises(gg.GradcheckError) as e:
        gg.gradcheck(lambda t: BadSquare.apply(t), [x])
    msg = str(e.value)
    assert "input 0" in msg and "index (2,)" in msg and "numeric" in msg and "analytic" in msg
    assert isinstance(e.value, AssertionError)


def test_gradcheck_works_from_float32_inputs_and_checks_arguments():
    x = gg.tensor([0.3, 0.7], requires_grad=True)  # float32: checked in float64 copies
    assert gg.gradcheck(lambda t: gg.sigmoid(t) * t, [x])
    assert x.dtype == np.float32 and x.grad is None  # the caller's tensor is untouched
    with pytest.raises(ValueError, match="requires grad"):
        gg.gradcheck(lambda t: t * 2, [gg.tensor([1.0])])
    with pytest.raises(TypeError, match="float64"):
        gg.gradcheck(lambda t: t.astype("float32"), [x])
