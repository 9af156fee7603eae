"""Interop: DLPack both ways with NumPy and PyTorch (zero-copy, proved by writing through one side
and reading the other), dtypes kept, strided views, np.asarray, and data-only export of tensors
that require grad. GPU twin: tests/gpu/test_interop_gpu.py."""
import numpy as np
import pytest

import gpugrad as gg

DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"]


def _sample(dtype, shape=(2, 3)):
    return (np.arange(np.prod(shape)).reshape(shape) % 2 == 1 if dtype == "bool" else
            np.arange(np.prod(shape)).reshape(shape).astype(dtype))


def _poke(array, value=1):
    """Write one element through `array` (NumPy or torch) and return the value written."""
    array[(0,) * array.ndim] = value
    return value


# -- NumPy ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_round_trip_shares_memory_and_keeps_dtype(dtype):
    a = _sample(dtype)
    t = gg.from_dlpack(a)
    assert isinstance(t, gg.Tensor) and t.device == "cpu" and not t.requires_grad
    assert t.dtype == a.dtype and t.shape == a.shape
    assert np.shares_memory(t.data, a)
    back = np.from_dlpack(t)
    assert back.dtype == a.dtype and np.shares_memory(back, a)
    v = _poke(back, True if dtype == "bool" else 7)  # written through NumPy, seen by both
    assert t.numpy()[0, 0] == v and a[0, 0] == v


def test_numpy_consumes_a_gpugrad_tensor_and_writes_through():
    t = gg.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert t.__dlpack_device__() == (1, 0)  # kDLCPU, device 0
    a = np.from_dlpack(t)
    a[1, 1] = -1.0
    assert t.numpy()[1, 1] == -1.0
    t.data[0, 0] = 9.0  # and the other way round
    assert a[0, 0] == 9.0


def test_np_asarray_of_a_cpu_tensor_is_a_view():
    t = gg.tensor([1.0, 2.0, 3.0])
    a = np.asarray(t)
    assert np.shares_memory(a, t.data) and a.dtype == np.float32
    a[0] = 5.0
    assert t.numpy()[0] == 5.0
    b = np.asarray(t, dtype=np.float64)  # a different dtype is a converted copy
    assert b.dtype == np.float64 and not np.shares_memory(b, t.data)


def test_strided_numpy_views_stay_views():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    view = base[::2, 1::2]  # non-contiguous
    t = gg.from_dlpack(view)
    assert t.shape == (2, 3) and not t.data.flags.c_contiguous
    np.testing.assert_array_equal(t.numpy(), view)
    base[2, 3] = 100.0  # a write into the base shows in the tensor's view
    assert t.numpy()[1, 1] == 100.0
    x = t.requires_grad_()
    (x * x).sum().backward()  # ops and gradients on a strided tensor
    np.testing.assert_array_equal(x.grad.numpy(), 2 * view)


def test_exported_transposed_view_keeps_strides():
    x = gg.tensor(np.arange(6.0).reshape(2, 3))
    a = np.from_dlpack(x.T)
    assert a.shape == (3, 2) and np.shares_memory(a, x.data)
    np.testing.assert_array_equal(a, x.numpy().T)


def test_read_only_arrays_import_as_read_only_data():
    ro = np.broadcast_to(np.arange(3.0), (2, 3))
    t = gg.from_dlpack(ro)
    assert (t + 1).numpy().sum() == 12.0  # ops read it
    with pytest.raises(ValueError, match="read-only"):
        t[0, 0] = 1.0


def test_imported_tensor_trains_in_place():
    w = np.ones(3)
    p = gg.from_dlpack(w).requires_grad_()
    opt = gg.optim.SGD([p], lr=0.5)
    (p * gg.tensor([1.0, 2.0, 3.0], dtype="float64")).sum().backward()
    opt.step()
    np.testing.assert_array_equal(w, [0.5, 0.0, -0.5])  # the NumPy array was updated in place


def test_from_dlpack_of_a_tensor_shares_its_data():
    t = gg.tensor([1.0, 2.0])
    u = gg.from_dlpack(t)
    assert u is not t and np.shares_memory(u.data, t.data)


# -- PyTorch -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_round_trip_shares_memory_and_keeps_dtype(torch, dtype):
    src = torch.from_numpy(_sample(dtype))
    t = gg.from_dlpack(src)
    assert t.dtype == np.dtype(dtype) and t.shape == tuple(src.shape)
    back = torch.from_dlpack(t)
    assert back.dtype == src.dtype and back.data_ptr() == src.data_ptr()
    v = _poke(back, True if dtype == "bool" else 5)  # written through torch
    assert t.numpy()[0, 0] == v and src[0, 0].item() == v


def test_torch_strided_views_both_ways(torch):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    t = gg.from_dlpack(base.T)  # a transposed torch view
    assert t.shape == (4, 3)
    np.testing.assert_array_equal(t.numpy(), base.T.numpy())
    base[0, 1] = -7.0
    assert t.numpy()[1, 0] == -7.0
    x = gg.tensor(np.arange(12.0).reshape(3, 4))
    view = torch.from_dlpack(x[:, ::2])  # a strided gpugrad result exported to torch
    assert tuple(view.stride()) == (4, 2)
    view[2, 1] = 0.5
    assert x.numpy()[2, 2] == 0.5


def test_tensors_that_require_grad_export_data_only(torch):
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    exported = torch.from_dlpack(y)
    assert not exported.requires_grad  # values only: the gpugrad graph does not cross over
    np.testing.assert_array_equal(exported.numpy(), [3.0, 6.0])
    y.sum().backward()  # gpugrad's own graph is untouched by the export
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
    # PyTorch refuses the same for its own tensors; detach() is the way
    with pytest.raises(BufferError, match="detach"):
        gg.from_dlpack(torch.ones(2, requires_grad=True))
    assert gg.from_dlpack(torch.ones(2, requires_grad=True).detach()).shape == (2,)


# -- bad input -----------------------------------------------------------------------------------

class FakeProducer:
    """A DLPack producer on some other device (no memory is ever exported)."""

    def __init__(self, device):
        self.device = device

    def __dlpack__(self, **kwargs):
        raise AssertionError("must not be consumed")

    def __dlpack_device__(self):
        return self.device


@pytest.mark.parametrize("obj, exc, pattern", [
    ([1.0, 2.0], TypeError, "DLPack protocol .* got list"),
    (np.ones(2).__dlpack__(), TypeError, "DLPack capsule: pass the array itself"),
    (np.ones(2, dtype=np.complex64), TypeError, "gg.from_dlpack: unsupported dtype complex64"),
    (FakeProducer((4, 0)), gg.DeviceError, "device type 4 .* not supported"),
])
def test_from_dlpack_rejects_what_it_cannot_hold(obj, exc, pattern):
    with pytest.raises(exc, match=pattern):
        gg.from_dlpack(obj)


def test_cuda_memory_without_a_usable_gpu_says_why():
    if gg.cuda.is_available():
        pytest.skip("this machine has a usable GPU (tests/gpu covers CUDA memory)")
    with pytest.raises(gg.DeviceError, match="cuda' is not usable: .+"):
        gg.from_dlpack(FakeProducer((2, 0)))
