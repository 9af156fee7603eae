"""Benchmarks of the fused kernels: sigmoid forward/backward, softmax-cross-entropy fwd+bwd.

GPU: gpugrad's CUDA kernels, PyTorch (torch.sigmoid / aten sigmoid_backward / F.cross_entropy
forward+backward), and a CuPy baseline (ElementwiseKernel for sigmoid, unfused array ops for
softmax-cross-entropy), each against a device-to-device copy of the same bytes. CPU (CI): the
NumPy references at small sizes. Bytes are counted explicitly, as the minimal traffic of the op
(every impl of an op gets the same count, so GB/s compares time):
  sigmoid forward 2 x n x itemsize (read x, write y); backward 3 x (read y, dy, write dx);
  softmax-CE fwd+bwd: read logits + write dlogits (2 x N x C x itemsize) + labels 8N + per-row
  losses written and read back by the mean (2 x N x itemsize). The large-C kernel also re-reads
  each row from L2, which is not counted: these numbers are DRAM-equivalent.
"""
import numpy as np
import pytest

from gpugrad import kernels

DTYPE = np.float32
SIGMOID_N = {"gpu": 2**24, "cpu": 2**18, "quick": 2**12}  # 2**24 float32: 64 MB per array
# the PyTorch comparison shapes, plus 32768 x 1000 (131 MB of logits) for the
# bandwidth target at >= 64 MB with C >= 1000 (8192 x 1000 float32 is only 33 MB)
XENT_SHAPES = {"gpu": [(65536, 10), (8192, 1000), (2048, 32768), (32768, 1000)],
               "cpu": [(4096, 10), (512, 1000), (16, 32768), (2048, 1000)],
               "quick": [(256, 10), (16, 1000)]}
IMPLS = ["gpugrad", "torch", "cupy"]


def _mode(cp, quick):
    return "quick" if quick else ("gpu" if cp is not None else "cpu")


def _need(impl, cp):
    """Skip impls that need a GPU (or PyTorch with CUDA) where there is none."""
    if cp is None and impl != "gpugrad":
        pytest.skip("needs a CUDA GPU: on the CPU only the NumPy references are measured")
    if impl == "torch":
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("PyTorch has no CUDA here")
        return torch
    return None


_cupy_kernels = {}


def _cupy_kernel(cp, name):
    """The CuPy ElementwiseKernel baselines, built once."""
    if name not in _cupy_kernels:
        _cupy_kernels.update(
            fwd=cp.ElementwiseKernel("T x", "T y", "y = T(1) / (T(1) + exp(-x))", "gg_sig_fwd"),
            bwd=cp.ElementwiseKernel("T y, T dy", "T dx", "dx = dy * y * (T(1) - y)",
                                     "gg_sig_bwd"))
    return _cupy_kernels[name]


def _sigmoid_inputs(cp, n):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n) * 4).astype(DTYPE)
    dy = rng.standard_normal(n).astype(DTYPE)
    if cp is None:
        return x, kernels.sigmoid_forward_ref(x), dy
    x, dy = cp.asarray(x), cp.asarray(dy)
    return x, kernels.sigmoid_forward_cuda(x), dy


@pytest.mark.parametrize("impl", IMPLS)
def test_sigmoid_forward(measure, cp, quick, impl):
    torch = _need(impl, cp)
    n = SIGMOID_N[_mode(cp, quick)]
    x, _, _ = _sigmoid_inputs(cp, n)
    if cp is None:
        fn = lambda: kernels.sigmoid_forward_ref(x)  # noqa: E731
    elif impl == "gpugrad":
        fn = lambda: kernels.sigmoid_forward_cuda(x)  # noqa: E731
    elif impl == "torch":
        xt = torch.as_tensor(x, device="cuda")
        fn = lambda: torch.sigmoid(xt)  # noqa: E731
    else:
        k = _cupy_kernel(cp, "fwd")
        fn = lambda: k(x)  # noqa: E731
    measure(fn, bytes_moved=2 * n * x.itemsize, data_bytes=n * x.itemsize,
            op="sigmoid_forward", shape=f"{n}",
            dtype=np.dtype(DTYPE).name, impl=impl if cp is not None else "numpy_ref")


