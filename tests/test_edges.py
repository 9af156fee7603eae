"""Defined values at the edges, as PyTorch gives them (issue 10, item 5)."""
import numpy as np
import pytest

import gpugrad as gg


def _grads(fn, *values):
    ts = [gg.tensor(np.array(v, dtype=np.float64), requires_grad=True) for v in values]
    fn(*ts).sum().backward()
    return [t.grad.numpy() for t in ts]


def _torch_grads(torch, fn, *values):
    ts = [torch.tensor(np.array(v, dtype=np.float64), requires_grad=True) for v in values]
    fn(*ts).sum().backward()
    return [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("name, fn, values", [
    ("x ** 0", lambda x: x ** 0, [[0.0, 1.0, -2.0]]),
    ("x ** 0.0 (float exponent)", lambda x: x ** 0.0, [[0.0, 3.0]]),
    ("0.0 ** x", lambda x: 0.0 ** x, [[0.0, 1.0, 2.5]]),
    ("a ** b at a = 0", lambda a, b: a ** b, [[0.0, 0.0, 2.0], [0.0, 2.0, 3.0]]),
])
def test_pow_edges_match_pytorch(torch, name, fn, values):
    ours = _grads(fn, *values)
    theirs = _torch_grads(torch, fn, *values)
    for o, t in zip(ours, theirs):
        np.testing.assert_array_equal(o, t, err_msg=name)
        assert not np.isnan(o).any(), name


@pytest.mark.parametrize("axis", [None, (0, 2), (2, 0), 1, -1, (1,)])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_normalises_over_every_axis_given(op, axis):
    scipy_special = pytest.importorskip("scipy.special")
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    got = getattr(gg, op)(gg.tensor(x), axis=axis).numpy()
    np.testing.assert_allclose(got, getattr(scipy_special, op)(x, axis=axis), rtol=1e-12,
                               atol=1e-14)
    weights = gg.tensor(np.arange(24.0).reshape(2, 3, 4))
    assert gg.gradcheck(lambda t: getattr(gg, op)(t, axis=axis) * weights,
                        [gg.tensor(x, requires_grad=True)])


def test_max_over_a_nonempty_axis_of_an_empty_tensor_is_empty(torch):
    x = gg.zeros(0, 3, requires_grad=True)
    m = x.max(axis=1)
    assert m.shape == tuple(torch.zeros(0, 3).amax(dim=1).shape) == (0,)
    m.sum().backward()
    assert x.grad.shape == (0, 3)
    with pytest.raises(gg.ShapeError, match="axis 0 of length 0"):
        x.max(axis=0)
    with pytest.raises(gg.ShapeError, match="length 0"):
        x.max()


def test_indexing_with_an_empty_list_is_empty(torch):
    t = gg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    e = t[[]]
    assert e.shape == tuple(torch.zeros(2, 2)[[]].shape) == (0, 2)
    e.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), np.zeros((2, 2)))


def test_list_of_a_0d_tensor_raises_type_error(torch):
    with pytest.raises(TypeError, match="0-d tensor"):
        list(gg.tensor(1.0))
    with pytest.raises(TypeError):
        list(torch.tensor(1.0))
    assert [float(v.item()) for v in gg.tensor([1.0, 2.0])] == [1.0, 2.0]


def test_integer_tensors_to_negative_powers_get_numpys_message():
    with pytest.raises(ValueError, match="pow: Integers to negative integer powers"):
        gg.tensor([1, 2]) ** -1
    with pytest.raises(gg.ShapeError, match="cannot be broadcast"):
        gg.tensor([1.0, 2.0]) ** gg.tensor([1.0, 2.0, 3.0])
