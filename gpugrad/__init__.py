"""gpugrad: reverse-mode autodiff for arrays, on NVIDIA GPUs through CuPy or on the CPU with NumPy.

    import gpugrad as gg
    gg.set_device("auto")                  # cuda when usable, else cpu
    x = gg.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()               # x.grad == [2, 4]
"""
from . import anomaly, autograd, cuda, data, distributed, nn, optim, viz  # noqa: F401
#   (gg.anomaly.is_enabled, gg.autograd.grad)
from .anomaly import AnomalyError, detect_anomaly
from .backend import get_device, manual_seed, set_device
from .errors import DeviceError, GradcheckError, ShapeError
from .executor import Executor
from .gradcheck import gradcheck, gradgradcheck
from .interop import from_dlpack
from .modes import is_grad_enabled
from .ops import (abs, broadcast_to, cos, cross_entropy, exp, linear, log, log_softmax, matmul, max,
                  mean, mse_loss, relu, reshape, sigmoid, sin, softmax, sqrt, stack, sum, tanh,
                  transpose, where)
from .serialization import load, save
from .tensor import (Function, Tensor, enable_grad, no_grad, ones, ones_like, rand, randn,
                     tensor, zeros, zeros_like)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "randn", "rand", "zeros_like", "ones_like", "Function",
    "set_device", "get_device", "manual_seed", "cuda", "no_grad", "enable_grad",
    "is_grad_enabled", "gradcheck", "gradgradcheck", "autograd",
    "detect_anomaly", "AnomalyError", "ShapeError", "DeviceError", "GradcheckError",
    "exp", "log", "sin", "cos", "tanh", "sqrt", "abs", "matmul", "linear", "sigmoid", "relu",
    "softmax", "log_softmax", "cross_entropy", "mse_loss", "sum", "mean", "max", "reshape",
    "transpose", "where", "broadcast_to", "stack",
    "nn", "optim", "data", "distributed", "save", "load", "Executor", "viz", "from_dlpack",
]
