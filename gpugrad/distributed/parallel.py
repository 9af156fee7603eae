"""DataParallel: the same model on every rank, each rank's batch its own, gradients averaged.

At construction rank 0's parameters (and tensor attributes, the buffers) are broadcast, after a
check that every rank has the same parameter names, shapes and dtypes. The parameters are then
split into buckets, in reverse definition order (roughly the order backward finishes them), each
at most `bucket_mb` MiB of one dtype; as in PyTorch's DDP the first bucket is capped at 1 MiB so
that communication starts early. During backward (gpugrad/hooks.py) each gradient is copied into
its bucket the moment it is final; when a bucket is full its sum over the ranks starts, non-
blocking (MPI Iallreduce on host memory, NCCL on a side stream on the GPU), while backward goes on
with the layers below. Buckets start strictly in index order on every rank, whatever order the
gradients come in, so the ranks' collectives always match. Backward ends by waiting for every
bucket and handing the averages to the engine, which commits them to `.grad`: the optimizer's
step, which runs after backward, only ever sees averaged gradients (as PyTorch's DDP).

A parameter that got no gradient on this rank contributes zeros; one that got none on any rank
keeps `.grad` as it was (each bucket carries one count per parameter of the ranks that had it).
"""
import numpy as np

from .. import hooks
from ..errors import ShapeError
from ..tensor import Tensor, _bump
from .world import get_world

__all__ = ["DataParallel"]

FIRST_BUCKET_BYTES = 1 << 20


class HostComm:
    """Sums host (NumPy) bucket buffers with MPI Iallreduce on a communicator of its own."""

    host = True

    def __init__(self, world):
        self.world, self.comm, self.mpi = world, world.dup(), world.mpi

    def start(self, buf, key):
        return self.comm.Iallreduce(self.mpi.IN_PLACE, buf, self.mpi.SUM)

    def wait(self, handle):
        self.world.wait([handle], "the gradient all-reduce")

    def poke(self, handles):
        self.world.test(handles)


class _Bucket:
    """Parameters of one dtype reduced together: one flat buffer holding their gradients, then
    one count per parameter of the ranks that had its gradient."""

    def __init__(self, index, slots, xp, dtype):
        self.index, self.slots = index, slots  # slots: [(param index, offset, size, shape)]
        n = sum(s[2] for s in slots)
        self.count_at = n
        self.buf = xp.zeros(n + len(slots), dtype)
        self.pending = len(slots)
        self.handle = None
        self.started = False

    def view(self, k):
        _, offset, size, shape = self.slots[k]
        return self.buf[offset:offset + size].reshape(shape)


