"""gg.cuda: is a GPU usable, and if not, why."""
from . import backend as _backend


def is_available() -> bool:
    """True only if CuPy imports and a CUDA device answers (never raises)."""
    return _backend.cuda_status()[0]


def unavailable_reason():
    """Why CUDA is unusable (None when it is usable)."""
    return _backend.cuda_status()[1]


def synchronize():
    """Wait for queued GPU work (a no-op without a GPU)."""
    if is_available():
        _backend.get_backend("cuda").synchronize()


def device_name():
    """The current GPU's name and memory, e.g. 'NVIDIA H100 80GB HBM3, 79.1 GiB' (None without one)."""
    if not is_available():
        return None
    return _backend.get_backend("cuda").device_name()
