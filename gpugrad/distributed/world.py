"""The world of ranks: MPI when launched by mpiexec/mpirun/srun, else a world of one (no MPI).

MPI (mpi4py) starts and coordinates the ranks and reduces host arrays; on CUDA each rank takes the
GPU of its local rank and an NCCL communicator reduces device arrays (nccl.py). Nothing here is a
home-made runtime: a rank is an MPI process.

Faults: with more than one rank, an uncaught exception on any rank prints its traceback (once, on
that rank) and calls MPI_Abort, which ends every rank with a non-zero status at once; Ctrl-C
(mpiexec forwards SIGINT to every rank) does the same with status 130. Every wait of gpugrad's is a
polling loop in Python (so signals are seen) with a watchdog: a rank kept waiting longer than
`timeout` seconds (GPUGRAD_DIST_TIMEOUT, default 300) raises, and so aborts the world.
"""
import os
import sys
import time
import traceback

__all__ = ["World", "init", "get_world", "abort", "launched_size", "launched_rank"]

# Variables by which launchers tell a process its world size: MPICH/Hydra and Intel MPI (PMI),
# PMIx (Open MPI 5, Slurm with --mpi=pmix), Open MPI, MVAPICH, Slurm's srun.
_SIZE_VARS = ("PMI_SIZE", "PMIX_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
              "SLURM_STEP_NUM_TASKS")
_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK",
              "SLURM_PROCID")
MPI_HINT = "pip install mpi4py mpich, or pip install \".[mpi]\" from gpugrad's checkout"
DEFAULT_TIMEOUT = 300.0


def launched_size():
    """The world size a launcher announced in the environment (1 when none did)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def launched_rank():
    """This process's rank as the launcher announced it (0 when none did)."""
    for var in _RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _launched():
    return any(v in os.environ for v in _SIZE_VARS + _RANK_VARS)


class World:
    """This process's place among the ranks: rank, size, local rank on its node, and the
    communicators. `mpi` is the mpi4py.MPI module (None in a world of one without MPI)."""

    def __init__(self, mpi=None, timeout=DEFAULT_TIMEOUT):
        self.mpi, self.timeout = mpi, float(timeout)
        self.nccl = None       # an nccl.NcclComm once init() made one
        self.device = "cpu"
        if mpi is None:
            self.comm = None
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
            return
        world = mpi.COMM_WORLD
        self.comm = world.Dup()  # gpugrad's own traffic never matches a user's collectives
        self.rank, self.size = world.Get_rank(), world.Get_size()
        node = world.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    def __repr__(self):
        via = "MPI" if self.mpi is not None else "no MPI"
        return (f"<gpugrad world: rank {self.rank} of {self.size} ({via}), local rank "
                f"{self.local_rank} of {self.local_size}, {self.device}"
                f"{', NCCL' if self.nccl is not None else ''}>")

    # -- collectives on host arrays (numpy), each an MPI non-blocking call and a polled wait ----
    def dup(self):
        """A communicator of its own (collective: every rank calls it in the same order)."""
        return self.comm.Dup() if self.comm is not None else None

    def allreduce_(self, array, comm=None):
        """Sum the host array over the ranks, in place."""
        if self.comm is not None:
            self.wait([(comm or self.comm).Iallreduce(self.mpi.IN_PLACE, array, self.mpi.SUM)],
                      "all_reduce")
        return array

    def bcast_(self, array, root=0, comm=None):
        """Overwrite the host array with root's, in place."""
        if self.comm is not None:
            self.wait([(comm or self.comm).Ibcast(array, root=root)], "broadcast")
        return array

    def barrier(self):
        if self.comm is not None:
            self.wait([self.comm.Ibarrier()], "barrier")

    def allgather_object(self, obj):
        """Every rank's (picklable) obj, in rank order: small setup messages only."""
        if self.comm is None:
            return [obj]
        self.barrier()  # a polled wait first, so a missing rank trips the watchdog, not a hang
        return self.comm.allgather(obj)

    def bcast_object(self, obj, root=0):
        if self.comm is None:
            return obj
        self.barrier()
        return self.comm.bcast(obj, root=root)

    def wait(self, requests, what):
        """Wait for MPI requests, polling from Python: Ctrl-C is seen, and past `timeout`
        seconds a RuntimeError names the wait (which, uncaught, aborts every rank)."""
        test = self.mpi.Request.Testall
        if test(requests):
            return
        start = time.monotonic()
        spins = 0
        while not test(requests):
            spins += 1
            if spins < 256:  # a short wait: spin, as MPI_Wait does
                continue
            waited = time.monotonic() - start
            if waited > self.timeout:
                raise RuntimeError(
                    f"gpugrad.distributed: rank {self.rank} waited {waited:.0f} s for {what}; "
                    f"another rank is not taking part (it failed, exited, or runs different "
                    f"code). The timeout is init(timeout=) or GPUGRAD_DIST_TIMEOUT")
            if waited > 0.01:  # a long wait: give the core back between tests
                time.sleep(0.0002)

    def test(self, requests):
        """Drive MPI's progress without blocking (MPICH progresses only inside MPI calls)."""
        return self.mpi.Request.Testall(requests) if requests else True


