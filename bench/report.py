"""Turn a device check's outputs into report.json and report.md.

    python bench/report.py --out DIR --bench-json DIR/bench.json [--bench-json MORE.json ...]
                           [--junit DIR/gpu_tests.xml] [--stages DIR/stages.tsv]
                           [--preflight DIR/preflight.json] [--train-metrics DIR/train/metrics.json]
                           [--tests-rc N] [--bench-rc N] [--seconds S]

The report opens with what ran on the GPU and what did not: one line per stage of
bench/device_check.sh (its exit status and time from stages.tsv), the probe's checks, the GPU
tests' counts, the digits training run's device, accuracy and time, and how many benchmark rows
were measured on the GPU.

Reads pytest-benchmark's JSON (the `extra_info` that bench/conftest.py's `measure` records:
op, shape, dtype, impl, device, median_s, bytes, gbps, copy_gbps, frac_of_copy) and the GPU tests'
JUnit XML; adds the machine (GPU name, driver, CUDA and CuPy versions, date); compares impls of
the same op, shape and device (speedup of gpugrad over each other impl) and checks the kernel
targets of issue 3. The training-step rows (bench/bench_train.py) get their own table (train.py
beside this file) with issue 5's targets. Works on CPU-only results too (no GPU columns then).
"""
import argparse
import datetime
import json
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_table as train  # noqa: E402  (bench/train_table.py: the training-step table)

# issue 3's targets: (op, which rows, measure, threshold, description); "data" is the size of the
# op's input array (logits, x, y), the "at >= 64 MB of data" of the issue
TARGETS = [
    ("sigmoid_forward", lambda r: _data(r) >= 64e6, "frac", 0.85,
     "sigmoid forward >= 85% of D2D copy bandwidth at >= 64 MB of data"),
    ("sigmoid_backward", lambda r: _data(r) >= 64e6, "frac", 0.85,
     "sigmoid backward >= 85% of D2D copy bandwidth at >= 64 MB of data"),
    ("softmax_xent_fwd_bwd", lambda r: _data(r) >= 64e6 and _classes(r) >= 1000, "frac", 0.80,
     "softmax-CE fwd+bwd >= 80% of D2D copy bandwidth for C >= 1000 at >= 64 MB of data"),
    ("softmax_xent_fwd_bwd", lambda r: r["shape"] in _TORCH_SHAPES, "vs_torch", 1.0,
     "softmax-CE fwd+bwd faster than PyTorch F.cross_entropy fwd+bwd"),
    ("softmax_xent_fwd_bwd", lambda r: r["shape"] in _TORCH_SHAPES, "vs_cupy", 1.0,
     "softmax-CE fwd+bwd faster than the unfused CuPy baseline"),
]
_TORCH_SHAPES = ("65536x10", "8192x1000", "2048x32768")


def _data(row):
    return row.get("data_bytes") or 0



def _classes(row):
    return int(row["shape"].split("x")[-1])


