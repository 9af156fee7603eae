"""GPU twin of tests/test_interop.py: DLPack with CuPy and PyTorch CUDA, zero-copy both ways
(proved by writing through one side), dtypes kept, strided views, and the host boundary. Skipped,
with the reason, where no CUDA GPU is usable (the `cp` fixture)."""
import numpy as np
import pytest

import gpugrad as gg

pytestmark = pytest.mark.gpu

DTYPES = ["float16", "float32", "float64", "int32", "int64", "uint8", "bool"]


@pytest.fixture
def torch_cuda(cp):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch is installed without CUDA support (or sees no GPU)")
    return torch


def _sample(xp, dtype):
    a = xp.arange(6).reshape(2, 3)
    return a % 2 == 1 if dtype == "bool" else a.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_round_trip_shares_memory_and_keeps_dtype(cp, dtype):
    a = _sample(cp, dtype)
    t = gg.from_dlpack(a)
    assert t.device == "cuda" and t.dtype == np.dtype(dtype) and t.shape == (2, 3)
    assert t.data.data.ptr == a.data.ptr
    assert t.__dlpack_device__()[0] == 2  # kDLCUDA
    back = cp.from_dlpack(t)
    assert back.data.ptr == a.data.ptr and back.dtype == a.dtype
    back[0, 0] = True if dtype == "bool" else 7
    assert t.numpy()[0, 0] == back[0, 0].item() == a[0, 0].item()


def test_cupy_strided_views_and_ops_on_them(cp):
    base = cp.arange(24, dtype=cp.float64).reshape(4, 6)
    t = gg.from_dlpack(base[::2, 1::2]).requires_grad_()
    np.testing.assert_array_equal(t.numpy(), cp.asnumpy(base[::2, 1::2]))
    (t * t).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), 2 * cp.asnumpy(base[::2, 1::2]))
    x = gg.tensor(np.arange(6.0).reshape(2, 3), device="cuda")
    view = cp.from_dlpack(x.T)
    assert view.shape == (3, 2) and view.data.ptr == x.data.data.ptr
    view[2, 1] = -1.0
    assert x.numpy()[1, 2] == -1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_cuda_round_trip_shares_memory(torch_cuda, dtype):
    torch = torch_cuda
    src = torch.from_numpy(_sample(np, dtype)).cuda()
    t = gg.from_dlpack(src)
    assert t.device == "cuda" and t.dtype == np.dtype(dtype)
    assert t.data.data.ptr == src.data_ptr()
    back = torch.from_dlpack(t)
    assert back.device.type == "cuda" and back.data_ptr() == src.data_ptr()
    back[0, 0] = True if dtype == "bool" else 5
    torch.cuda.synchronize()
    assert t.numpy()[0, 0] == src[0, 0].item()


def test_torch_cuda_strided_and_grad_export(torch_cuda):
    torch = torch_cuda
    base = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    t = gg.from_dlpack(base.T)
    np.testing.assert_array_equal(t.numpy(), base.T.cpu().numpy())
    x = gg.tensor([1.0, 2.0], device="cuda", requires_grad=True)
    exported = torch.from_dlpack(x)
    assert not exported.requires_grad and exported.device.type == "cuda"
    np.testing.assert_array_equal(exported.cpu().numpy(), [1.0, 2.0])


def test_the_host_boundary_is_explicit(cp):
    t = gg.tensor([1.0, 2.0], device="cuda")
    with pytest.raises(TypeError, match="call .numpy"):
        np.asarray(t)
    with pytest.raises((BufferError, RuntimeError, TypeError, ValueError)):
        np.from_dlpack(t)  # NumPy cannot read GPU memory: no silent copy either
    host = gg.from_dlpack(t.numpy())
    assert host.device == "cpu"
