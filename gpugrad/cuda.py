"""gg.cuda: is a GPU usable, and if not, why."""
from . import backend as _backend


def is_available() -> bool:
    """True only if CuPy imports, a device answers, an NVRTC-compiled kernel runs, a cuBLAS GEMM
    runs and the random generator works (backend/probe.py). Never raises."""
    return _backend.cuda_status()[0]


def unavailable_reason():
    """Why CUDA is unusable: the failing check and what to install (None when it is usable)."""
    return _backend.cuda_status()[1]


def probe_report():
    """The probe's checks in order, [(name, ok, detail)]: cupy, device, nvrtc, cublas, curand
    (it stops at the first failure)."""
    return _backend.probe_report()


def graphs_available() -> bool:
    """Whether CUDA-graph capture of a GEMM, a gpugrad kernel and a reduction works and replays
    correctly here (what Executor(cuda_graph=True) needs). Never raises."""
    return _backend.graph_status()[0]


def graphs_unavailable_reason():
    return _backend.graph_status()[1]


def synchronize():
    """Wait for queued GPU work (a no-op without a GPU)."""
    if is_available():
        _backend.get_backend("cuda").synchronize()


def device_name():
    """The current GPU's name and memory, e.g. 'NVIDIA H100 80GB HBM3, 79.1 GiB' (None without one)."""
    if not is_available():
        return None
    return _backend.get_backend("cuda").device_name()
