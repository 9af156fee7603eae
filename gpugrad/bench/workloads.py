"""The benchmark workloads and their contenders, shared by `gpugrad bench` and bench/*.py.

Each builder returns a zero-argument callable that runs one call of the workload with its data
already on the device (the timed part), or raises Unavailable with the reason. Contenders:

    executor  gg.Executor step                     graph  the same with cuda_graph=True (CUDA)
    eager     model(x) -> gg.cross_entropy -> backward -> opt.step, or the op through gg's ops
    floor     the hand-written NumPy (CuPy on the GPU) step, floor.FloorMLP
    torch     PyTorch eager on the same device (CPU, or CUDA when PyTorch has it)
"""
import math
from itertools import pairwise

import numpy as np

from .floor import FloorMLP, FloorResidual, he_init
from .timing import Unavailable

TRAIN_IMPLS = ("executor", "graph", "eager", "floor", "torch")
OP_IMPLS = ("eager", "torch")
LR, MOMENTUM = 0.01, 0.9
CHAIN_OPS, CHAIN_SIZE = 1000, 16  # issue 2's eager-overhead chain: 1,000 ops on 16 floats
OP_SIZES = {  # per op: small / medium / large, the same shapes on every device
    "matmul": {"small": 128, "medium": 512, "large": 1024},  # n x n @ n x n
    "chain": {"small": 2**12, "medium": 2**18, "large": 2**22},  # elements
    "sigmoid": {"small": 2**12, "medium": 2**18, "large": 2**22},
    "xent": {"small": (512, 10), "medium": (4096, 100), "large": (16384, 1000)},  # N x C
}
ITEM = 4  # float32


def _gg(device):
    import gpugrad as gg
    if device == "cuda" and not gg.cuda.is_available():
        raise Unavailable(f"no usable CUDA GPU: {gg.cuda.unavailable_reason()}")
    return gg


def _torch(device):
    try:
        import torch
    except ImportError:
        raise Unavailable("PyTorch is not installed") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("PyTorch has no usable CUDA here")
    return torch


def _xp(device):
    _gg(device)
    if device == "cuda":
        import cupy
        return cupy
    return np


def batch(sizes, n, seed=0):
    """A fixed random batch on the host: float32 features, int64 labels."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, sizes[0])).astype(np.float32),
            rng.integers(0, sizes[-1], n))


def train_step(impl, device, sizes, n, seed=0, residual=False):
    """One SGD-momentum training step of a ReLU MLP `sizes` on a batch of n, data on device.

    residual=True: the MLP of residual blocks instead (FloorResidual's model): sizes =
    (inputs, width, ..., width, classes), h = relu(linear(x)), then h = h + relu(linear(h)) per
    block, then the output layer; the gpugrad contenders run it as a user-defined Module.

    Every contender starts from the same weights and sees the same batch, so all follow the
    same trajectory (to rounding): a step's speed can depend on the values (ReLU sparsity,
    subnormal numbers once the loss gets small), and that must not differ between contenders.
    """
    x, y = batch(sizes, n, seed)
    params = he_init(sizes, seed)
    if impl == "torch":
        return _torch_step(_torch(device), device, sizes, params, x, y, residual)
    if impl == "floor":
        xp = _xp(device)
        mlp = (FloorResidual if residual else FloorMLP)(sizes, n, LR, MOMENTUM, xp=xp,
                                                        params=params)
        xd, yd = xp.asarray(x), xp.asarray(y)
        return lambda: mlp.step(xd, yd)
    gg = _gg(device)
    if impl == "graph" and device != "cuda":
        raise Unavailable("CUDA graphs exist on the GPU only")
    if residual:
        model = _gg_residual(gg, sizes, device)
        names = [f"linears.{i}" for i in range(len(params))]
    else:
        model = gg.nn.mlp(sizes, device=device)
        names = [str(2 * i) for i in range(len(params))]
    model.load_state_dict({f"{name}.{k}": a for name, (w, b) in zip(names, params)
                           for k, a in (("weight", w), ("bias", b))})
    opt = gg.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    xt, yt = gg.tensor(x, device=device), gg.tensor(y, device=device)
    if impl in ("executor", "graph"):
        ex = gg.Executor(model, optimizer=opt, cuda_graph=impl == "graph")
        return lambda: ex.step(xt.data, yt.data)
    if impl != "eager":
        raise ValueError(f"unknown train-step contender {impl!r}")

    def step():
        loss = gg.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return step


def _gg_residual(gg, sizes, device):
    """The residual MLP as a user-defined gg Module (not a Sequential: the Executor records its
    forward as written)."""

    class ResidualMLP(gg.nn.Module):
        def __init__(self):
            super().__init__()
            self.linears = gg.nn.Sequential(*[gg.nn.Linear(a, b, device=device)
                                              for a, b in pairwise(sizes)])

        def forward(self, x):
            return _residual_forward(self.linears, gg.relu, x)
    return ResidualMLP()


def _residual_forward(linears, relu, x):
    """relu(first(x)), then h + relu(block(h)) per block, then last(h): gg's and torch's."""
    first, *blocks, last = linears
    h = relu(first(x))
    for block in blocks:
        h = h + relu(block(h))
    return last(h)


def _torch_step(torch, device, sizes, params, x, y, residual=False):
    linears = [torch.nn.Linear(a, b) for a, b in pairwise(sizes)]
    with torch.no_grad():  # the shared initial weights; torch stores W as (out, in)
        for linear, (w, b) in zip(linears, params):
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
    if residual:
        model = _torch_residual(torch, linears)
    else:
        layers = [m for linear in linears[:-1] for m in (linear, torch.nn.ReLU())]
        model = torch.nn.Sequential(*layers, linears[-1])
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    xd, yd = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xd), yd)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def _torch_residual(torch, linears):
    class ResidualMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linears = torch.nn.ModuleList(linears)

        def forward(self, x):
            return _residual_forward(self.linears, torch.relu, x)
    return ResidualMLP()


def train_flops(sizes, n):
    """FLOPs of one step's matrix products: forward a W, backward a^T g and g W^T (no input
    gradient for the first layer). Bias, activations and the update are not counted."""
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * n * (2 * sum(macs) + sum(macs[1:]))


# -- single ops, forward + backward through gpugrad's public ops (and torch's) ------------------

def op_inputs(op, size, seed=0):
    """Host arrays for an op: the inputs and the upstream gradient."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    if op == "matmul":
        return f(size, size), f(size, size), f(size, size)
    if op == "chain":
        return f(size), f(size), f(size), f(size), f(size)
    if op == "sigmoid":
        return (f(size) * 4, f(size))
    if op == "xent":
        return f(*size) * 3, rng.integers(0, size[1], size[0])
    raise ValueError(f"unknown op {op!r}")


