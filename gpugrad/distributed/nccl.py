"""NCCL between GPUs (CuPy's `cupy.cuda.nccl`): one GPU per local rank, a communicator whose
unique id rank 0 draws and MPI broadcasts, and all-reduces on a side stream.

This is the one module of gg.distributed that imports CuPy, and only when CUDA is asked for. Its
stream and event calls go through `cuda` (cupy.cuda) and its NCCL calls through `nccl`, both
passed in, so every line here also runs on the CPU with stand-ins (tests/test_distributed.py).

Stream order, per bucket: an event recorded on the current (compute) stream after the bucket's
gradients were copied into its buffer; the side stream waits for it, runs ncclAllReduce in place,
and records a second event; the compute stream waits for that one before it reads the sums. No
host synchronisation, so the same calls can be captured into a CUDA graph where NCCL allows it.
"""
import warnings

from ..errors import DeviceError

__all__ = ["select_gpu", "create", "NcclComm"]

NCCL_HINT = ("NCCL comes with CUDA's library wheels: pip install nvidia-nccl-cu12 (CUDA 12) or "
             "nvidia-nccl-cu13 (CUDA 13)")


def select_gpu(world, required):
    """Make GPU `local_rank % count` this rank's current device before anything touches CUDA.
    Returns False when there is no usable GPU (raises DeviceError instead when `required`)."""
    from .. import backend
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001  no CuPy, no driver, no device: the probe says which
        count = 0
    if count > 0:
        cupy.cuda.Device(world.local_rank % count).use()
    ok, reason = backend.cuda_status()
    if not ok and required:
        raise DeviceError(f"gpugrad.distributed.init(device='cuda'): {reason}")
    world.gpus = count
    return ok


def load_nccl(required):
    """cupy.cuda.nccl when its library loads; else None (DeviceError when `required`)."""
    try:
        with warnings.catch_warnings():  # CuPy warns at import when libnccl is missing
            warnings.simplefilter("ignore")
            from cupy.cuda import nccl
        if getattr(nccl, "available", True) and hasattr(nccl, "NcclCommunicator"):
            return nccl
        why = "CuPy cannot load the NCCL library"
    except Exception as e:  # noqa: BLE001
        why = f"cupy.cuda.nccl does not import ({e})"
    if required:
        raise DeviceError(f"gpugrad.distributed: {why}; {NCCL_HINT}")
    return None


def create(world, required=False, nccl=None, cuda=None):
    """The NCCL communicator of this world (rank 0's unique id broadcast over MPI), or None
    when NCCL cannot be used here (then device arrays are reduced through host memory by MPI,
    with a warning); `required` turns those cases into a DeviceError."""
    gpus = getattr(world, "gpus", 1)
    if world.local_size > gpus:
        why = (f"{world.local_size} ranks on this node share {gpus} GPU(s), and NCCL needs one "
               f"GPU per rank")
        if required:
            raise DeviceError(f"gpugrad.distributed: {why}")
        warnings.warn(f"gpugrad.distributed: {why}; reducing through host memory with MPI",
                      stacklevel=3)
        return None
    nccl = nccl or load_nccl(required)
    if nccl is None:
        warnings.warn(f"gpugrad.distributed: NCCL is not available; reducing device arrays "
                      f"through host memory with MPI ({NCCL_HINT})", stacklevel=3)
        return None
    uid = world.bcast_object(nccl.get_unique_id() if world.rank == 0 else None)
    comm = nccl.NcclCommunicator(world.size, uid, world.rank)
    if cuda is None:
        import cupy
        cuda = cupy.cuda
    return NcclComm(comm, world.size, nccl, cuda)


def _pointer(array):
    data = array.data
    return data.ptr if hasattr(data, "ptr") else array.ctypes.data  # CuPy, or NumPy (tests)


class NcclComm:
    """Sum-reduces and broadcasts device arrays with NCCL, in stream order."""

    host = False  # bucket buffers live on the device

    def __init__(self, comm, size, nccl, cuda):
        self.comm, self.size, self.nccl, self.cuda = comm, size, nccl, cuda
        self.stream = cuda.Stream(non_blocking=True)  # the side stream of the all-reduces
        self._events = {}  # key -> (ready, done): made once per bucket, reused every step
        self._types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32,
                       "float64": nccl.NCCL_FLOAT64, "int64": nccl.NCCL_INT64,
                       "int32": nccl.NCCL_INT32}

    def _type(self, array):
        try:
            return self._types[array.dtype.name]
        except KeyError:
            raise TypeError(f"gpugrad.distributed: NCCL cannot reduce {array.dtype} arrays; "
                            f"use float16/32/64 or int32/64") from None

    def _pair(self, key):
        pair = self._events.get(key)
        if pair is None:
            pair = self._events[key] = (self.cuda.Event(disable_timing=True),
                                        self.cuda.Event(disable_timing=True))
        return pair

    def start(self, buf, key):
        """Sum `buf` over the ranks, in place, on the side stream, after the work queued so far
        on the current stream; returns the event that marks the end."""
        ready, done = self._pair(key)
        ready.record(self.cuda.get_current_stream())
        self.stream.wait_event(ready)
        ptr = _pointer(buf)
        self.comm.allReduce(ptr, ptr, buf.size, self._type(buf), self.nccl.NCCL_SUM,
                            self.stream.ptr)
        done.record(self.stream)
        return done

    def wait(self, handle):
        """Later work on the current stream waits for the all-reduce (the host does not)."""
        self.cuda.get_current_stream().wait_event(handle)

    def poke(self, handles):
        """Nothing to drive: NCCL progresses on the GPU by itself."""

    def allreduce_(self, array):
        if not array.flags.c_contiguous:
            raise ValueError("gpugrad.distributed: NCCL reduces contiguous arrays only")
        self.wait(self.start(array, "all_reduce"))
        return array

    def bcast_(self, array, root=0):
        ptr = _pointer(array)
        self.comm.bcast(ptr, array.size, self._type(array), root,
                        self.cuda.get_current_stream().ptr)
        return array
