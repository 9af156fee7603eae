"""Direct launches, without the launchers: every entry point of every .cu against its twin; grids
and blocks the launchers never pick (few blocks for many rows, every legal block size); seeded
thread and block schedules; and the emulator's own checks of a launch's arguments."""
import re

import numpy as np
import pytest

from gpugrad import kernels as K

from .common import FORWARD_ULPS, check_xent_launch, logits_and_labels, suffix, ulp_distance
from .cuemu import cuemu, fakecupy

pytestmark = pytest.mark.emulated

ENTRY_POINTS = [(path.name, name) for path in K.kernel_files()
                for name in K.kernel_names(path.read_text())]


def run_sigmoid_forward(kernel, rng, dtype):
    x = rng.standard_normal(5003).astype(dtype)
    y = fakecupy.empty(x.size, dtype)
    kernel((K.grid_1d(x.size, x.itemsize, 2),), (K.BLOCK,), (x, y, np.int64(x.size)))
    assert ulp_distance(y, K.sigmoid_forward_ref(x)).max() <= FORWARD_ULPS[dtype]


def run_sigmoid_backward(kernel, rng, dtype):
    y, dy = rng.random(5003).astype(dtype), rng.standard_normal(5003).astype(dtype)
    dx = fakecupy.empty(y.size, dtype)
    kernel((K.grid_1d(y.size, y.itemsize, 2),), (K.BLOCK,), (y, dy, dx, np.int64(y.size)))
    np.testing.assert_array_equal(dx, K.sigmoid_backward_ref(y, dy))


def run_xent(c):
    def run(kernel, rng, dtype):
        _, grid, block, _ = K.xent_launch(37, c)
        check_xent_launch(kernel, *logits_and_labels(rng, 37, c, dtype), grid, block, scale=0.5)
    return run


def run_loss_sum(kernel, rng, dtype):
    rows = rng.random(9000).astype(dtype)
    out = fakecupy.empty((), dtype)
    kernel((1,), (1024,), (rows, np.int64(rows.size), np.float64(1.0), out))
    np.testing.assert_allclose(out, K.reduce_loss_ref(rows), rtol=2 * np.finfo(dtype).eps)


# entry point name (without its dtype suffix) -> a launch with the launcher's shape and a check
CASES = {"sigmoid_forward": run_sigmoid_forward, "sigmoid_backward": run_sigmoid_backward,
         "softmax_xent_small": run_xent(10), "softmax_xent_large": run_xent(1000),
         "loss_sum": run_loss_sum}


@pytest.mark.parametrize("file, name", ENTRY_POINTS, ids=[n for _, n in ENTRY_POINTS])
def test_every_entry_point_against_its_twin(modules, rng, file, name):
    stem, dtype = re.fullmatch(r"(\w+)_(f32|f64)", name).groups()
    assert stem in CASES, f"{file}: no emulated test launches {name}; add it to CASES"
    CASES[stem](modules[file].get_function(name), rng, {"f32": np.float32, "f64": np.float64}[dtype])


def test_the_entry_points_are_the_known_ones():
    assert {n for _, n in ENTRY_POINTS} >= {"sigmoid_forward_f32", "softmax_xent_large_f64",
                                            "loss_sum_f32"}


def xent_kernel(modules, kind, dtype):
    return modules["softmax_cross_entropy.cu"].get_function(f"softmax_xent_{kind}_{suffix(dtype)}")


@pytest.mark.parametrize("block", [32, 64, 128, 256, 512])
@pytest.mark.parametrize("grid", [1, 5])
@pytest.mark.parametrize("c", [33, 1000, 1001])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_kernel_any_block_few_blocks(modules, rng, dtype, c, grid, block):
    """Fewer blocks than rows: each block loops over rows, reusing its shared slots."""
    check_xent_launch(xent_kernel(modules, "large", dtype), *logits_and_labels(rng, 13, c, dtype),
                      grid, block, scale=0.25)


