"""gg.distributed: data-parallel training across processes (MPI) and GPUs (NCCL).

    mpiexec -n 4 python train.py          # or srun / mpirun of the site's MPI; plain python: 1 rank

    import gpugrad as gg
    gg.distributed.init()                 # the world from MPI; on CUDA one GPU per local rank
    model = gg.distributed.DataParallel(gg.nn.mlp([784, 1024, 10]))   # rank 0's weights everywhere
    for xb, yb in gg.data.batches(x, y, 64, rng=seed, rank=gg.distributed.rank(),
                                  world_size=gg.distributed.world_size()):
        loss = gg.cross_entropy(model(gg.tensor(xb)), yb)
        opt.zero_grad(); loss.backward(); opt.step()   # backward averages the gradients

Without an MPI launcher (or without mpi4py) the world is one rank and every call here is cheap:
all_reduce and broadcast return their tensor, barrier returns, DataParallel reduces nothing.
See docs/distributed.md for launching, faults and scaling.
"""
import numpy as np

from ..tensor import _bump
from .parallel import DataParallel
from .world import abort, get_world, init

__all__ = ["init", "rank", "world_size", "local_rank", "is_initialized", "all_reduce",
           "broadcast", "barrier", "abort", "DataParallel"]


def rank():
    """This process's rank, 0 .. world_size() - 1."""
    return get_world().rank


def world_size():
    return get_world().size


def local_rank():
    """This process's rank among the ranks on its node (its GPU on CUDA)."""
    return get_world().local_rank


def is_initialized():
    from . import world
    return world._world is not None


def all_reduce(t, op="sum"):
    """Replace t's values, in place, by their sum ("sum") or mean ("mean") over the ranks;
    returns t. Device tensors go through NCCL when init() made a communicator."""
    if op not in ("sum", "mean"):
        raise ValueError(f"all_reduce: op must be 'sum' or 'mean', got {op!r}")
    if op == "mean" and t.dtype.kind != "f":
        raise TypeError(f"all_reduce: op='mean' needs a floating-point tensor, got {t.dtype}")
    w = get_world()
    if w.size == 1 and w.nccl is None:
        return t
    _inplace(t, w, lambda a: w.allreduce_(a), lambda a: w.nccl.allreduce_(a))
    if op == "mean":
        t.data *= 1.0 / w.size
    _bump(t)
    return t


def broadcast(t, root=0):
    """Replace t's values, in place, by those of rank `root`; returns t."""
    w = get_world()
    if not (isinstance(root, int) and 0 <= root < w.size):
        raise ValueError(f"broadcast: root must be a rank in 0..{w.size - 1}, got {root!r}")
    if w.size == 1 and w.nccl is None:
        return t
    _inplace(t, w, lambda a: w.bcast_(a, root), lambda a: w.nccl.bcast_(a, root))
    _bump(t)
    return t


def barrier():
    """Return once every rank has called barrier()."""
    get_world().barrier()


def _inplace(t, w, host_op, device_op):
    """Run a collective on t's array: NCCL on a contiguous device array, else MPI on a
    contiguous host copy written back."""
    data = t.data
    if t._bk.name != "cpu":
        if w.nccl is not None and data.flags.c_contiguous:
            device_op(data)
            return
        host = np.ascontiguousarray(t._bk.to_numpy(data))  # a fresh host copy
    elif data.flags.c_contiguous and data.flags.writeable:
        host = data
    else:
        host = np.array(data, order="C")
    host_op(host)
    if host is not data:
        data[...] = t._bk.asarray(host) if t._bk.name != "cpu" else host
