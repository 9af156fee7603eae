"""gg.distributed under a real launcher: `mpiexec -n 2` (MPICH's, from `pip install mpi4py mpich`,
the [mpi] extra). Faults end every rank quickly with one report; Ctrl-C stops them all; the CLI
trains data-parallel. Skipped where mpiexec or mpi4py is missing."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi" / "train_script.py"

pytestmark = pytest.mark.skipif(
    shutil.which("mpiexec") is None or subprocess.run(
        [sys.executable, "-c", "import mpi4py"], capture_output=True).returncode != 0,
    reason="needs mpiexec and mpi4py: pip install mpi4py mpich (or '.[mpi]')")


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    for var in ("PMI_RANK", "PMI_SIZE", "PMI_FD", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE"):
        env.pop(var, None)  # a launcher of our own, not the one running pytest (if any)
    return env


def _mpiexec(*args, timeout=60, **kwargs):
    start = time.monotonic()
    proc = subprocess.run(["mpiexec", "-n", "2", sys.executable, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_env(), **kwargs)
    return proc, time.monotonic() - start


def test_two_ranks_train_and_agree():
    proc, _ = _mpiexec(SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("world 2: final loss") == 1


@pytest.mark.parametrize("rank", [0, 1])
def test_one_rank_raising_mid_epoch_ends_every_rank_within_30_s(rank):
    proc, seconds = _mpiexec(SCRIPT, "--fail-rank", rank, "--fail-step", 3)
    assert proc.returncode != 0 and seconds < 30
    assert proc.stderr.count(f"planted failure on rank {rank} at step 3") == 1, proc.stderr
    assert proc.stderr.count("aborting all ranks") == 1


def test_ctrl_c_stops_every_rank():
    proc = subprocess.Popen(["mpiexec", "-n", "2", sys.executable, str(SCRIPT), "--forever"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "training"
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends to mpiexec
        proc.wait(timeout=30)
        assert time.monotonic() - start < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read()
    assert proc.returncode != 0
    assert err.count("gpugrad: interrupted") == 1, err


def test_gpugrad_train_distributed_on_digits(tmp_path):
    pytest.importorskip("sklearn")
    proc, seconds = _mpiexec("-m", "gpugrad", "train", "--distributed", "--device", "cpu",
                             "--no-progress", "--out", tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy:") == 1  # rank 0 alone prints
    accuracy = float(proc.stdout.strip().splitlines()[-1].split()[-1])
    assert accuracy >= 0.97, proc.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and round(metrics["test_accuracy"], 4) == accuracy
    assert proc.stderr.count("wrote ") == 1


def test_gpugrad_train_distributed_fails_once_on_every_rank(tmp_path):
    proc, seconds = _mpiexec("-m", "gpugrad", "train", "--distributed", "--device", "cpu",
                             "--dataset", "mnist", "--data", tmp_path / "missing",
                             "--out", tmp_path / "out")
    assert proc.returncode == 2 and seconds < 30
    assert proc.stderr.count("gpugrad: error: mnist data path") == 1, proc.stderr