def op_call(op, impl, device, size, seed=0):
    """Forward + backward of one op on device-resident data (gradients reset each call)."""
    host = op_inputs(op, size, seed)
    if impl == "torch":
        lib = _torch(device)
        arr = [lib.from_numpy(h).to(device) for h in host]
        make = lambda a, rg: a.requires_grad_(rg)  # noqa: E731
    elif impl == "eager":
        lib = _gg(device)
        make = lambda a, rg: lib.tensor(a, device=device, requires_grad=rg)  # noqa: E731
        arr = host
    else:
        raise ValueError(f"unknown op contender {impl!r}")
    if op == "matmul":
        a, b, g = make(arr[0], True), make(arr[1], True), make(arr[2], False)
        leaves, run = (a, b), lambda: (a @ b).backward(g)
    elif op == "chain":  # ((x * a) + b).tanh() * c: four elementwise ops and their backward
        x, a, b, c, g = (make(arr[0], True),) + tuple(make(h, False) for h in arr[1:])
        leaves, run = (x,), lambda: (((x * a) + b).tanh() * c).backward(g)
    elif op == "sigmoid":
        x, g = make(arr[0], True), make(arr[1], False)
        leaves, run = (x,), lambda: x.sigmoid().backward(g)
    else:
        x, labels = make(arr[0], True), make(arr[1], False)
        ce = lib.nn.functional.cross_entropy if impl == "torch" else lib.cross_entropy
        leaves, run = (x,), lambda: ce(x, labels).backward()

    def call():
        for t in leaves:
            t.grad = None  # no accumulation: every call does the same work
        run()
    call.leaves = leaves  # the tensors whose gradients a call computes
    return call


def op_rate(op, size):
    """('flop', count) or ('bytes', count) that one forward + backward must do or move: matmul
    6 n^3 FLOPs; chain: read x, a, b, c and dy, write dx; sigmoid: forward reads x and writes y,
    backward reads y and dy and writes dx; softmax-CE: read logits, write dlogits, labels 8 bytes
    a row, per-row losses written and read back (as bench/bench_kernels.py counts)."""
    if op == "matmul":
        return "flop", 6 * size ** 3
    if op == "chain":
        return "bytes", 6 * size * ITEM
    if op == "sigmoid":
        return "bytes", 5 * size * ITEM
    n, c = size
    return "bytes", 2 * n * c * ITEM + 8 * n + 2 * n * ITEM


def eager_chain(impl, device, ops=CHAIN_OPS, size=CHAIN_SIZE, seed=0):
    """Issue 2's eager overhead: forward + backward through `ops` elementwise ops (alternately
    * a and + b, a and b constant 16-element tensors) on 16-element float32 tensors."""
    x0, a0, b0 = (np.random.default_rng(seed).standard_normal((3, size)) * 0.01 + 1).astype(
        np.float32)
    if impl == "torch":
        lib = _torch(device)
        x, a, b = (lib.from_numpy(v.copy()).to(device) for v in (x0, a0, b0))
        x.requires_grad_(True)
    elif impl == "eager":
        lib = _gg(device)
        x = lib.tensor(x0, device=device, requires_grad=True)
        a, b = lib.tensor(a0, device=device), lib.tensor(b0, device=device)
    else:
        raise ValueError(f"unknown chain contender {impl!r}")

    def call():
        x.grad = None
        y = x
        for i in range(ops):
            y = y * a if i % 2 else y + b
        y.sum().backward()
    call.leaves = (x,)
    return call


def copy_call(direction, impl, device, shape=(4096, 784)):
    """Host <-> device copy of a float32 batch (reported apart from the device-resident runs)."""
    if device != "cuda":
        raise Unavailable("host <-> device copies exist only with a GPU")
    host = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if impl == "torch":
        torch = _torch(device)
        src = torch.from_numpy(host)
        dev = src.to(device)
        return (lambda: src.to(device)) if direction == "h2d" else (lambda: dev.cpu())
    gg = _gg(device)
    dev = gg.tensor(host, device=device)
    return (lambda: gg.tensor(host, device=device)) if direction == "h2d" else dev.numpy


def copy_bytes(shape=(4096, 784)):
    return math.prod(shape) * ITEM
