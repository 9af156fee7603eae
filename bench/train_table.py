"""The device report's training-step table and issue 5's targets, from bench_train.py's rows.

Ratios here are time ratios (this row's median over the other's, same device: below 1 is faster),
as `gpugrad bench` prints them; GPU speedup is the same contender's CPU median over its GPU median
(the graph row against the CPU executor). The CPU targets are checked on pytest-benchmark's
medians, which time contenders one after another rather than interleaved: on a noisy machine
`gpugrad bench` (interleaved) is the better judge of them.
"""
IMPLS = ("executor", "graph", "eager", "floor", "torch")
LABELS = {"executor": "gpugrad executor", "graph": "gpugrad executor+graph",
          "eager": "gpugrad eager", "floor": "hand-written floor", "torch": "PyTorch"}
CPU_TWIN = {"graph": "executor"}


RESIDUAL = "residual-"  # a model name's prefix: the MLP of residual blocks (bench_train.py)


def _model_key(model):
    residual = model.startswith(RESIDUAL)
    return residual, tuple(int(s) for s in model.removeprefix(RESIDUAL).split("-"))


def _plain(r):
    return not r["model"].startswith(RESIDUAL)


def rows(bench_rows):
    """One entry per (model, batch, impl, device) with its median and ratios."""
    train = [r for r in bench_rows if r["op"] == "train_step" and r.get("model")]
    by = {(r["model"], r["batch"], r["impl"], r["device"]): r["median_s"] for r in train}
    out = []
    for r in sorted(train, key=lambda r: (_model_key(r["model"]), r["batch"],
                                          IMPLS.index(r["impl"]), r["device"])):
        key, t = (r["model"], r["batch"]), r["median_s"]
        torch, floor = by.get(key + ("torch", r["device"])), by.get(key + ("floor", r["device"]))
        cpu = by.get(key + (CPU_TWIN.get(r["impl"], r["impl"]), "cpu"))
        out.append({"model": r["model"], "batch": r["batch"], "impl": r["impl"],
                    "device": r["device"], "median_s": t,
                    "ratio_torch": t / torch if torch else None,
                    "ratio_floor": t / floor if floor else None,
                    "gpu_speedup": cpu / t if cpu and r["device"] == "cuda" else None,
                    "tflops": r["flops"] / t / 1e12 if r.get("flops") else None})
    return out


# (text, which rows, field, test): issue 5's targets, in the order the issue lists them, then
# issue 11's for the residual MLP
TARGETS = [
    ("CPU: Executor step <= 1.0x PyTorch CPU eager",
     lambda r: r["impl"] == "executor" and r["device"] == "cpu", "ratio_torch", lambda v: v <= 1.0),
    ("CPU: Executor step <= 1.1x the NumPy floor",
     lambda r: r["impl"] == "executor" and r["device"] == "cpu" and _plain(r), "ratio_floor",
     lambda v: v <= 1.1),
    ("CPU: eager step <= 1.3x PyTorch",
     lambda r: r["impl"] == "eager" and r["device"] == "cpu", "ratio_torch", lambda v: v <= 1.3),
    ("GPU: Executor step <= 1.0x PyTorch CUDA eager at batch >= 512",
     lambda r: r["impl"] == "executor" and r["device"] == "cuda" and r["batch"] >= 512,
     "ratio_torch", lambda v: v <= 1.0),
    ("GPU: with CUDA-graph capture <= 0.5x PyTorch eager at batch 64",
     lambda r: r["impl"] == "graph" and r["device"] == "cuda" and r["batch"] == 64,
     "ratio_torch", lambda v: v <= 0.5),
    ("GPU: speedup over the NumPy backend >= 20x for 784-1024-1024-10 at batch 4096",
     lambda r: r["impl"] == "executor" and r["device"] == "cuda" and
     r["model"] == "784-1024-1024-10" and r["batch"] == 4096, "gpu_speedup", lambda v: v >= 20),
    ("CPU: residual MLP Executor step <= 1.15x the NumPy floor",
     lambda r: r["impl"] == "executor" and r["device"] == "cpu" and not _plain(r),
     "ratio_floor", lambda v: v <= 1.15),
]


def targets(table):
    out = []
    for text, applies, field, ok in TARGETS:
        hits = [r for r in table if applies(r) and r.get(field) is not None]
        if not hits:
            out.append({"target": text, "met": None, "detail": "not measured"})
            continue
        out.append({"target": text, "met": all(ok(r[field]) for r in hits),
                    "detail": ", ".join(f"{r['model']} b{r['batch']}: {r[field]:.2f}"
                                        for r in hits)})
    return out


def _fmt(v, spec):
    return "" if v is None else spec.format(v)


def markdown(table, checked):
    if not table:
        return ["no training-step results (bench/bench_train.py did not run)"]
    lines = ["Median time per step (forward, loss, backward, SGD-momentum update; data on the "
             "device). /torch, /floor: time over PyTorch's and over the hand-written floor's on "
             "the same device (below 1: faster); GPU speedup: CPU time / GPU time of the same "
             "contender (the graph row: of the CPU executor); TFLOP/s: the step's matmul FLOPs "
             "over its time.\n",
             "| model | batch | impl | device | median | /torch | /floor | GPU speedup | TFLOP/s |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in table:
        t = r["median_s"]
        median = f"{t * 1e3:,.2f} ms" if t >= 1e-3 else f"{t * 1e6:,.1f} us"
        lines.append(f"| {r['model']} | {r['batch']} | {LABELS[r['impl']]} | {r['device']} | "
                     f"{median} | {_fmt(r['ratio_torch'], '{:.2f}')} | "
                     f"{_fmt(r['ratio_floor'], '{:.2f}')} | {_fmt(r['gpu_speedup'], '{:.1f}x')} | "
                     f"{_fmt(r['tflops'], '{:.3f}')} |")
    lines.append("\nIssue 5's targets (and issue 11's residual MLP):\n")
    for t in checked:
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"- **{mark}**: {t['target']} ({t['detail']})")
    return lines
