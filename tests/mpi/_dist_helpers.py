"""Stand-ins for the tests of gg.distributed: a loopback communicator (a world of one that still
goes through the buckets), and CuPy's stream/event API and NCCL emulated on the CPU, NCCL's sums
done by MPI on the host arrays behind the pointers (so the NCCL path runs with 2 ranks here)."""
import ctypes

import numpy as np


class LoopbackComm:
    """Bucket traffic of a world of one: the sum over one rank is the buffer itself."""

    host = True

    def __init__(self):
        self.log = []

    def start(self, buf, key):
        self.log.append(("start", key))
        return key

    def wait(self, handle):
        self.log.append(("wait", handle))

    def poke(self, handles):
        pass


class FakeStream:
    def __init__(self, log, name, non_blocking=False):
        self.log, self.name, self.ptr = log, name, id(self)

    def wait_event(self, event):
        self.log.append((self.name, "wait", event.name))


class FakeEvent:
    count = 0

    def __init__(self, log, disable_timing=False):
        FakeEvent.count += 1
        self.log, self.name = log, f"event{FakeEvent.count}"

    def record(self, stream):
        self.log.append((stream.name, "record", self.name))


class FakeCuda:
    """cupy.cuda's Stream, Event and get_current_stream, logging every call."""

    def __init__(self):
        self.log = []
        self.current = FakeStream(self.log, "compute")

    def Stream(self, non_blocking=False):  # noqa: N802  (CuPy's name)
        return FakeStream(self.log, "side", non_blocking)

    def Event(self, disable_timing=False):  # noqa: N802
        return FakeEvent(self.log, disable_timing)

    def get_current_stream(self):
        return self.current


_NP = {0: np.float16, 1: np.float32, 2: np.float64, 3: np.int64, 4: np.int32}


class FakeNccl:
    """cupy.cuda.nccl's names; the communicator sums with MPI over the world's ranks."""

    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT64, NCCL_INT32 = 0, 1, 2, 3, 4
    NCCL_SUM = 0

    def __init__(self, world):
        self.world, self.created = world, []

    def get_unique_id(self):
        return tuple(range(128))

    def NcclCommunicator(self, size, uid, rank):  # noqa: N802
        self.created.append((size, uid, rank))
        return _FakeCommunicator(self.world, self)


def _array(ptr, count, kind):
    dtype = np.dtype(_NP[kind])
    buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=count)


class _FakeCommunicator:
    def __init__(self, world, nccl):
        self.world, self.nccl, self.calls = world, nccl, []

    def allReduce(self, send, recv, count, kind, op, stream):  # noqa: N802
        assert send == recv and op == self.nccl.NCCL_SUM
        self.calls.append(("allReduce", count, kind, stream))
        self.world.allreduce_(_array(recv, count, kind))

    def bcast(self, buf, count, kind, root, stream):
        self.calls.append(("bcast", count, kind, root, stream))
        self.world.bcast_(_array(buf, count, kind), root)


def identity_op(on_backward):
    """A gg.Function: the identity, whose backward first calls on_backward() (which may note
    the moment, or raise to make backward fail there)."""
    import gpugrad as gg

    class Identity(gg.Function):
        def forward(self, x):
            return x

        def backward(self, upstream):
            on_backward()
            return (upstream,)

    return Identity