def environment():
    """GPU, driver, CUDA, CuPy and PyTorch versions where present, and the date."""
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "platform": platform.platform()}
    try:
        import numpy
        env["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import gpugrad as gg
        env["gpugrad"] = gg.__version__
        env["cuda_usable"] = gg.cuda.is_available()
        if not env["cuda_usable"]:
            env["cuda_unavailable_reason"] = gg.cuda.unavailable_reason()
        from gpugrad import kernels
        env["kernels"] = kernels.status()
    except Exception as e:  # the report must still be written
        env["gpugrad_error"] = repr(e)
    try:
        import cupy
        from cupy_backends.cuda.api import runtime
        env["cupy"] = cupy.__version__
        if env.get("cuda_usable"):
            ver = lambda v: f"{v // 1000}.{v % 1000 // 10}"  # noqa: E731
            props = runtime.getDeviceProperties(runtime.getDevice())
            env["device"] = props["name"].decode() if isinstance(props["name"], bytes) \
                else str(props["name"])
            env["compute_capability"] = f"{props['major']}.{props['minor']}"
            env["memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
            env["cuda_driver_api"] = ver(runtime.driverGetVersion())
            env["cuda_runtime"] = ver(runtime.runtimeGetVersion())
    except Exception as e:
        env.setdefault("cupy_error", repr(e))
    try:
        import torch
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
    except Exception:
        pass
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if smi.returncode == 0 and smi.stdout.strip():
            env["nvidia_smi"] = smi.stdout.strip().splitlines()[0]
            env["driver"] = env["nvidia_smi"].split(",")[-1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return env


def test_summary(junit_path):
    if not junit_path or not Path(junit_path).is_file():
        return None
    root = ET.parse(junit_path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    summary = {k: sum(int(s.get(k, 0)) for s in suites)
               for k in ("tests", "failures", "errors", "skipped")}
    summary["seconds"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    summary["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
                         if c.find("failure") is not None or c.find("error") is not None]
    return summary


def benchmark_rows(bench_jsons):
    """One row per benchmark of every JSON file (a path or a list of paths), with speedups of
    gpugrad against the other impls of its group."""
    paths = [bench_jsons] if isinstance(bench_jsons, (str, Path)) else list(bench_jsons)
    runs = [json.loads(Path(p).read_text()) for p in paths]
    data = runs[0] if runs else {}
    rows = []
    for b in (b for run in runs for b in run.get("benchmarks", [])):
        info = dict(b.get("extra_info", {}))
        row = {"name": b["name"], "op": info.get("op", b["name"]), "shape": info.get("shape", ""),
               "dtype": info.get("dtype", ""), "impl": info.get("impl", ""),
               "device": info.get("device", ""),
               "median_s": info.get("median_s", b["stats"]["median"]),
               "timer": info.get("timer", "wall-clock"), "wall_median_s": b["stats"]["median"]}
        for k in ("bytes", "data_bytes", "gbps", "copy_gbps", "frac_of_copy", "flops", "model",
                  "batch", "us_per_op", "ops"):
            if info.get(k) is not None:
                row[k] = info[k]
        rows.append(row)
    groups = {}
    for r in rows:
        groups.setdefault((r["op"], r["shape"], r["dtype"], r["device"]), {})[r["impl"]] = r
    for group in groups.values():
        ours = group.get("gpugrad")
        if ours is None:
            continue
        for impl, other in group.items():
            if impl != "gpugrad":
                ours[f"vs_{impl}"] = other["median_s"] / ours["median_s"]  # > 1: gpugrad faster
    return rows, data.get("machine_info", {}), data.get("datetime")


def check_targets(rows):
    """Each target: met (True/False) over every gpugrad row it applies to, or None."""
    results = []
    for op, applies, key, threshold, text in TARGETS:
        field = "frac_of_copy" if key == "frac" else key
        hits = [r for r in rows if r["op"] == op and r["impl"] == "gpugrad"
                and r.get(field) is not None and r.get("bytes") is not None and applies(r)]
        if not hits:
            results.append({"target": text, "met": None, "detail": "not measured"})
            continue
        results.append({"target": text, "met": all(r[field] >= threshold for r in hits),
                        "detail": ", ".join(f"{r['shape']}: {_fmt_target(r[field], key)}"
                                            for r in hits)})
    return results


def _fmt_target(value, key):
    return f"{value:.0%}" if key == "frac" else f"{value:.2f}x"


def read_stages(path):
    """[{name, rc, seconds, limit}] from device_check.sh's stages.tsv."""
    if not path or not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        name, rc, seconds, limit = line.split("\t")
        rows.append({"name": name, "rc": int(rc), "seconds": int(seconds), "limit": int(limit)})
    return rows


def _read_json(path):
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


_STAGE_TEXT = {
    "preflight": "CUDA probe (NVRTC kernel, cuBLAS GEMM, cuRAND) and CUDA-graph probe",
    "gpu_tests": "GPU tests (tests/gpu)",
    "train": "gpugrad train --device cuda (digits; spiral without scikit-learn)",
    "bench_kernels": "fused-kernel benchmarks",
    "bench_cuda": "training-step, eager-overhead and copy benchmarks on cuda",
    "bench_cpu": "training-step benchmarks on the CPU (for the speedups)",
}


def ran_on_gpu(report):
    """Plain lines: each stage, whether it ran and passed, and what it measured."""
    lines, stages = [], {s["name"]: s for s in report.get("stages", [])}
    pre = report.get("preflight") or {}
    for name, text in _STAGE_TEXT.items():
        st = stages.get(name)
        if st is None:
            lines.append(f"- **did not run**: {text}")
            continue
        verdict = ("passed" if st["rc"] == 0 else
                   "TIMED OUT" if st["rc"] in (124, 137) else f"FAILED (exit {st['rc']})")
        lines.append(f"- **{verdict}** in {st['seconds']} s (limit {st['limit']} s): {text}")
    for check, ok, detail in pre.get("checks", []):
        lines.append(f"  - probe `{check}`: {'ok' if ok else 'FAILED'}: {detail}")
    if "graphs" in pre:
        lines.append(f"  - probe `graphs`: {'ok' if pre['graphs'] else 'FAILED'}"
                     f"{': ' + pre['graphs_reason'] if pre.get('graphs_reason') else ''}")
    train_run = report.get("train_run")
    if train_run:
        lines.append(f"- {train_run.get('dataset')} training: device {train_run.get('device')}, "
                     f"engine {train_run.get('engine')}, test accuracy "
                     f"{train_run.get('test_accuracy')}, {train_run.get('seconds')} s")
    rows = report.get("benchmarks", [])
    on_gpu = sum(r["device"] == "cuda" for r in rows)
    lines.append(f"- benchmark rows measured on the GPU: {on_gpu}; on the CPU: "
                 f"{sum(r['device'] == 'cpu' for r in rows)}")
    return lines


def markdown(report):
    env, lines = report["environment"], []
    lines.append(f"# gpugrad device check ({env.get('date', '')})\n")
    lines.append("## What ran on the GPU\n")
    lines.extend(ran_on_gpu(report))
    lines.append("")
    lines.append("| | |\n|---|---|")
    for key in ("device", "compute_capability", "memory_gib", "driver", "cuda_driver_api",
                "cuda_runtime", "cupy", "torch", "torch_cuda", "numpy", "python", "gpugrad",
                "cuda_unavailable_reason"):
        if key in env:
            lines.append(f"| {key} | {env[key]} |")
    if report.get("seconds") is not None:
        lines.append(f"| device check wall time | {report['seconds']} s |")
    lines.append("")
    for name, st in (env.get("kernels") or {}).items():
        said = {True: "yes", False: "FAILED", None: "not checked"}
        lines.append(f"- kernel `{name}`: compiles {said[st['compiles']]}, loads on the GPU "
                     f"{said[st['loads']]}")
    t = report.get("tests")
    lines.append("\n## GPU tests\n")
    if t is None:
        lines.append(f"no JUnit results (pytest exit status {report.get('tests_rc')})")
    else:
        passed = t["tests"] - t["failures"] - t["errors"] - t["skipped"]
        lines.append(f"{t['tests']} tests: {passed} passed, {t['failures']} failed, "
                     f"{t['errors']} errors, {t['skipped']} "
                     f"skipped in {t['seconds']} s (pytest exit status {report.get('tests_rc')})")
        lines.extend(f"- FAILED {name}" for name in t["failed"])
    lines.append("\n## Training step\n")
    lines.extend(train.markdown(report.get("train", []), report.get("train_targets", [])))
    lines.append("\n## Benchmarks\n")
    rows = [r for r in report.get("benchmarks", []) if r["op"] != "train_step"]
    if not rows:
        lines.append(f"no benchmark results (pytest exit status {report.get('bench_rc')})")
    else:
        lines.append(f"Median time per call ({rows[0]['timer']}); GB/s from the bytes each op "
                     "must move; % of copy: against a device-to-device copy of the same bytes "
                     "in the same run; speedup: the other impl's time / gpugrad's.\n")
        lines.append("| op | shape | dtype | impl | device | median | GB/s | % of copy | "
                     "vs torch | vs cupy |\n|---|---|---|---|---|---:|---:|---:|---:|---:|")
        for r in rows:
            per_op = f" ({r['us_per_op']:.2f} us/op)" if r.get("us_per_op") else ""
            lines.append(
                f"| {r['op']}{per_op} | {r['shape']} | {r['dtype']} | {r['impl']} | "
                f"{r['device']} | {r['median_s'] * 1e6:,.1f} us | {_opt(r, 'gbps', '{:,.0f}')} | "
                f"{_opt(r, 'frac_of_copy', '{:.0%}')} | {_opt(r, 'vs_torch', '{:.2f}x')} | "
                f"{_opt(r, 'vs_cupy', '{:.2f}x')} |")
    lines.append("\n## Performance targets (issue 3)\n")
    if not report.get("targets"):
        lines.append("not measured (no kernel benchmarks ran)")
    for t in report.get("targets", []):
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"- **{mark}**: {t['target']} ({t['detail']})")
    return "\n".join(lines) + "\n"


def _opt(row, key, fmt):
    return fmt.format(row[key]) if row.get(key) is not None else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bench-json", action="append", default=[],
                    help="pytest-benchmark JSON; repeat for several runs")
    ap.add_argument("--junit")
    ap.add_argument("--tests-rc", type=int)
    ap.add_argument("--bench-rc", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--stages", help="device_check.sh's stages.tsv")
    ap.add_argument("--preflight", help="the preflight stage's JSON")
    ap.add_argument("--train-metrics", help="metrics.json of the training run")
    args = ap.parse_args(argv)
    stages = {s["name"]: s["rc"] for s in read_stages(args.stages)}
    if args.tests_rc is None:
        args.tests_rc = stages.get("gpu_tests")
    if args.bench_rc is None:
        bench = [rc for name, rc in stages.items() if name.startswith("bench") and rc]
        ran = any(name.startswith("bench") for name in stages)
        args.bench_rc = bench[0] if bench else (0 if ran else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(), "tests": test_summary(args.junit),
              "tests_rc": args.tests_rc, "bench_rc": args.bench_rc, "seconds": args.seconds,
              "benchmarks": [], "targets": [], "stages": read_stages(args.stages),
              "preflight": _read_json(args.preflight),
              "train_run": _read_json(args.train_metrics)}
    if report["train_run"]:  # the summary, not the per-epoch history
        report["train_run"] = {k: report["train_run"].get(k) for k in
                               ("dataset", "device", "engine", "test_accuracy",
                                "train_accuracy", "seconds")}
    found = [p for p in args.bench_json if Path(p).is_file()]  # a timed-out run writes none
    if found:
        rows, machine, when = benchmark_rows(found)
        table = train.rows(rows)
        report.update(benchmarks=rows, targets=check_targets(rows), train=table,
                      train_targets=train.targets(table),
                      bench_datetime=when, cpu=machine.get("cpu", {}).get("brand_raw"))
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(report))
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
