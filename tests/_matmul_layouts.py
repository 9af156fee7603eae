"""The operand layouts matmul must handle without a copy, for NumPy or CuPy: shared by the CPU
test of gpugrad's cuBLAS plan and the GPU test of the real call."""
import numpy as np


def buffer(xp, n, seed, dtype=np.float64):
    """Small integers: every product and sum is exact in float16, float32 and float64."""
    return xp.asarray(np.random.default_rng(seed).integers(-4, 5, n).astype(dtype))


def layouts(xp, dtype=np.float64):
    """[(name, a, a_base, b, b_base)]: views of two flat buffers in every layout the Executor and
    the ops hand to matmul (transposed views, sliced rows, batches, broadcast batches)."""
    ba, bb = buffer(xp, 4000, 1, dtype), buffer(xp, 4000, 2, dtype)
    cases = []

    def add(name, a, b):
        cases.append((name, a, ba, b, bb))

    add("row @ row", ba[:12].reshape(3, 4), bb[:20].reshape(4, 5))
    add("a.T @ row (dW = x^T g)", ba[:12].reshape(4, 3).T, bb[:20].reshape(4, 5))
    add("row @ b.T (g W^T)", ba[:12].reshape(3, 4), bb[:20].reshape(5, 4).T)
    add("a.T @ b.T", ba[:12].reshape(4, 3).T, bb[:20].reshape(5, 4).T)
    add("sliced rows (ld > cols)", ba[:60].reshape(6, 10)[1:4, 2:6],
        bb[:70].reshape(7, 10)[:4, 3:8])
    add("offset start", ba[7:19].reshape(3, 4), bb[5:25].reshape(4, 5))
    add("ones row (sum_rows)", ba[:6][None, :], bb[:30].reshape(6, 5))
    add("column vector", ba[:12].reshape(3, 4), bb[:4][:, None])
    add("1 x 1", ba[:1].reshape(1, 1), bb[:1].reshape(1, 1))
    add("batched", ba[:24].reshape(2, 3, 4), bb[:40].reshape(2, 4, 5))
    add("batch @ shared matrix", ba[:24].reshape(2, 3, 4), bb[:20].reshape(4, 5))
    add("shared matrix @ batch", ba[:12].reshape(3, 4), bb[:40].reshape(2, 4, 5))
    add("4-D batch", ba[:72].reshape(2, 3, 3, 4), bb[:120].reshape(2, 3, 4, 5))
    add("batch of transposes", ba[:24].reshape(2, 4, 3).swapaxes(-1, -2),
        bb[:40].reshape(2, 4, 5))
    add("size-1 batch axis broadcast", ba[:24].reshape(2, 1, 3, 4), bb[:20].reshape(1, 1, 4, 5))
    add("k = 1", ba[:3].reshape(3, 1), bb[:5].reshape(1, 5))
    return cases
