"""What `gpugrad train --distributed` needs from gg.distributed, in one place (train.py and cli.py
call these; without --distributed they are a world of one and change nothing).

- `TrainJob`: this rank's part of a training run: the DataParallel wrapper, this rank's shard of
  each epoch's batches (--batch-size is per rank: the global batch is batch x ranks), the epoch's
  loss and the accuracies over the whole sets (each rank scores a slice, the counts are summed),
  and a log that only rank 0 writes to (it alone prints progress and writes the outputs).
- `run_or_abort(fn)`: runs the command; when it fails on any rank (a non-zero exit code after its
  one-line error) every rank is ended at once with that code. Ranks other than 0 hold their
  stderr until then and wait half a second before showing it, so an error that every rank hits
  (a bad --data path) is printed once, by rank 0, whose abort ends the others first.
"""
import contextlib
import io
import sys
import time

import numpy as np

__all__ = ["TrainJob", "run_or_abort"]


class TrainJob:
    def __init__(self, enabled, device=None):
        self.world = None
        self.rank, self.size = 0, 1
        if enabled:
            from .world import init
            self.world = init(device=device)
            self.rank, self.size = self.world.rank, self.world.size
        self.main = self.rank == 0

    def log(self, log):
        """`log` on rank 0, a function that prints nothing elsewhere."""
        return log if self.main else (lambda *args, **kwargs: None)

    def wrap(self, model):
        """The model to train: a DataParallel around it under --distributed."""
        if self.world is None:
            return model
        from .parallel import DataParallel
        return DataParallel(model)

    def batches(self, x, y, batch_size, rng):
        from .. import data
        return data.batches(x, y, batch_size, rng=rng, rank=self.rank, world_size=self.size)

    def steps_per_epoch(self, n, batch_size):
        return -(-n // (batch_size * self.size))

    def mean(self, total, count):
        """(sum of total / sum of count, sum of count) over the ranks."""
        if self.size > 1:
            both = np.array([total, count], dtype=np.float64)
            self.world.allreduce_(both)
            total, count = float(both[0]), int(both[1])
        return total / count, count

    def accuracy(self, accuracy, predict, x, y):
        """accuracy(predict, x, y) over the whole set, each rank scoring a contiguous slice."""
        if self.size == 1:
            return accuracy(predict, x, y)
        lo, hi = len(y) * self.rank // self.size, len(y) * (self.rank + 1) // self.size
        correct = round(accuracy(predict, x[lo:hi], y[lo:hi]) * (hi - lo)) if hi > lo else 0
        return self.mean(correct, hi - lo)[0]


def run_or_abort(fn):
    """fn() -> exit code, on every rank; see the module docstring. Does not initialise the
    world itself (fn's init() chooses the device): the launcher's variables give the rank."""
    from .world import abort, launched_rank, launched_size
    if launched_size() == 1:
        return fn()
    held = io.StringIO() if launched_rank() != 0 else None
    with contextlib.redirect_stderr(held) if held is not None else contextlib.nullcontext():
        code = fn()
    if held is not None:
        if code:
            time.sleep(0.5)
        sys.stderr.write(held.getvalue())
    if code:
        abort(code)
    return code
