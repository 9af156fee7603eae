"""The CUDA backend: CuPy arrays, CuPy's generator, and the hand-written kernels in ../kernels/.

This is the only module that imports CuPy, and it is imported only when CUDA is asked for or probed.
"""
import cupy
import cupyx
import numpy as np

from .. import kernels
from .base import Backend


class CupyBackend(Backend):
    name = "cuda"
    xp = cupy

    def __init__(self, seed=None):
        self.rs = cupy.random.RandomState(seed)

    def asarray(self, data, dtype=None):
        return cupy.asarray(data, dtype=dtype)

    def to_numpy(self, array):
        return cupy.asnumpy(array)

    def is_array(self, obj):
        return isinstance(obj, cupy.ndarray)

    def synchronize(self):
        cupy.cuda.get_current_stream().synchronize()

    def seed(self, n):
        self.rs = cupy.random.RandomState(n)

    def randn(self, shape, dtype):
        dtype = np.dtype(dtype)
        if dtype in (np.float32, np.float64):
            return self.rs.standard_normal(shape, dtype=dtype)
        return self.rs.standard_normal(shape).astype(dtype)

    def rand(self, shape, dtype):
        dtype = np.dtype(dtype)
        if dtype in (np.float32, np.float64):
            return self.rs.random_sample(shape, dtype=dtype)
        return self.rs.random_sample(shape).astype(dtype)

    def permutation(self, n):
        return self.rs.permutation(n)

    def index_add(self, target, index, values):
        cupyx.scatter_add(target, index, values)

    sigmoid_forward = staticmethod(kernels.sigmoid_forward_cuda)
    sigmoid_backward = staticmethod(kernels.sigmoid_backward_cuda)
    softmax_cross_entropy = staticmethod(kernels.softmax_cross_entropy_cuda)
