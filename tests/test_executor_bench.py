"""The Executor's benchmarks: the residual-MLP workload (its hand-written floor, FloorResidual,
does the math of the Executor running a user-defined Module of x + relu(linear(x)) blocks, and
every contender follows the same trajectory), bench/alloc_cost.py and bench/step_opcodes.py. No
timings are asserted."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.bench import workloads as wl
from gpugrad.bench.floor import FloorMLP, FloorResidual

SIZES = (12, 16, 16, 16, 5)  # input layer, two blocks, output layer


def test_floor_residual_is_the_executors_math():
    n = 8
    floor = FloorResidual(SIZES, n, lr=0.1, momentum=0.9)
    model = wl._gg_residual(gg, SIZES, "cpu")
    model.load_state_dict({f"linears.{i}.{kind}": arr for i in range(len(floor.w))
                           for kind, arr in (("weight", floor.w[i]), ("bias", floor.b[i]))})
    ex = gg.Executor(model, optimizer=gg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.standard_normal((n, SIZES[0])).astype(np.float32)
        y = rng.integers(0, SIZES[-1], n)
        assert floor.step(x, y) == pytest.approx(ex.step(x, y), rel=1e-6)
    mine = [a for i in range(len(floor.w)) for a in (floor.w[i], floor.b[i])]
    for p, q in zip(model.parameters(), mine):
        np.testing.assert_allclose(p.numpy(), q, rtol=1e-5, atol=1e-6)


def test_residual_contenders_follow_the_same_trajectory():
    impls = ["executor", "eager", "floor"]
    try:
        import torch  # noqa: F401
        impls.append("torch")
    except ImportError:
        pass
    steps = {impl: wl.train_step(impl, "cpu", SIZES, 32, residual=True) for impl in impls}
    losses = {impl: [step() for _ in range(6)] for impl, step in steps.items()}
    assert losses["executor"][-1] < losses["executor"][0]
    for impl in impls[1:]:
        np.testing.assert_allclose(losses[impl], losses["executor"], rtol=1e-5, err_msg=impl)


def test_floor_residual_needs_blocks_of_one_width():
    for sizes in [(12, 16, 5), (12, 16, 8, 5)]:
        with pytest.raises(ValueError, match="at least one block"):
            FloorResidual(sizes, 4)


def _bench_script(name):
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_opcodes_script_counts_a_replayed_step(capsys):
    """Deterministic counts: the replayed step runs far less Python than eager and more than
    the hand-written floor; the traced step still trains (the tracer only watches)."""
    results = _bench_script("step_opcodes").main(["--top", "3"])
    (ex_ops, ex_calls, ex_per), (eager_ops, _, _), (floor_ops, _, _) = (
        results[k] for k in ("executor", "eager", "floor"))
    assert floor_ops < ex_ops < eager_ops / 2 and ex_calls < 100
    assert any(name.startswith("<gpugrad plan") for name, _ in ex_per)  # the replayed code
    assert "tensor.py" not in {name for name, fn in ex_per if fn == "apply"}  # no graph built
    out = capsys.readouterr().out
    assert f"executor: {ex_ops} bytecodes" in out and "floor:" in out


def test_alloc_cost_script_runs(capsys):
    module = _bench_script("alloc_cost")
    sizes, n = (12, 8, 8, 4), 6  # the allocating twin computes what the floor computes
    floor, twin = (cls(sizes, n, lr=0.1) for cls in (FloorMLP, module.FloorAllocating))
    x, y = wl.batch(sizes, n)
    for _ in range(3):
        assert twin.step(x, y) == floor.step(x, y)
    for a, b in zip(floor.w + floor.b, twin.w + twin.b):
        np.testing.assert_array_equal(a, b)
    assert module.main(["--quick", "--seconds", "0.05", "--batches", "8"]) == 0
    out = capsys.readouterr().out
    for impl in ("executor", "eager", "floor", "floor, allocating"):
        assert f"  {impl} " in out
    assert "allocation costs the floor" in out
