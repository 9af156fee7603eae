"""Device selection: the one place that maps a device name to a Backend.

"cpu" is always there (NumPy). "cuda" is probed lazily: CuPy is imported only when CUDA is asked
for, and the probe's verdict (usable or not, and why) is cached for the process.
"""
from ..errors import DeviceError
from .base import Backend
from .numpy_backend import NumpyBackend
from .probe import INSTALL_HINT as _INSTALL_HINT

_cpu = NumpyBackend()
_cuda = None           # CupyBackend once probed and usable
_cuda_reason = None    # why CUDA is unusable, once probed
_seed = None           # the last manual_seed, applied to a backend created later
_default = _cpu

_probe_rows = []       # the last probe's [(check, ok, detail)], for gpugrad info


def _probe_cuda():
    """Return (backend, None) if a GPU is usable, else (None, reason); never raises."""
    global _probe_rows
    from . import probe
    try:
        bk, reason, _probe_rows = probe.probe(seed=_seed, explain=_explain_cuda_failure)
    except BaseException as e:  # noqa: BLE001  the probe must answer, whatever broke
        if isinstance(e, KeyboardInterrupt):
            raise
        bk, reason, _probe_rows = None, f"the CUDA probe failed: {type(e).__name__}: {e}", []
    return bk, reason


def _explain_cuda_failure(cupy, error):
    msg = str(error)
    try:
        from cupy_backends.cuda.api import runtime
        driver, built_for = runtime.driverGetVersion(), runtime.runtimeGetVersion()
    except Exception:
        driver, built_for = 0, 0
    cuda = lambda v: f"{v // 1000}.{v % 1000 // 10}"  # noqa: E731  (12090 -> "12.9")
    if "no CUDA device is visible" in msg:
        return msg
    if "NoDevice" in msg:
        return f"no CUDA device is visible ({msg}); check nvidia-smi and CUDA_VISIBLE_DEVICES"
    if driver == 0:
        return (f"no NVIDIA driver was found (CuPy {cupy.__version__} is installed but cannot "
                f"reach a GPU: {msg}); this machine needs an NVIDIA GPU and its driver")
    if "InsufficientDriver" in msg or driver < built_for:
        return (f"the NVIDIA driver is too old: it supports CUDA {cuda(driver)}, CuPy "
                f"{cupy.__version__} needs CUDA {cuda(built_for)}; update the driver, or "
                f"{_INSTALL_HINT}")
    return f"CUDA is not usable: {msg}"


def cuda_status():
    """(available: bool, reason: str or None), probing once per process."""
    global _cuda, _cuda_reason
    if _cuda is None and _cuda_reason is None:
        _cuda, _cuda_reason = _probe_cuda()
    return _cuda is not None, _cuda_reason


def probe_report():
    """[(check, ok, detail)] of the CUDA probe (see backend/probe.py), probing if needed."""
    cuda_status()
    return list(_probe_rows)


def graph_status():
    """(ok, reason): whether CUDA-graph capture of a GEMM + kernel + reduction works here."""
    ok, reason = cuda_status()
    return _cuda.graph_status() if ok else (False, reason)


def get_backend(device) -> Backend:
    """The Backend for a device name ("cpu", "cuda"), or the default one for None."""
    if device is None:
        return _default
    if isinstance(device, Backend):
        return device
    if device == "cpu":
        return _cpu
    if device == "cuda" or device == "cuda:0":
        ok, reason = cuda_status()
        if not ok:
            raise DeviceError(f"device 'cuda' is not usable: {reason}")
        return _cuda
    if device == "auto":
        return _cuda if cuda_status()[0] else _cpu
    raise DeviceError(f"unknown device {device!r}: expected one of 'cpu', 'cuda', 'auto'")


def set_device(device):
    """Make `device` ("cpu", "cuda" or "auto") the default for new tensors and models."""
    global _default
    _default = get_backend(device)


def get_device():
    return _default.name


def backend_for_array(array):
    """The backend whose array type `array` is, or None (without importing CuPy)."""
    if _cpu.is_array(array):
        return _cpu
    if type(array).__module__.startswith("cupy"):
        return get_backend("cuda")
    return None


def manual_seed(n):
    """Seed the generators of every backend (and of one created later)."""
    global _seed
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise TypeError(f"manual_seed: expected a non-negative int, got {n!r}")
    _seed = n
    _cpu.seed(n)
    if _cuda is not None:
        _cuda.seed(n)