class DataParallel:
    """Wrap `model` for data-parallel training: call it as the model; backward averages the
    gradients of its parameters over the ranks. See the module docstring.

    bucket_mb: the largest bucket, in MiB (the first one is at most 1 MiB).
    comm: what reduces bucket buffers (default: NCCL on CUDA when init() made a communicator,
    else MPI through host memory; none in a world of one). An object with `host` (bucket buffers
    in host memory), `start(buf, key) -> handle` (sum in place, non-blocking), `wait(handle)`
    and `poke(handles)` (drive progress without blocking).

    For a driver that computes gradients itself (the Executor): `reduce_gradients(arrays)`, or
    `begin()`, `ready(param, array)` per gradient as it is final, then `finish(arrays)`.
    """

    def __init__(self, model, bucket_mb=25, comm=None, world=None):
        if not (isinstance(bucket_mb, (int, float)) and bucket_mb > 0):
            raise ValueError(f"DataParallel: bucket_mb must be a positive number, got "
                             f"{bucket_mb!r}")
        self.module, self.world = model, world or get_world()
        named = list(model.named_parameters())
        if not named:
            raise ValueError("DataParallel: the model has no parameters")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.bk = self.params[0]._bk
        state = named + _buffers(model)
        _check_same_parameters(self.world, state)
        _broadcast_state(self.world, state)
        nccl = self.world.nccl if self.bk.name == "cuda" else None
        if comm is None and (self.world.size > 1 or nccl is not None):  # init(nccl=True): also
            comm = nccl or HostComm(self.world)                           # in a world of one
        self.comm = comm
        self.scale = 1.0 / self.world.size
        self.buckets, self._slot = [], {}
        self._handle = None
        self.broken = None  # why gradients can no longer be reduced in step with the other ranks
        if comm is not None:
            self.buckets = _plan(self.params, bucket_mb, np if comm.host else self.bk.xp)
            for b in self.buckets:
                for k, (i, *_rest) in enumerate(b.slots):
                    self._slot[id(self.params[i])] = (b, k)
            self._watcher = _Watcher(self)
            self._handle = hooks.watch(self.params, self._watcher)
        self._reset()

    # -- the model's face ----------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __getattr__(self, name):  # parameters(), state_dict(), train(), ... of the model
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    def close(self):
        """Stop reducing this model's gradients in backward."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # -- one reduction: begin, ready per gradient, finish ------------------------------------
    def _reset(self):
        for b in self.buckets:
            b.pending, b.handle, b.started = len(b.slots), None, False
        self._have = set()  # param indices with a gradient this round
        self._next = 0      # the next bucket to start (buckets start in index order)
        self._active = False

    def begin(self):
        """Start a round of reduction (ready() and finish() call it when needed)."""
        if self.broken:
            raise RuntimeError(f"DataParallel: {self.broken}")
        self._reset()
        self._active = True

    def ready(self, param, grad):
        """`grad` (an array, not written) is param's final gradient of this round: copy it into
        its bucket, and start every bucket that is now complete, in order."""
        if not self._active:
            self.begin()
        if self.comm is None:
            return
        b, k = self._slot[id(param)]
        i = b.slots[k][0]
        if i in self._have:
            raise RuntimeError(f"DataParallel: two gradients for parameter {self.names[i]!r} "
                               f"in one reduction")
        self._have.add(i)
        dst = b.view(k)
        dst[...] = self.bk.to_numpy(grad) if self.comm.host else grad
        b.buf[b.count_at + k] = 1
        b.pending -= 1
        self._start_ready()
        self.comm.poke([x.handle for x in self.buckets[:self._next]])

    def _start_ready(self):
        while self._next < len(self.buckets) and self.buckets[self._next].pending == 0:
            b = self.buckets[self._next]
            b.handle, b.started = self.comm.start(b.buf, b.index), True
            self._next += 1

    def finish(self, arrays=None):
        """Wait for every bucket and average. Returns one entry per parameter: its averaged
        gradient, a new array on the parameter's device, or None when no rank had it. With
        `arrays` (one per parameter, None allowed) the averages are written into those arrays
        instead, and returned: nothing is allocated (a CUDA graph can capture that round)."""
        if not self._active:
            self.begin()
        if self.comm is None:
            self._active = False
            return list(arrays) if arrays is not None else [None] * len(self.params)
        for b in self.buckets:  # parameters without a gradient here contribute zeros
            for k, (i, *_rest) in enumerate(b.slots):
                if i not in self._have:
                    b.view(k)[...] = 0
                    b.buf[b.count_at + k] = 0
            b.pending = 0
        self._start_ready()
        out = [None] * len(self.params) if arrays is None else list(arrays)
        xp, host_to_device = np if self.comm.host else self.bk.xp, \
            self.comm.host and self.bk.name != "cpu"
        for b in self.buckets:
            self.comm.wait(b.handle)
            missing = [k for k, s in enumerate(b.slots) if s[0] not in self._have]
            counts = self.bk.to_numpy(b.buf[b.count_at:]) if missing else None  # rare: a sync
            for k, (i, *_rest) in enumerate(b.slots):
                if i not in self._have and counts[k] == 0:
                    continue  # no rank had it
                # the average, scaled and copied out of the bucket in one pass
                if host_to_device:
                    g = self.bk.asarray(xp.multiply(b.view(k), self.scale))
                    if arrays is None:
                        out[i] = g
                    elif out[i] is not None:
                        out[i][...] = g
                elif arrays is None:
                    out[i] = xp.multiply(b.view(k), self.scale)
                elif out[i] is not None:
                    xp.multiply(b.view(k), self.scale, out=out[i])
        self._active = False
        return out

    def reduce_gradients(self, arrays=None):
        """Average gradients over the ranks now (blocking), for code that computes them outside
        backward (the Executor calls this after its backward, before its optimizer update).

        arrays: the gradient arrays in `self.params` order (None for a parameter without one),
        overwritten in place with the averages and returned. Without `arrays`, each parameter's
        `.grad` is replaced by a new Tensor holding the average (never written in place)."""
        if arrays is not None and len(arrays) != len(self.params):
            raise ValueError(f"DataParallel.reduce_gradients: {len(arrays)} arrays for "
                             f"{len(self.params)} parameters")
        grads = arrays if arrays is not None else \
            [None if p.grad is None else p.grad.data for p in self.params]
        self.begin()
        for p, g in zip(self.params, grads):
            if g is not None:
                self.ready(p, g)
        out = self.finish(arrays)
        if arrays is not None:
            return arrays
        for p, g in zip(self.params, out):
            if g is not None:
                p.grad = Tensor._make(g, p._bk)  # a new array: never shared
        return out

    def _abort_round(self):
        """Backward failed part way: if a bucket was already sent, this rank is out of step."""
        if any(b.started for b in self.buckets):
            self.broken = ("a backward failed after its first gradient bucket was sent, so this "
                           "rank's reductions no longer match the other ranks'")
        self._active = False


class _Watcher:
    """What gpugrad/hooks.py calls during backward, for one DataParallel."""

    def __init__(self, dp):
        self.dp = dp

    def ready(self, leaf, grad):
        self.dp.ready(leaf, grad)

    def finish(self, leaves):
        """Hand the averages to the engine, which commits them to .grad."""
        for p, g in zip(self.dp.params, self.dp.finish()):
            if g is None:
                continue
            entry = leaves.get(id(p))
            if entry is None:
                leaves[id(p)] = [p, g]
            else:
                entry[1] = g

    def abort(self):
        self.dp._abort_round()


def _plan(params, bucket_mb, xp):
    """Buckets over the parameters in reverse order: one dtype each, the first at most 1 MiB,
    the others at most bucket_mb MiB (a larger parameter gets a bucket of its own)."""
    cap = int(bucket_mb * (1 << 20))
    groups, current, size, dtype = [], [], 0, None
    for i in reversed(range(len(params))):
        p = params[i]
        nbytes = p.data.size * p.data.itemsize
        limit = min(cap, FIRST_BUCKET_BYTES) if not groups else cap
        if current and (p.dtype != dtype or size + nbytes > limit):
            groups.append((current, dtype))
            current, size = [], 0
        current.append(i)
        size += nbytes
        dtype = p.dtype
    groups.append((current, dtype))
    buckets = []
    for index, (members, dt) in enumerate(groups):
        slots, offset = [], 0
        for i in members:
            n = params[i].data.size
            slots.append((i, offset, n, params[i].shape))
            offset += n
        buckets.append(_Bucket(index, slots, xp, dt))
    return buckets


def _buffers(model):
    """(name, Tensor) of the model's buffers (Module.register_buffer: running statistics, the
    standardisation of the inputs); for a module without that registry, its tensor attributes."""
    named_buffers = getattr(model, "named_buffers", None)
    if named_buffers is not None:
        return list(named_buffers())
    return [(f"<module {i}>.{name}", value) for i, m in enumerate(model.modules())
            for name, value in sorted(vars(m).items()) if isinstance(value, Tensor)]


def _check_same_parameters(world, named):
    """Every rank must hold the same parameter (and buffer) names, shapes and dtypes: a ShapeError
    naming the first mismatch (raised on every rank alike) otherwise."""
    if world.size == 1:
        return
    mine = [(n, tuple(p.shape), str(p.dtype)) for n, p in named]
    every = world.allgather_object(mine)
    ref = every[0]
    for r, theirs in enumerate(every[1:], 1):
        for k in range(max(len(ref), len(theirs))):
            a = ref[k] if k < len(ref) else None
            b = theirs[k] if k < len(theirs) else None
            if a != b:
                def say(x, who):
                    return (f"rank {who} has no parameter #{k}" if x is None else
                            f"rank {who}'s parameter #{k} is {x[0]!r} of shape {x[1]}, {x[2]}")
                raise ShapeError(f"DataParallel: the ranks' models differ: {say(a, 0)}, but "
                                 f"{say(b, r)}")


def _broadcast_state(world, named):
    """Overwrite every rank's values with rank 0's (through host memory: construction only)."""
    if world.size == 1:
        return
    for _, t in named:
        host = np.ascontiguousarray(t._bk.to_numpy(t.data))
        world.bcast_(host, root=0)
        if world.rank != 0:
            t.data[...] = t._bk.asarray(host) if t._bk.name != "cpu" else host
            _bump(t)

