"""The CPU backend: NumPy arrays, a PCG64 generator, and the NumPy twins of the CUDA kernels."""
import numpy as np

from .. import kernels
from .base import Backend


class NumpyBackend(Backend):
    name = "cpu"
    xp = np

    def __init__(self):
        self.rng = np.random.default_rng()

    def asarray(self, data, dtype=None):
        return np.asarray(data, dtype=dtype)

    def to_numpy(self, array):
        return np.asarray(array)

    def is_array(self, obj):
        return isinstance(obj, np.ndarray)

    def seed(self, n):
        self.rng = np.random.default_rng(n)

    def randn(self, shape, dtype):
        return self.rng.standard_normal(shape, dtype=np.dtype(dtype)) if np.dtype(dtype) in (
            np.float32, np.float64) else self.rng.standard_normal(shape).astype(dtype)

    def rand(self, shape, dtype):
        return self.rng.random(shape, dtype=np.dtype(dtype)) if np.dtype(dtype) in (
            np.float32, np.float64) else self.rng.random(shape).astype(dtype)

    def permutation(self, n):
        return self.rng.permutation(n)

    matmul = staticmethod(np.matmul)  # (a, b, out=None): the ufunc itself, no Python frame

    def sum_rows(self, a, out=None):
        return np.add.reduce(a, axis=0, out=out)

    def index_add(self, target, index, values):
        np.add.at(target, index, values)

    sigmoid_forward = staticmethod(kernels.sigmoid_forward_ref)
    sigmoid_backward = staticmethod(kernels.sigmoid_backward_ref)
    softmax_cross_entropy = staticmethod(kernels.softmax_cross_entropy_ref)
    reduce_loss = staticmethod(kernels.reduce_loss_ref)