@pytest.mark.parametrize("grid, block", [(1, 32), (3, 256), (2, 96)])
@pytest.mark.parametrize("c", [1, 3, 10, 32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_kernel_few_blocks(modules, rng, dtype, c, grid, block):
    """Fewer warps than row groups: each warp loops over rows (whole warps only: shuffles)."""
    check_xent_launch(xent_kernel(modules, "small", dtype), *logits_and_labels(rng, 300, c, dtype),
                      grid, block)


@pytest.mark.parametrize("block", [32, 64, 256, 1024])
def test_loss_sum_any_power_of_two_block(modules, rng, block):
    rows = rng.random(20001)
    out = np.zeros(())
    modules["softmax_cross_entropy.cu"].get_function("loss_sum_f64")(
        (1,), (block,), (rows, np.int64(rows.size), np.float64(0.5), out))
    np.testing.assert_allclose(out, 0.5 * rows.sum(), rtol=1e-15)


@pytest.mark.parametrize("schedule", [dict(seed=1), dict(seed=2), dict(seed=3),
                                      dict(reverse_blocks=True)], ids=str)
def test_results_do_not_depend_on_the_schedule(cp, schedule):
    """Threads of each block in a seeded random order at every step, blocks in random or reverse
    order: the results stay bit-identical (no race or order dependence the schedule exposes)."""
    def run():
        out = []
        for n, c in [(40, 10), (40, 1000), (9, 4097)]:
            x, labels = logits_and_labels(np.random.default_rng(7), n, c, np.float32)
            loss, grad = K.softmax_cross_entropy_cuda(cp.asarray(x), cp.asarray(labels),
                                                      grad_scale=1.0)
            out += [cp.asnumpy(loss), cp.asnumpy(grad),
                    cp.asnumpy(K.reduce_loss_cuda(loss, "mean"))]
        out.append(cp.asnumpy(K.sigmoid_forward_cuda(cp.asarray(np.linspace(-9, 9, 70001)))))
        return out

    in_order = run()
    saved = dict(cuemu.defaults)
    cuemu.defaults.update(schedule)
    try:
        shuffled = run()
    finally:
        cuemu.defaults.update(saved)
    for a, b in zip(in_order, shuffled):
        np.testing.assert_array_equal(a, b)


def test_arguments_are_checked_against_the_signature(modules):
    k = modules["softmax_cross_entropy.cu"].get_function("loss_sum_f32")
    x, out = np.ones(10, np.float32), np.zeros((), np.float32)
    with pytest.raises(cuemu.EmulationError, match="launch_bounds"):
        k((1,), (2048,), (x, np.int64(10), np.float64(1), out))
    with pytest.raises(cuemu.EmulationError, match="takes a 8-byte signed integer, got int32"):
        k((1,), (1024,), (x, np.int32(10), np.float64(1), out))
    with pytest.raises(cuemu.EmulationError,
                       match="pointer to a 4-byte floating, got an array of float64"):
        k((1,), (1024,), (x.astype(np.float64), np.int64(10), np.float64(1), out))
    read_only = out.copy()
    read_only.flags.writeable = False
    with pytest.raises(cuemu.EmulationError, match="may write through it"):
        k((1,), (1024,), (x, np.int64(10), np.float64(1), read_only))
    with pytest.raises(cuemu.EmulationError, match="takes 4 arguments, got 3"):
        k((1,), (1024,), (x, np.int64(10), out))
    with pytest.raises(cuemu.EmulationError, match="invalid configuration"):
        k((0,), (1024,), (x, np.int64(10), np.float64(1), out))
    small = modules["softmax_cross_entropy.cu"].get_function("softmax_xent_small_f32")
    with pytest.raises(cuemu.EmulationError, match="8-byte signed integer, got an array of int32"):
        small((1,), (256,), (np.zeros((4, 3), np.float32), np.zeros(4, np.int32), *[None] * 11))
