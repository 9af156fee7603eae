"""Grad mode and anomaly mode, per thread.

Each thread has its own modes (a context variable: a new thread starts in an empty context), as
in PyTorch: a `no_grad()` block in a data-loading or evaluation
thread must not stop graph recording in the training thread, and two overlapping blocks in two
threads must each restore their own thread's mode. A new thread starts with recording on and
anomaly checks off, whatever the thread that started it was doing.

`no_grad`, `enable_grad` and `detect_anomaly` are context managers and decorators; on a generator
function the decorator applies the mode inside the generator's own steps only, and the caller's
mode is back whenever the generator yields (PyTorch's rule).
"""
import contextvars
import functools
import inspect
import threading


class _State:
    """One combination of the modes. States are immutable and shared; switching a mode sets the
    context variable to another state, so reading the modes is one ContextVar.get (the hot path:
    every op reads them)."""
    __slots__ = ("enabled", "anomaly", "forward")

    def __init__(self, enabled, anomaly, forward):
        self.enabled = enabled    # record graphs (off under no_grad)
        self.anomaly = anomaly    # check every op's output and gradients for NaN/Inf
        self.forward = forward    # carry tangents beside values (inside gg.autograd.jvp)


_STATES = {(e, a, f): _State(e, a, f) for e in (True, False) for a in (True, False)
           for f in (True, False)}
# A new thread runs in a new, empty context: it sees the default, recording on and checks off.
_state = contextvars.ContextVar("gpugrad_modes", default=_STATES[True, False, False])
current = _state.get  # the calling thread's _State


def _mode(name):
    """A property reading and setting one of this thread's modes."""
    return property(lambda self: getattr(_state.get(), name),
                    lambda self, value: _set(name, value))


class _ModeView:
    """`grad_mode.enabled` / `grad_mode.anomaly`: this thread's modes (setting one sets it for
    this thread only; the context managers are the usual way)."""
    enabled = _mode("enabled")
    anomaly = _mode("anomaly")


grad_mode = _ModeView()


def _set(attr, value):
    """Set one of this thread's modes, keeping the others."""
    now = _state.get()
    modes = {"enabled": now.enabled, "anomaly": now.anomaly, "forward": now.forward}
    modes[attr] = bool(value)
    # an explicit key: tuple(generator) would resize its tuple, which feeds CPython's tuple free
    # list a block per call until it is full (seen as growth by the memory tests)
    _state.set(_STATES[modes["enabled"], modes["anomaly"], modes["forward"]])


def is_grad_enabled():
    """Whether ops record a graph in this thread now."""
    return _state.get().enabled


class _ModeSwitch:
    """Sets one of this thread's modes (`attr`) to `value` inside a with-block or a decorated
    function. The values to restore are kept per thread and per entry, so one instance may be
    entered again while active, and by several threads at once."""
    attr, value = None, None

    def __init__(self, *args):
        if args:
            name = type(self).__name__
            raise TypeError(f"{name}() takes no arguments: write `with gg.{name}():` or "
                            f"decorate with `@gg.{name}()`")
        self._local = threading.local()

    def _saved(self):
        saved = getattr(self._local, "saved", None)
        if saved is None:
            saved = self._local.saved = []
        return saved

    def __enter__(self):
        self._saved().append(_state.get())
        _set(self.attr, self.value)
        return self

    def __exit__(self, *exc):
        _state.set(self._saved().pop())

    def __call__(self, fn):
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}: can decorate a function, not "
                            f"{type(fn).__name__}")
        switch = type(self)
        if inspect.isgeneratorfunction(fn):
            return functools.wraps(fn)(_generator_in_mode(fn, switch))

        @functools.wraps(fn)  # copies what the callable has (partials and modules lack names)
        def wrapper(*args, **kwargs):
            with switch():
                return fn(*args, **kwargs)
        return wrapper


def _generator_in_mode(fn, switch):
    """A generator function that runs each step of fn's generator under `switch`, and gives the
    caller back its own mode at every yield."""
    def wrapper(*args, **kwargs):
        gen = fn(*args, **kwargs)
        resume, value = gen.send, None
        while True:
            try:
                with switch():
                    out = resume(value)
            except StopIteration as stop:
                return stop.value
            try:
                value = yield out
                resume = gen.send
            except GeneratorExit:
                with switch():
                    gen.close()
                raise
            except BaseException as e:  # thrown in by the caller: pass it on, in the mode
                resume, value = gen.throw, e
    return wrapper


class no_grad(_ModeSwitch):
    """Context manager (and decorator) under which ops record no graph, in this thread."""
    attr, value = "enabled", False


class enable_grad(_ModeSwitch):
    """Context manager (and decorator) that turns graph recording back on inside a no_grad
    block, in this thread."""
    attr, value = "enabled", True


class forward_ad(_ModeSwitch):
    """Inside gg.autograd.jvp: every op carries its output's tangent beside the value."""
    attr, value = "forward", True
