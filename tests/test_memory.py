"""Memory stability: long training runs keep resident memory and live objects flat, backward frees
the graph, and no step creates reference cycles (so memory goes back by reference counting alone,
without waiting for the cyclic garbage collector). GPU twin: tests/gpu/test_memory_gpu.py."""
import contextlib
import ctypes
import gc
import os
import sys
import tracemalloc
import weakref

import numpy as np
from _training import eager_step, small_problem
import pytest

import gpugrad as gg
from gpugrad.tensor import Function, Tensor

STEPS, WARMUP = 2000, 200
# Three measures over the same 2000 steps. Live Tensors/Functions: any leaked graph or tensor.
# tracemalloc (Python objects and NumPy's data buffers, byte-exact): a leaked 0-d loss alone
# would be ~300 KiB. Resident memory, as the OS sees it: also what neither of those sees (C-level
# allocations), though memory the allocator already holds can absorb a small leak unseen.
TRACED_BOUND = 32 * 1024
RSS_BOUND = 512 * 1024


def resident_bytes():
    """Current resident set size (Linux /proc), else the peak (getrusage), which a leak grows
    just the same."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource  # POSIX only, like the peak it reads
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def trim_heap():
    """Hand the allocator's free pages back to the OS (glibc's malloc_trim), so that RSS counts
    memory in use, not memory an earlier test freed and malloc kept (which would hide a leak)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS is then a coarser measure
        pass


def live_graph_objects():
    """Live Tensors and Functions (NumPy arrays are not tracked by gc: tracemalloc sees them).
    type(), not isinstance: isinstance reads __class__, which some lazy torch objects warn on."""
    return sum(issubclass(type(o), (Function, Tensor)) for o in gc.get_objects())


@pytest.fixture
def setup():
    return small_problem()


def assert_flat(step, label, steps=STEPS):
    """Run `step` `steps` times after a warm-up and check that nothing accumulates; returns the
    losses."""
    # Collect earlier tests' garbage first, then warm up: optimizer state, NumPy's caches and
    # malloc's arenas settle, and the heap regrows to its working size (a collection just before
    # the baseline could shrink RSS and make the first step look like growth).
    gc.collect()
    for _ in range(WARMUP):
        step()
    losses = np.empty(steps)  # preallocated: a list of floats would itself grow ~32 B a step
    objects = live_graph_objects()  # before the RSS baseline: its list of every object is big
    tracemalloc.start()
    trim_heap()
    rss, traced = resident_bytes(), tracemalloc.get_traced_memory()[0]
    for i in range(steps):
        losses[i] = step()
    traced = tracemalloc.get_traced_memory()[0] - traced
    tracemalloc.stop()
    gc.collect()  # can only lower the other two numbers: what stays is held on purpose
    trim_heap()
    grown = resident_bytes() - rss
    new_objects = live_graph_objects() - objects
    assert new_objects <= 0, f"{label}: {new_objects} more live tensors/functions"
    assert traced < TRACED_BOUND, f"{label}: traced memory grew {traced} bytes"
    assert grown < RSS_BOUND, f"{label}: resident memory grew {grown / 2**20:.2f} MiB"
    return losses


def assert_trained(losses):
    assert np.isfinite(losses).all() and losses[-1] < losses[0] * 0.9


def test_eager_training_keeps_memory_flat(setup):
    model, opt, x, y = setup
    assert_trained(assert_flat(lambda: eager_step(model, opt, x, y), "eager"))


def test_executor_training_keeps_memory_flat(setup):
    model, opt, x, y = setup
    ex = gg.Executor(model, optimizer=opt)
    assert_trained(assert_flat(lambda: ex.step(x, y), "executor"))


@pytest.mark.parametrize("keep, message", [
    (lambda out: out, "more live tensors"),                # whole graphs
    (lambda out: out.data.copy(), "traced memory grew"),  # bare arrays: gc does not see them
], ids=["graphs", "arrays"])
def test_the_checks_catch_a_leak(setup, keep, message):
    model, opt, x, y = setup
    kept = []

    def leaky():
        out = model(gg.tensor(x))
        kept.append(keep(out))
        return gg.cross_entropy(out, y).item()
    with pytest.raises(AssertionError, match=message):
        assert_flat(leaky, "leaky", steps=300)


def cycle_garbage(run):
    """What `run()` left reclaimable only through reference cycles: with the cyclic collector
    off and told to keep (DEBUG_SAVEALL) what it finds, gc.garbage holds exactly that."""
    gc.collect()  # earlier cycles (other tests, pytest's reports) are freed normally first
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("anomaly", [False, True])
def test_steps_create_no_reference_cycles(setup, anomaly):
    model, opt, x, y = setup
    ex = gg.Executor(model, optimizer=opt)

    def steps():
        with gg.detect_anomaly() if anomaly else contextlib.nullcontext():
            for _ in range(20):
                eager_step(model, opt, x, y)
                ex.step(x, y)
                ex.predict(x)
                with gg.no_grad():
                    model(gg.tensor(x))
                model(gg.tensor(x)).sum()  # a graph dropped without backward
    garbage = cycle_garbage(steps)
    kinds = sorted({type(o).__name__ for o in garbage})
    assert not garbage, f"reclaimable only through cycles: {kinds}"


def test_cycle_check_sees_a_cycle():
    def make_cycle():
        t = gg.ones(3)
        t.name = [t]  # tensor -> list -> tensor
    assert any(isinstance(o, Tensor) for o in cycle_garbage(make_cycle))


def _graph(loss, owned):
    """Every Function reachable from loss, and the arrays they saved for backward (except those
    that live on elsewhere anyway: `owned`, the parameters and labels)."""
    fns, stack = [], [loss._ctx]
    while stack:
        fn = stack.pop()
        if fn not in fns:
            fns.append(fn)
            stack.extend(e for e in fn.next if isinstance(e, Function))
    keep = {id(a) for a in owned}
    saved = [v for fn in fns for v in vars(fn).values()
             if isinstance(v, np.ndarray) and id(v) not in keep]
    return fns, saved


def _loss_and_graph(model, x, y):
    loss = gg.cross_entropy(model(gg.tensor(x)), y)
    return (loss,) + _graph(loss, [p.data for p in model.parameters()] + [y])


def test_backward_frees_the_graph_and_its_saved_arrays(setup):
    model, _, x, y = setup

    def run():
        loss, fns, saved = _loss_and_graph(model, x, y)
        assert len(fns) >= 6 and len(saved) >= 6  # matmuls, adds, relus, the loss
        fn_refs, array_refs = [weakref.ref(f) for f in fns], [weakref.ref(a) for a in saved]
        del fns, saved
        loss.backward()
        # saved activations go during backward, while the loss tensor (and graph) still exist
        assert all(r() is None for r in array_refs), "backward kept saved arrays alive"
        # the loss keeps its own Function, emptied; the rest went with the links between them
        assert vars(loss._ctx) == {"freed": True}
        assert all(r() is None for r in fn_refs if r() is not loss._ctx)
        del loss
        assert all(r() is None for r in fn_refs)  # by reference counting, the collector is off
    assert not cycle_garbage(run)
    assert all(p.grad is not None for p in model.parameters())


def test_graph_dropped_without_backward_is_freed_at_once(setup):
    model, _, x, y = setup

    def run():
        loss, fns, saved = _loss_and_graph(model, x, y)
        refs = [weakref.ref(o) for o in fns + saved]
        del fns, saved, loss
        assert all(r() is None for r in refs)
    assert not cycle_garbage(run)
