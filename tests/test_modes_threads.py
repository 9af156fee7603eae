"""Modes belong to a thread (issue 10, item 3): no_grad / enable_grad / detect_anomaly in one
thread never change another thread's, overlapping blocks restore each thread's own mode, and the
decorators work on generator functions as in PyTorch."""
import threading

import numpy as np
import pytest

import gpugrad as gg


def _records():
    """Whether an op on a requires-grad tensor records a graph here and now."""
    return (gg.tensor([1.0], requires_grad=True) * 2).requires_grad


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001  handed to the test thread
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_no_grad_in_one_thread_does_not_stop_another():
    inside, release = threading.Event(), threading.Event()

    def worker():
        with gg.no_grad():
            inside.set()
            release.wait(10)
            return _records()

    result = {}
    t = threading.Thread(target=lambda: result.setdefault("worker", worker()))
    t.start()
    assert inside.wait(10)
    assert _records() and gg.is_grad_enabled()  # this thread records while the other is inside
    release.set()
    t.join(10)
    assert result["worker"] is False


def test_overlapping_blocks_in_two_threads_each_restore_their_own_mode():
    """A enters, B enters, A exits, B exits: with a process-wide flag, recording stayed off."""
    steps = [threading.Event() for _ in range(4)]
    seen = {}

    def a():
        with gg.no_grad():
            steps[0].set()
            steps[1].wait(10)
        seen["a after"] = _records()
        steps[2].set()

    def b():
        steps[0].wait(10)
        with gg.no_grad():
            steps[1].set()
            steps[2].wait(10)
            seen["b inside"] = _records()
        seen["b after"] = _records()

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"a after": True, "b inside": False, "b after": True}
    assert _records()


def test_a_new_thread_starts_with_defaults_whatever_its_parent_does():
    with gg.no_grad(), gg.detect_anomaly():
        assert _in_thread(lambda: (gg.is_grad_enabled(), gg.anomaly.is_enabled())) == (True,
                                                                                       False)
    assert gg.is_grad_enabled()


def test_anomaly_mode_is_per_thread():
    def nan_in_thread():
        x = gg.tensor([-1.0], requires_grad=True)
        return float(gg.log(x).numpy()[0])  # NaN, unchecked: this thread is not in the mode

    with gg.detect_anomaly():
        assert np.isnan(_in_thread(nan_in_thread))
        with pytest.raises(gg.AnomalyError):
            gg.log(gg.tensor([-1.0], requires_grad=True))


def test_no_grad_decorates_generators_as_pytorch_does(torch):
    def make(lib, no_grad, enabled):
        @no_grad()
        def gen(n):
            total = 0
            for i in range(n):
                got = yield (enabled(), i)
                total += got or 0
            return total
        return gen

    for lib, no_grad, enabled in ((gg, gg.no_grad, gg.is_grad_enabled),
                                  (torch, torch.no_grad, torch.is_grad_enabled)):
        g = make(lib, no_grad, enabled)(2)
        assert next(g) == (False, 0)     # the generator's steps run without grad
        assert enabled()                 # the caller's mode is back at each yield
        assert g.send(5) == (False, 1)
        assert enabled()
        with pytest.raises(StopIteration) as stop:
            g.send(7)
        assert stop.value.value == 12 and enabled()


def test_decorated_generator_close_and_throw():
    log = []

    @gg.no_grad()
    def gen():
        try:
            yield 1
            yield 2
        except ValueError:
            log.append(("caught", gg.is_grad_enabled()))
            yield 3
        finally:
            log.append(("finally", gg.is_grad_enabled()))

    g = gen()
    assert next(g) == 1
    assert g.throw(ValueError("x")) == 3
    g.close()
    assert log == [("caught", False), ("finally", False)] and gg.is_grad_enabled()


def test_one_instance_entered_in_two_threads():
    ctx = gg.no_grad()
    inside, release = threading.Event(), threading.Event()

    def worker():
        with ctx:
            inside.set()
            release.wait(10)
        return gg.is_grad_enabled()

    out = {}
    t = threading.Thread(target=lambda: out.setdefault("w", worker()))
    t.start()
    inside.wait(10)
    with ctx:
        assert not gg.is_grad_enabled()
        release.set()
        t.join(10)
    assert out["w"] is True and gg.is_grad_enabled()
