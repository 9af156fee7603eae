"""CUDA graphs for the CuPy backend: capture a step's kernel launches once, replay them with one.

Why: at small batch sizes a training step is launch-bound (some 40 launches from Python cost more
than the kernels run). Stream capture records the launches into a graph without running them;
`launch()` then queues the whole step with one call.

What the captured function must respect (the Executor's step does, see executor_graph.py): every
array it touches exists before capture and outlives the graph (the graph keeps their addresses);
it reads nothing back to the host; numbers that change between replays are read by the kernels
from device arrays that the caller rewrites before each launch.
"""
import threading

import cupy

from . import cublas

_capture_lock = threading.Lock()
_capture_streams = {}  # device id -> the stream every capture on it runs on


def _capture_stream():
    """One capture stream per device, so gpugrad's cuBLAS handle needs one workspace for all
    captures (backend/cublas.py keeps one per stream)."""
    dev = cupy.cuda.runtime.getDevice()
    stream = _capture_streams.get(dev)
    if stream is None:
        stream = _capture_streams[dev] = cupy.cuda.Stream(non_blocking=True)
    return stream


class CudaGraph:
    """`fn`'s device work, captured once; `launch()` replays it on the current stream."""

    def __init__(self, fn):
        # CUDA cannot capture the legacy default stream, so capture runs on a private stream;
        # replays go on the caller's current stream, ordered with the copies around them as the
        # uncaptured step would be.
        self._stream = _capture_stream()
        # Whatever fn allocates despite the rules comes from this private pool, kept as long as
        # the graph: replays write to that memory, so no other array may ever be handed it.
        self._pool = cupy.cuda.MemoryPool()
        # gpugrad's cuBLAS handle is bound to the capture stream (and its workspace attached)
        # before capture begins: no cublasSetStream inside the capture (backend/cublas.py)
        try:
            cublas.handle(cupy).prepare(self._stream.ptr)
        except cublas.CublasError:
            pass  # no cuBLAS: a GEMM in fn fails with that error, a step without one is fine
        with _capture_lock, cupy.cuda.using_allocator(self._pool.malloc), self._stream:
            self._stream.begin_capture()
            try:
                fn()
            except BaseException:
                try:
                    self._stream.end_capture()  # leave capture mode; the partial graph is dropped
                except Exception:  # an invalidated capture raises here too; keep fn's error
                    pass
                raise
            self._graph = self._stream.end_capture()
        # bytes fn allocated during capture: 0 for a step that follows the rules (tests check it)
        self.allocated_bytes = self._pool.total_bytes()

    def launch(self):
        self._graph.launch(stream=cupy.cuda.get_current_stream())
