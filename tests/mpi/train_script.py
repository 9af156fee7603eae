"""A user's data-parallel training script, as `mpiexec -n N python train_script.py` runs it; the
launch tests (tests/test_distributed_launch.py) also make one rank fail or wait for Ctrl-C.

    --fail-rank R --fail-step S   rank R raises at step S of the first epoch
    --forever                     train until interrupted (prints "training" once started)
"""
import argparse
import sys

import numpy as np

import gpugrad as gg
import gpugrad.distributed as dist


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fail-rank", type=int)
    p.add_argument("--fail-step", type=int, default=3)
    p.add_argument("--forever", action="store_true")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()

    dist.init()
    rank, world = dist.rank(), dist.world_size()
    gg.manual_seed(rank)
    model = dist.DataParallel(gg.nn.mlp([16, 64, 64, 4]), bucket_mb=0.01)
    opt = gg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)  # the same data on every rank; batches() shards it
    x = rng.standard_normal((512, 16)).astype(np.float32)
    y = (x[:, :4].argmax(axis=1)).astype(np.int64)
    epoch = 0
    while args.forever or epoch < args.epochs:
        for step, (xb, yb) in enumerate(gg.data.batches(x, y, 32, rng=epoch, rank=rank,
                                                        world_size=world)):
            if rank == args.fail_rank and step == args.fail_step:
                raise ValueError(f"planted failure on rank {rank} at step {step}")
            loss = gg.cross_entropy(model(gg.tensor(xb)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if args.forever and epoch == 0 and step == 0 and rank == 0:
                print("training", flush=True)
        epoch += 1
    loss = dist.all_reduce(gg.tensor([loss.item()], dtype="float64"), op="mean").item()
    if rank == 0:
        print(f"world {world}: final loss {loss:.4f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
