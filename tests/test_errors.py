"""Bad input to the core: the standard exception type, a message naming the op and the values."""
import numpy as np
import pytest

import gpugrad as gg


@pytest.mark.parametrize("make, exc, pattern", [
    (lambda: gg.tensor("abc"), TypeError, "tensor: cannot make a tensor from str"),
    (lambda: gg.tensor(None), TypeError, "NoneType"),
    (lambda: gg.tensor([[1, 2], [3]]), gg.ShapeError, "unequal lengths"),
    (lambda: gg.tensor([1.0], dtype="complex64"), TypeError, "unsupported dtype complex64"),
    (lambda: gg.tensor([1.0], dtype="nonsense"), TypeError, "unknown dtype"),
    (lambda: gg.tensor([1.0]) + "a", TypeError, "add: unsupported operand of type str"),
    (lambda: gg.tensor([1.0]) * {1: 2}, TypeError, "mul: unsupported operand of type dict"),
])
def test_wrong_types(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


def test_non_broadcastable_shapes_name_op_and_shapes():
    a, b = gg.ones(2, 3), gg.ones(4)
    for op, name in ((lambda: a + b, "add"), (lambda: a - b, "sub"), (lambda: a * b, "mul"),
                     (lambda: a / b, "div"), (lambda: a ** b, "pow")):
        with pytest.raises(gg.ShapeError, match=rf"{name}: shapes \(2, 3\) and \(4,\)"):
            op()
    assert issubclass(gg.ShapeError, ValueError)


def test_matmul_shape_errors():
    with pytest.raises(gg.ShapeError, match=r"matmul: inner sizes differ: \(2, 3\) @ \(4, 5\) "
                                             r"\(3 != 4\)"):
        gg.ones(2, 3) @ gg.ones(4, 5)
    with pytest.raises(gg.ShapeError, match="at least 1-D"):
        gg.matmul(gg.tensor(1.0), gg.ones(2))
    with pytest.raises(gg.ShapeError, match="batch shapes"):
        gg.ones(2, 3, 4) @ gg.ones(5, 4, 2)


def test_impossible_reshape_and_axes():
    x = gg.ones(2, 3)
    with pytest.raises(gg.ShapeError, match=r"reshape: cannot reshape \(2, 3\) \(6 elements\) "
                                             r"into \(4, 2\)"):
        x.reshape(4, 2)
    with pytest.raises(TypeError, match="reshape"):
        x.reshape("a")
    with pytest.raises(gg.ShapeError, match="sum: axis 2 is out of range for a 2-d tensor"):
        x.sum(axis=2)
    with pytest.raises(gg.ShapeError, match="transpose"):
        x.transpose(0, 0)
    with pytest.raises(gg.ShapeError, match="max: cannot reduce over axis 0 of length 0"):
        gg.zeros(0).max()
    with pytest.raises(IndexError, match=r"getitem: .*shape \(2, 3\)"):
        x[5]


def test_cross_entropy_bad_labels():
    logits = gg.ones(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="cross_entropy: label 4 is out of range for 4 classes"):
        gg.cross_entropy(logits, [0, 1, 4])
    with pytest.raises(ValueError, match="label -1"):
        gg.cross_entropy(logits, [0, -1, 2])
    with pytest.raises(gg.ShapeError, match=r"labels have shape \(2,\), expected \(3,\)"):
        gg.cross_entropy(logits, [0, 1])
    with pytest.raises(TypeError, match="labels must be integers, got dtype float"):
        gg.cross_entropy(logits, [0.0, 1.0, 2.0])
    with pytest.raises(gg.ShapeError, match=r"logits must be 2-D \(N, C\), got shape \(4,\)"):
        gg.cross_entropy(gg.ones(4), [0])
    with pytest.raises(ValueError, match="reduction must be one of"):
        gg.cross_entropy(logits, [0, 1, 2], reduction="avg")
    assert logits.grad is None


def test_mse_loss_requires_matching_shapes():
    with pytest.raises(gg.ShapeError, match=r"mse_loss: pred has shape \(3, 1\), target has "
                                             r"shape \(3,\)"):
        gg.mse_loss(gg.ones(3, 1), gg.ones(3))


def test_failed_op_leaves_inputs_untouched():
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(gg.ShapeError):
        x + gg.ones(3)
    (x * 1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1, 1])
