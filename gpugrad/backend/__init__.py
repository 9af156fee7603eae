"""Device selection: the one place that maps a device name to a Backend.

"cpu" is always there (NumPy). "cuda" is probed lazily: CuPy is imported only when CUDA is asked
for, and the probe's verdict (usable or not, and why) is cached for the process.
"""
from ..errors import DeviceError
from .base import Backend
from .numpy_backend import NumpyBackend

_cpu = NumpyBackend()
_cuda = None           # CupyBackend once probed and usable
_cuda_reason = None    # why CUDA is unusable, once probed
_seed = None           # the last manual_seed, applied to a backend created later
_default = _cpu

_INSTALL_HINT = ("install CuPy for your driver: pip install 'gpugrad[cuda12]' (CUDA 12.x, "
                 "driver >= 525) or 'gpugrad[cuda13]' (CUDA 13.x)")


def _probe_cuda():
    """Return (backend, None) if a GPU is usable, else (None, reason)."""
    try:
        import cupy
    except ImportError as e:
        return None, f"CuPy is not installed ({e}); {_INSTALL_HINT}"
    try:
        from cupy_backends.cuda.api import runtime
        count = runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError, or a missing libcuda / libcudart
        return None, _explain_cuda_failure(cupy, e)
    if count == 0:
        return None, "no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    try:
        cupy.zeros(1).sum().item()  # the first real device call: context creation and a launch
    except Exception as e:
        return None, _explain_cuda_failure(cupy, e)
    from .cupy_backend import CupyBackend
    return CupyBackend(seed=_seed), None


def _explain_cuda_failure(cupy, error):
    msg = str(error)
    try:
        from cupy_backends.cuda.api import runtime
        driver, built_for = runtime.driverGetVersion(), runtime.runtimeGetVersion()
    except Exception:
        driver, built_for = 0, 0
    cuda = lambda v: f"{v // 1000}.{v % 1000 // 10}"  # noqa: E731  (12090 -> "12.9")
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
