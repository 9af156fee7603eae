"""Python work per training step: bytecodes and Python-level calls of one Executor, eager and
floor step, counted with sys.settrace (deterministic, unlike a timing). Issue 11's account of the
Executor's batch-64 gap to the floor: the matrix products are the same NumPy calls, so what the
Executor adds is this Python (and NumPy's per-call work), run with caches the products sweep.

    python bench/step_opcodes.py [--top N]

The model is small (8-8-8-4, batch 4): the counts do not depend on sizes, and tracing is slow.
"""
import argparse
import collections
import sys

from gpugrad.bench import workloads as wl

SIZES, BATCH = (8, 8, 8, 4), 4


def count(step):
    """(bytecodes, Python calls, {(file, function): [bytecodes, calls]}) of one call of step."""
    per = collections.defaultdict(lambda: [0, 0])

    def tracer(frame, event, arg):
        key = (frame.f_code.co_filename.rsplit("/", 1)[-1], frame.f_code.co_name)
        if event == "call":
            frame.f_trace_opcodes = True
            per[key][1] += 1
        elif event == "opcode":
            per[key][0] += 1
        return tracer

    previous = sys.gettrace()  # a coverage tool's, say: put back afterwards
    sys.settrace(tracer)
    try:
        step()
    finally:
        sys.settrace(previous)
    return sum(v[0] for v in per.values()), sum(v[1] for v in per.values()), dict(per)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=12, help="functions listed per contender")
    args = ap.parse_args(argv)
    results = {}
    for impl in ("executor", "eager", "floor"):
        step = wl.train_step(impl, "cpu", SIZES, BATCH)
        for _ in range(3):  # recorded, then trusted: the counted step is a replay
            step()
        results[impl] = count(step)
    print(f"Python work per training step ({'-'.join(map(str, SIZES))}, batch {BATCH}; "
          f"the same at any size)")
    for impl, (ops, calls, per) in results.items():
        print(f"\n{impl}: {ops} bytecodes, {calls} Python calls")
        for (name, fn), (n, c) in sorted(per.items(), key=lambda kv: -kv[1][0])[:args.top]:
            print(f"  {n:6d} {c:4d}  {name}:{fn}")
    return results


if __name__ == "__main__":
    main()
