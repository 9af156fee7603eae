"""GPU twin of tests/test_higher_order.py and tests/test_forward_mode.py, small: second
derivatives (create_graph through the CUDA ops, the fused kernels' differentiable twins
included) and forward-mode tangents on "cuda", against the same computation on the CPU, in
float64. Skipped, with the reason, where no CUDA GPU is usable."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import autograd as ag

from _ad_cases import CASES, gg_leaves, inputs, second

if not gg.cuda.is_available():
    pytest.skip(f"needs a usable CUDA GPU: {gg.cuda.unavailable_reason()}",
                allow_module_level=True)

pytestmark = pytest.mark.gpu

# float64 on both sides; CUDA's exp/log and cuBLAS may round the last bits differently
TOL = dict(rtol=1e-9, atol=1e-10)

GPU_CASES = [c for c in CASES if c.id in {
    "mul-bcast", "div-bcast", "pow-tensor", "matmul-batch-bcast", "linear-batch", "max-tuple-keep",
    "getitem-int-repeats", "getitem-mask", "sigmoid", "softmax-0", "log_softmax-last",
    "cross_entropy-mean", "cross_entropy-none", "mse_loss-mean", "where", "stack-last",
    "chain-mlp"}]


@pytest.mark.parametrize("case", GPU_CASES, ids=[c.id for c in GPU_CASES])
def test_second_derivatives_on_cuda_match_cpu(case):
    arrays = inputs(case)
    results = []
    for device in ("cuda", "cpu"):
        xs = gg_leaves(arrays, device)
        results.append(second(ag.grad,
                              lambda a, d=device: gg.tensor(a, device=d, requires_grad=True),
                              case.g(*xs), xs))
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("case", GPU_CASES, ids=[c.id for c in GPU_CASES])
def test_jvp_on_cuda_matches_cpu(case):
    arrays = inputs(case)
    vs = [np.random.default_rng(3).standard_normal(a.shape) for a in arrays]
    results = []
    for device in ("cuda", "cpu"):
        out, tan = ag.jvp(case.g, tuple(gg.tensor(a, device=device) for a in arrays),
                          tuple(gg.tensor(v, device=device) for v in vs))
        assert out.device == tan.device == device
        results.append((out.numpy(), tan.numpy()))
    for got, want in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, **TOL)


def test_hvp_and_forward_over_reverse_across_devices():
    """A function that moves to the GPU and back: the copies are differentiable ops too."""
    a = np.linspace(-1, 1, 6).reshape(2, 3)
    v = np.linspace(0.5, -0.5, 6).reshape(2, 3)

    def f(x):
        y = x.to("cuda")
        return ((y.tanh() @ y.T).sum() ** 2).to("cpu") + (x.sin() * x).sum()

    def f_cpu(x):
        return ((x.tanh() @ x.T).sum() ** 2) + (x.sin() * x).sum()
    _, hv = ag.hvp(f, gg.tensor(a), gg.tensor(v))
    _, want = ag.hvp(f_cpu, gg.tensor(a), gg.tensor(v))
    np.testing.assert_allclose(hv.numpy(), want.numpy(), **TOL)
    x = gg.tensor(a, requires_grad=True)
    _, fr = ag.jvp(lambda z: ag.grad(f(z), z, create_graph=True)[0], (x,), (gg.tensor(v),))
    np.testing.assert_allclose(fr.numpy(), want.numpy(), **TOL)
    (x.to("cuda").exp() * 2).sum().backward(create_graph=True)
    assert x.grad.device == "cpu" and x.grad.requires_grad
    (h,) = ag.grad(x.grad.sum(), [x])
    np.testing.assert_allclose(h.numpy(), 2 * np.exp(a), **TOL)
