"""GPU twin of tests/test_memory.py: 2,000 eager and 2,000 Executor steps keep CuPy's memory pool
(bytes in use) flat, and backward hands the saved activations back to the pool. Skipped, with
the reason, where no CUDA GPU is usable (the `cp` fixture)."""
import gc

import numpy as np
import pytest
from _training import eager_step, small_problem

import gpugrad as gg

pytestmark = pytest.mark.gpu

STEPS, WARMUP = 2000, 200
BLOCK = 512  # CuPy's pool rounds every allocation up to a multiple of 512 bytes
# a leaked 0-d loss per step alone would be 2000 * 512 bytes = 1000 KiB
POOL_BOUND = 64 * 1024


def pool_used(cp):
    cp.cuda.get_current_stream().synchronize()
    gc.collect()
    return cp.get_default_memory_pool().used_bytes()


@pytest.fixture
def setup(cp, on_cuda):
    model, opt, x, y = small_problem()
    assert all(p.device == "cuda" for p in model.parameters())
    return model, opt, x, y


def assert_pool_flat(cp, step, label):
    for _ in range(WARMUP):
        step()
    before = pool_used(cp)
    losses = [step() for _ in range(STEPS)]
    grown = pool_used(cp) - before
    assert np.isfinite(losses).all() and losses[-1] < losses[0] * 0.9
    assert grown < POOL_BOUND, f"{label}: the CuPy pool holds {grown} more bytes"


def test_eager_training_keeps_the_pool_flat(cp, setup):
    model, opt, x, y = setup
    assert_pool_flat(cp, lambda: eager_step(model, opt, x, y), "eager")


def test_executor_training_keeps_the_pool_flat(cp, setup):
    model, opt, x, y = setup
    ex = gg.Executor(model, optimizer=opt)
    assert_pool_flat(cp, lambda: ex.step(x, y), "executor")


def test_backward_returns_saved_activations_to_the_pool(cp, setup):
    model, _, x, y = setup
    baseline = pool_used(cp)
    loss = gg.cross_entropy(model(gg.tensor(x)), y)
    with_graph = pool_used(cp)
    assert with_graph - baseline >= 3 * 32 * 32 * 4  # at least the hidden activations
    loss.backward()
    grads = sum(-(-p.size * p.dtype.itemsize // BLOCK) * BLOCK for p in model.parameters())
    # what remains: the gradients and the 0-d loss (and its gradient seed at most)
    assert pool_used(cp) - baseline <= grads + 2 * BLOCK
    del loss
    model.zero_grad()
    assert pool_used(cp) == baseline