_world = None


def get_world():
    """The world, initialising it (init() with defaults) on first use."""
    return _world if _world is not None else init()


def init(device=None, nccl=None, timeout=None):
    """Join the world: MPI's when launched by an MPI launcher, else a world of one (no MPI).

    device: None keeps gpugrad's default device; "cuda"/"auto" first pins this rank to the GPU
    of its local rank (local_rank % GPUs on the node) and then makes it the default, so call
    init() before creating models. nccl: None uses NCCL for device arrays when the world has more
    than one rank on CUDA; True insists (also in a world of one: a test of the NCCL path);
    False never uses it (device arrays are reduced through host memory by MPI).
    timeout: seconds a rank may wait in any collective before it raises (and aborts the world).
    Idempotent: a second call returns the same world."""
    global _world
    if _world is not None:
        return _world
    if timeout is None:
        timeout = float(os.environ.get("GPUGRAD_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    mpi = _import_mpi() if _launched() else None
    world = World(mpi, timeout)
    if world.size > 1:
        _install_fault_handlers(world)
    from .. import backend
    if device in ("cuda", "auto") or (device is None and backend.get_device() == "cuda"):
        from . import nccl as _nccl
        if _nccl.select_gpu(world, required=device == "cuda"):
            backend.set_device("cuda")
            if nccl or (nccl is None and world.size > 1):
                world.nccl = _nccl.create(world, required=bool(nccl))
        elif device == "auto":
            backend.set_device("cpu")
    elif device is not None:
        backend.set_device(device)
    world.device = backend.get_device()
    _world = world
    return world


def _import_mpi():
    size = launched_size()
    try:
        from mpi4py import MPI
    except ImportError as e:
        if size > 1:
            raise ImportError(f"gpugrad.distributed: launched as one of {size} ranks, but mpi4py "
                              f"does not import ({e}); {MPI_HINT}") from e
        return None
    return MPI


# -- faults ---------------------------------------------------------------------------------

_previous_hook = None


def _install_fault_handlers(world):
    global _previous_hook
    if _previous_hook is None:
        _previous_hook = sys.excepthook
        sys.excepthook = _abort_on_exception


def _abort_on_exception(kind, value, tb):
    """sys.excepthook with more than one rank: report once, then end every rank."""
    world = _world
    rank = world.rank if world is not None else 0
    if rank != 0:
        # when every rank fails the same way (Ctrl-C reaches them all), rank 0 reports and its
        # abort ends this one first: the message is printed once
        time.sleep(0.5)
    if issubclass(kind, KeyboardInterrupt):
        print("gpugrad: interrupted", file=sys.stderr)
        abort(130)
    # one write: the launcher forwards each rank's output as it comes, and may drop the tail
    sys.stderr.write(f"gpugrad.distributed: rank {rank} failed; aborting all ranks\n"
                     + "".join(traceback.format_exception(kind, value, tb)))
    abort(1)


def abort(code=1):
    """End every rank now with status `code` (MPI_Abort); in a world of one, exit the process.
    Call it where a rank gives up without an exception (e.g. before sys.exit(code)): otherwise
    the other ranks would wait for it in their next collective, until the watchdog fires."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001  a closed stream must not stop the abort
            pass
    world = _world
    if world is None and launched_size() > 1:  # failed before init(): MPI still ends the rest
        try:
            world = init()
        except Exception:  # noqa: BLE001  no MPI to abort with: exit, the launcher cleans up
            world = None
    if world is not None and world.mpi is not None and world.size > 1:
        time.sleep(0.2)  # let the launcher forward what this rank printed before it kills it
        world.mpi.COMM_WORLD.Abort(code)
    os._exit(code)
