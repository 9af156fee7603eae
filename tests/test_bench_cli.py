"""`gpugrad bench`: the quick CPU run prints one table per workload with the ratios that matter."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

import gpugrad as gg


def _run(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-m", "gpugrad", "bench", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _tables(text):
    """{title: [row lines]} from the blank-line-separated blocks that have a header row."""
    out = {}
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if len(lines) > 2 and lines[1].split()[:3] == ["impl", "device", "median"]:
            out[lines[0]] = lines[2:]
    return out


def test_quick_cpu_run_prints_a_table_per_workload():
    r = _run("--device", "cpu", "--quick", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "threads: " in r.stdout and "NumPy BLAS 1" in r.stdout
    tables = _tables(r.stdout)
    train = [t for t in tables if t.startswith("train step 784-256-256-10, batch 64")]
    assert len(train) == 1
    rows = {line.split("  ")[1].strip(): line for line in tables[train[0]]}
    expected = {"gpugrad executor", "gpugrad eager", "NumPy floor"}
    has_torch = importlib.util.find_spec("torch") is not None  # its rows appear where installed
    assert expected | ({"PyTorch"} if has_torch else set()) == set(rows)
    for label, line in rows.items():
        cells = line.split()
        assert " cpu " in line and re.fullmatch(r"[\d.]+", cells[-1]), line  # /floor ratio
        if label == "NumPy floor":
            assert cells[-1] == "1.00"
        if has_torch:
            assert re.fullmatch(r"[\d.]+", cells[-2]), line  # /torch ratio
    chain = [t for t in tables if t.startswith("eager overhead")]
    assert len(chain) == 1 and all("us/op" in line for line in tables[chain[0]])
    for op in ("matmul", "elementwise chain", "sigmoid", "softmax cross-entropy"):
        assert any(t.startswith(op) for t in tables), op
    # what a CPU run cannot time is said, not silently dropped
    assert "not run (CUDA graphs exist on the GPU only): graph on cpu" in r.stdout
    assert "host <-> device copies exist only with a GPU" in r.stdout


def test_cuda_without_a_gpu_is_a_clear_error():
    if gg.cuda.is_available():
        pytest.skip("this machine has a usable GPU")
    r = _run("--device", "cuda", "--quick")
    assert r.returncode == 2
    assert "no usable CUDA GPU" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_bad_threads_is_rejected():
    r = _run("--threads", "0", "--quick")
    assert r.returncode == 2 and "--threads must be >= 1" in r.stderr
