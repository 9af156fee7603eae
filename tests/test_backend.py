"""Devices without a GPU: every path gives gpugrad's clear error, never a CuPy traceback."""
import importlib
import sys

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import backend
from gpugrad.backend.numpy_backend import NumpyBackend

NO_GPU = not gg.cuda.is_available()


def test_cpu_is_the_default_and_auto_never_raises():
    assert gg.get_device() == "cpu"
    gg.set_device("auto")
    assert gg.get_device() == ("cuda" if gg.cuda.is_available() else "cpu")
    gg.set_device("cpu")
    assert gg.tensor([1.0]).device == "cpu"


def test_unknown_device_names_the_choices():
    with pytest.raises(gg.DeviceError, match="unknown device 'tpu'.*'cpu', 'cuda', 'auto'"):
        gg.set_device("tpu")
    with pytest.raises(gg.DeviceError):
        gg.tensor([1.0], device="gpu")
    assert isinstance(gg.DeviceError("x"), RuntimeError)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a usable GPU")
def test_cuda_unusable_raises_device_error_with_reason():
    assert gg.cuda.is_available() is False
    reason = gg.cuda.unavailable_reason()
    assert reason
    with pytest.raises(gg.DeviceError) as e:
        gg.set_device("cuda")
    assert reason in str(e.value) and gg.get_device() == "cpu"
    for make in (lambda: gg.tensor([1.0], device="cuda"), lambda: gg.zeros(2, device="cuda"),
                 lambda: gg.tensor([1.0]).to("cuda"), lambda: gg.randn(2, device="cuda")):
        with pytest.raises(gg.DeviceError, match="not usable"):
            make()


def test_cupy_backend_module_imports_without_a_gpu():
    pytest.importorskip("cupy")
    mod = importlib.import_module("gpugrad.backend.cupy_backend")
    assert mod.CupyBackend.name == "cuda"


def test_importing_gpugrad_does_not_import_cupy():
    code = ("import sys, gpugrad as gg; gg.tensor([1.0]) * 2; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    import subprocess
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())


def _env():
    import os
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p])
    return env


@pytest.mark.parametrize("cause, expected", [
    ("missing", "CuPy is not installed"),
    ("nodriver", "no NVIDIA driver"),
    ("olddriver", "driver is too old"),
    ("nodevice", "no CUDA device"),
])
def test_probe_explains_each_failure(monkeypatch, cause, expected):
    """Simulate each way CUDA can be unusable and check the message and the install hint."""
    fake_runtime = type(sys)("fake_runtime")

    class CUDARuntimeError(RuntimeError):
        pass

    def count():
        if cause == "olddriver":
            raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                                   "insufficient for CUDA runtime version")
        if cause == "nodriver":
            raise CUDARuntimeError("cudaErrorInsufficientDriver: no driver")
        return 0
    fake_runtime.getDeviceCount = count
    fake_runtime.driverGetVersion = lambda: 0 if cause == "nodriver" else 11080
    fake_runtime.runtimeGetVersion = lambda: 12090
    fake_api = type(sys)("fake_api")
    fake_api.runtime = fake_runtime
    fake_cupy = type(sys)("cupy")
    fake_cupy.__version__ = "14.0.0"
    monkeypatch.setitem(sys.modules, "cupy", None if cause == "missing" else fake_cupy)
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.api", fake_api)
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.api.runtime", fake_runtime)
    monkeypatch.setattr(backend, "_cuda", None)
    monkeypatch.setattr(backend, "_cuda_reason", None)
    assert gg.cuda.is_available() is False
    reason = gg.cuda.unavailable_reason()
    assert expected in reason
    if cause in ("missing", "olddriver"):
        assert '".[cuda12]"' in reason and '".[cuda13]"' in reason
    if cause == "olddriver":
        assert "11.8" in reason and "12.9" in reason
    with pytest.raises(gg.DeviceError, match=expected):
        gg.set_device("cuda")
    gg.set_device("auto")  # never raises
    assert gg.get_device() == "cpu"


def test_ops_mixing_devices_raise_device_error():
    other = NumpyBackend()
    other.name = "other"
    a = gg.tensor([1.0, 2.0])
    b = gg.Tensor._make(np.array([3.0, 4.0], dtype=np.float32), other)
    for op in (lambda: a + b, lambda: a * b, lambda: gg.matmul(a, b), lambda: a == b):
        with pytest.raises(gg.DeviceError, match="'cpu'.*'other'|'other'.*'cpu'"):
            op()


def test_manual_seed_validates():
    with pytest.raises(TypeError, match="manual_seed"):
        gg.manual_seed(-1)
    with pytest.raises(TypeError, match="manual_seed"):
        gg.manual_seed(1.5)


@pytest.mark.parametrize("failing, expected", [
    ("nvrtc", "NVRTC"), ("cublas", "cuBLAS"), ("curand", "cuRAND")])
def test_probe_names_the_failing_library_and_the_fix(monkeypatch, failing, expected):
    """CuPy imports and a device answers, but NVRTC, cuBLAS or cuRAND does not work: CUDA is
    reported unusable, by name, with the install command (never a True that fails later)."""
    pytest.importorskip("cupy")
    from gpugrad.backend import cupy_backend, probe

    def broken(*args, **kwargs):
        raise OSError(f"lib{failing} is missing")

    monkeypatch.setattr(probe, "_device", lambda cupy, explain: "a simulated device")
    for step in ("nvrtc", "cublas"):
        monkeypatch.setattr(probe, f"_{step}", broken if step == failing else
                            (lambda cupy: "simulated: works"))
    if failing == "curand":
        monkeypatch.setattr(cupy_backend.CupyBackend, "__init__", broken)
    else:  # no driver here: the real generator would fail too; simulate a working one
        monkeypatch.setattr(cupy_backend.CupyBackend, "__init__", lambda self, seed=None: None)
        monkeypatch.setattr(cupy_backend.CupyBackend, "randn",
                            lambda self, shape, dtype: np.linspace(-1, 1, 64))
        monkeypatch.setattr(cupy_backend.cupy, "asnumpy", lambda a: a)
    monkeypatch.setattr(backend, "_cuda", None)
    monkeypatch.setattr(backend, "_cuda_reason", None)
    assert gg.cuda.is_available() is False
    reason = gg.cuda.unavailable_reason()
    assert reason.startswith(f"{failing}:") and expected in reason and "[ctk]" in reason
    rows = gg.cuda.probe_report()
    assert rows[-1][:2] == (failing, False) and all(ok for _, ok, _ in rows[:-1])
    assert [r[0] for r in rows] == list(probe.CHECKS[:probe.CHECKS.index(failing) + 1])
    assert gg.cuda.graphs_available() is False


def test_probe_never_raises(monkeypatch):
    from gpugrad.backend import probe

    def explode(**kwargs):
        raise SystemError("something unforeseen")
    monkeypatch.setattr(probe, "probe", explode)
    monkeypatch.setattr(backend, "_cuda", None)
    monkeypatch.setattr(backend, "_cuda_reason", None)
    assert gg.cuda.is_available() is False
    assert "something unforeseen" in gg.cuda.unavailable_reason()