@pytest.mark.parametrize("impl", IMPLS)
def test_sigmoid_backward(measure, cp, quick, impl):
    torch = _need(impl, cp)
    n = SIGMOID_N[_mode(cp, quick)]
    _, y, dy = _sigmoid_inputs(cp, n)
    if cp is None:
        fn = lambda: kernels.sigmoid_backward_ref(y, dy)  # noqa: E731
    elif impl == "gpugrad":
        fn = lambda: kernels.sigmoid_backward_cuda(y, dy)  # noqa: E731
    elif impl == "torch":
        yt, dyt = torch.as_tensor(y, device="cuda"), torch.as_tensor(dy, device="cuda")
        fn = lambda: torch.ops.aten.sigmoid_backward(dyt, yt)  # noqa: E731
    else:
        k = _cupy_kernel(cp, "bwd")
        fn = lambda: k(y, dy)  # noqa: E731
    measure(fn, bytes_moved=3 * n * y.itemsize, data_bytes=n * y.itemsize,
            op="sigmoid_backward", shape=f"{n}",
            dtype=np.dtype(DTYPE).name, impl=impl if cp is not None else "numpy_ref")


def _xent_cupy_unfused(cp, x, labels):
    """The obvious CuPy version: separate max, exp, sums, gather and scatter passes."""
    n = x.shape[0]
    rows = cp.arange(n)

    def fn():
        m = x.max(axis=1, keepdims=True)
        z = x - m
        e = cp.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = (cp.log(s[:, 0]) - z[rows, labels]).mean()
        grad = e / s
        grad[rows, labels] -= 1
        grad *= 1.0 / n
        return loss, grad
    return fn


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape_index", [0, 1, 2, 3], ids=["C10", "C1000", "C32768", "C1000big"])
def test_softmax_xent_fwd_bwd(measure, cp, quick, impl, shape_index):
    """Loss (mean over rows) and dlogits, as one training step needs them."""
    shapes = XENT_SHAPES[_mode(cp, quick)]
    if shape_index >= len(shapes):
        pytest.skip("fewer shapes in quick mode")
    torch = _need(impl, cp)
    n, c = shapes[shape_index]
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n, c)) * 3).astype(DTYPE)
    labels = rng.integers(0, c, n)
    if cp is None:
        def fn():
            loss, grad = kernels.softmax_cross_entropy_ref(x, labels, grad_scale=1.0 / n)
            return kernels.reduce_loss_ref(loss, "mean"), grad
    elif impl == "gpugrad":
        dx, dl = cp.asarray(x), cp.asarray(labels)

        def fn():  # the executor's call: labels checked on the host already, nothing syncs
            loss, grad = kernels.softmax_cross_entropy_cuda(dx, dl, grad_scale=1.0 / n,
                                                            check=False)
            return kernels.reduce_loss_cuda(loss, "mean"), grad
    elif impl == "torch":
        xt = torch.as_tensor(x, device="cuda").requires_grad_(True)
        yt = torch.as_tensor(labels, device="cuda")

        def fn():
            loss = torch.nn.functional.cross_entropy(xt, yt)
            return loss, torch.autograd.grad(loss, xt)[0]
    else:
        fn = _xent_cupy_unfused(cp, cp.asarray(x), cp.asarray(labels))
    item = np.dtype(DTYPE).itemsize
    measure(fn, bytes_moved=2 * n * c * item + 8 * n + 2 * n * item, data_bytes=n * c * item,
            op="softmax_xent_fwd_bwd",
            shape=f"{n}x{c}", dtype=np.dtype(DTYPE).name,
            impl=impl if cp is not None else "numpy_ref")
