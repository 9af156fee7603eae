"""Plain-text tables for `gpugrad bench`: one per workload, rows = contender x device.

Columns: the median time per call; /torch and /floor, this row's time over PyTorch's and over the
hand-written floor's on the same device (below 1: faster); GPU speedup, the same contender's CPU
time over its GPU time (the graph row is compared with the CPU executor); on the GPU, the achieved
FLOP rate or bandwidth and its fraction of the card's, measured in the same run (float32 matmul
rate, device-to-device copy bandwidth).
"""
from dataclasses import dataclass, field

LABELS = {"executor": "gpugrad executor", "graph": "gpugrad executor+graph",
          "eager": "gpugrad eager", "torch": "PyTorch", "gpugrad": "gpugrad"}
CPU_TWIN = {"graph": "executor"}  # the CPU row a GPU-only contender's speedup is measured against


@dataclass
class Workload:
    title: str
    impls: tuple
    build: object               # (impl, device) -> zero-argument callable, or raises Unavailable
    rate: tuple = None          # ("flop" | "bytes", amount per call) for the GPU rate column
    reference: str = None       # "matmul" | "copy": which card ceiling the rate is a fraction of
    per: int = 1                # the time shown is per call / per (the chain: per op)
    unit: str = ""              # e.g. "/op"
    medians: dict = field(default_factory=dict)  # (impl, device) -> seconds per call


def label(impl, device):
    if impl == "floor":
        return "NumPy floor" if device == "cpu" else "CuPy floor"
    return LABELS.get(impl, impl)


def duration(seconds, unit=""):
    if seconds >= 1:
        return f"{seconds:.2f} s{unit}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms{unit}"
    return f"{seconds * 1e6:.1f} us{unit}"


def _rate(kind, per_second):
    if kind == "flop":
        return f"{per_second / 1e12:.2f} TFLOP/s"
    return f"{per_second / 1e9:,.0f} GB/s"


def render(w, refs=None):
    """The table of workload `w` as text (refs: gpu_references(), or None without a GPU)."""
    rows = [("impl", "device", "median", "/torch", "/floor", "GPU speedup", "GPU rate",
             "% of card")]
    for impl in w.impls:
        for device in ("cpu", "cuda"):
            t = w.medians.get((impl, device))
            if t is None:
                continue
            torch_t, floor_t = w.medians.get(("torch", device)), w.medians.get(("floor", device))
            cpu_t = w.medians.get((CPU_TWIN.get(impl, impl), "cpu"))
            rate = pct = speedup = ""
            if device == "cuda":
                speedup = f"{cpu_t / t:.1f}x" if cpu_t else ""
                if w.rate:
                    kind, amount = w.rate
                    rate = _rate(kind, amount / t)
                    ceiling = (refs or {}).get({"matmul": "matmul_flop_per_s",
                                                "copy": "copy_bytes_per_s"}.get(w.reference))
                    pct = f"{amount / t / ceiling:.0%}" if ceiling else ""
            rows.append((label(impl, device), device, duration(t / w.per, w.unit),
                         f"{t / torch_t:.2f}" if torch_t else "",
                         f"{t / floor_t:.2f}" if floor_t else "", speedup, rate, pct))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    keep = [i for i in range(len(widths)) if any(r[i] for r in rows[1:])]  # drop empty columns
    lines = [w.title]
    for r in rows:
        cells = [r[i].ljust(widths[i]) if i < 2 else r[i].rjust(widths[i]) for i in keep]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)
