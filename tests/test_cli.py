"""The command line: exit codes, one-line errors (no tracebacks), info and python -m gpugrad."""
import os
import subprocess
import sys

import pytest

from gpugrad.cli import main


def _run(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-m", "gpugrad", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_info_reports_versions_devices_and_kernels():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    assert "gpugrad 0.1.0" in r.stdout and "numpy" in r.stdout
    assert "cpu        yes" in r.stdout
    assert "cuda" in r.stdout and "kernels:" in r.stdout
    assert "sigmoid.cu" in r.stdout and "softmax_cross_entropy.cu" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--dataset", "mnist", "--no-progress"], "--data"),
    (["train", "--dataset", "mnist", "--data", "/nonexistent/dir", "--no-progress"],
     "/nonexistent/dir"),
    (["train", "--epochs", "0", "--no-progress"], "epochs must be >= 1"),
    (["train", "--device", "cuda", "--no-progress", "--epochs", "1"], "cuda"),
])
def test_expected_failures_print_one_line(args, message, capsys):
    if "cuda" in args:
        import gpugrad as gg
        if gg.cuda.is_available():
            pytest.skip("this machine has a usable GPU")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gpugrad: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_bad_arguments_exit_2_with_usage():
    r = _run("train", "--hidden", "abc")
    assert r.returncode == 2 and "expected comma-separated ints" in r.stderr
    r = _run("train", "--dataset", "cifar")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_no_command_prints_help():
    r = _run()
    assert r.returncode == 2 and "train" in r.stdout and "info" in r.stdout


def test_python_m_gpugrad_trains(tmp_path):
    r = _run("train", "--dataset", "spiral", "--epochs", "3", "--out", str(tmp_path),
             "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("test accuracy: 0.")
    assert "train:" in r.stderr  # the tqdm progress bar
    assert (tmp_path / "metrics.json").exists()
