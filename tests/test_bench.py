"""gpugrad.bench's parts: the hand-written floor does the Executor's math, every contender runs on
the CPU (and says why it cannot run elsewhere), the timing loop and the tables. No timings are
asserted: benchmarks are benchmarks."""
import numpy as np
import pytest

import gpugrad as gg
from gpugrad import nn, optim
from gpugrad.bench import plan, workloads as wl
from gpugrad.bench.floor import FloorMLP
from gpugrad.bench.table import Workload, render
from gpugrad.bench.timing import Unavailable, interleaved


def test_floor_is_the_executors_math():
    """Same initial weights, same batches: the hand-written step and the Executor agree."""
    sizes, n = [30, 20, 20, 5], 16
    floor = FloorMLP(sizes, n, lr=0.1, momentum=0.9)
    model = nn.mlp(sizes)
    model.load_state_dict({f"{2 * i}.{kind}": arr for i in range(3)
                           for kind, arr in (("weight", floor.w[i]), ("bias", floor.b[i]))})
    ex = gg.Executor(model, optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.standard_normal((n, 30)).astype(np.float32)
        y = rng.integers(0, 5, n)
        assert floor.step(x, y) == pytest.approx(ex.step(x, y), rel=1e-6)
    mine = [floor.w[0], floor.b[0], floor.w[1], floor.b[1], floor.w[2], floor.b[2]]
    for p, q in zip(model.parameters(), mine):
        np.testing.assert_allclose(p.numpy(), q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", ["executor", "eager", "floor", "torch"])
def test_train_step_contenders_run_and_learn(impl):
    if impl == "torch":
        pytest.importorskip("torch")
    step = wl.train_step(impl, "cpu", (20, 16, 5), 32)
    losses = [step() for _ in range(30)]  # the same batch again and again: the loss must fall
    assert all(isinstance(v, float) for v in losses) and losses[-1] < 0.8 * losses[0]


def test_train_contenders_follow_the_same_trajectory():
    """Same initial weights, same batch: every contender computes the same losses (a step's
    speed can depend on the values, so the comparison must not let them differ)."""
    impls = ["executor", "eager", "floor"]
    try:
        import torch  # noqa: F401
        impls.append("torch")
    except ImportError:
        pass
    steps = {impl: wl.train_step(impl, "cpu", (20, 16, 5), 32) for impl in impls}
    losses = {impl: [step() for _ in range(5)] for impl, step in steps.items()}
    for impl in impls[1:]:
        np.testing.assert_allclose(losses[impl], losses["executor"], rtol=1e-5, err_msg=impl)


def test_what_cannot_run_says_why():
    with pytest.raises(Unavailable, match="GPU only"):
        wl.train_step("graph", "cpu", (20, 16, 5), 8)
    with pytest.raises(Unavailable, match="only with a GPU"):
        wl.copy_call("h2d", "gpugrad", "cpu")
    if not gg.cuda.is_available():
        with pytest.raises(Unavailable, match="no usable CUDA GPU"):
            wl.train_step("executor", "cuda", (20, 16, 5), 8)


@pytest.mark.parametrize("op", list(wl.OP_SIZES))
def test_op_calls_compute_gradients_afresh(op):
    size = wl.OP_SIZES[op]["small"]
    call = wl.op_call(op, "eager", "cpu", size)
    call()
    grads = [t.grad.numpy().copy() for t in call.leaves]
    assert all(np.isfinite(g).all() and g.any() for g in grads)
    call()  # gradients are reset, not accumulated
    for t, g in zip(call.leaves, grads):
        np.testing.assert_array_equal(t.grad.numpy(), g)


def test_eager_chain_gradient():
    """The chain's gradient is the product of the multipliers (adds pass it through)."""
    call = wl.eager_chain("eager", "cpu", ops=6)
    call()
    (x,) = call.leaves
    a0 = (np.random.default_rng(0).standard_normal((3, 16)) * 0.01 + 1).astype(np.float32)[1]
    np.testing.assert_allclose(x.grad.numpy(), a0 ** 3, rtol=1e-6)


def test_interleaved_times_every_contender_in_turns():
    calls = []
    medians = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                          min_rounds=5, budget_s=0.0, warmup=1)
    assert set(medians) == {"a", "b"} and all(t > 0 for t in medians.values())
    assert calls.count("a") == calls.count("b") >= 5


def test_table_ratios_and_units():
    w = Workload("demo", ("executor", "graph", "floor", "torch"), None, ("flop", 2e9), "matmul")
    w.medians = {("executor", "cpu"): 0.004, ("floor", "cpu"): 0.002, ("torch", "cpu"): 0.008,
                 ("executor", "cuda"): 0.001, ("graph", "cuda"): 0.0005, ("torch", "cuda"): 0.002}
    text = render(w, {"matmul_flop_per_s": 40e12, "copy_bytes_per_s": 3e12})
    lines = text.splitlines()
    executor_cpu = next(r for r in lines if "gpugrad executor " in r and " cpu " in r)
    # 4 ms: half of torch's 8 ms, twice the floor's 2 ms
    assert executor_cpu.split()[3:7] == ["4.00", "ms", "0.50", "2.00"]
    graph = next(r for r in lines if "executor+graph" in r)
    # the graph row: half of torch's time, 8x the CPU executor, 4 TFLOP/s = 10% of the card
    assert graph.split()[3:] == ["500.0", "us", "0.25", "8.0x", "4.00", "TFLOP/s", "10%"]
    assert lines[0] == "demo" and not any("NumPy floor" in r and "cuda" in r for r in lines)


def test_plan_quick_is_small():
    quick = plan(True)
    assert sum(w.title.startswith("train step") for w in quick) == 1
    full = [w.title for w in plan(False) if w.title.startswith("train step")]
    assert len(full) == 8 and sum("residual MLP" in t for t in full) == 2  # 2 MLPs x 3 + 2
