"""`gpugrad train` and the command line around it (issue 14): --version, every default in
--help, an unknown option answered with the command's usage, --threads through threadpoolctl,
what metrics.json records, the progress bar's label and the log-scale loss curve."""
import datetime
import json
import os
import subprocess
import sys

import pytest

import gpugrad as gg
from gpugrad import cli, train
from gpugrad.cli import main
from gpugrad.train import Config, run

quiet = lambda *a, **k: None  # noqa: E731


def _run(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-m", "gpugrad", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def _spiral(tmp_path, **kw):
    return Config(dataset="spiral", epochs=2, progress=False, device="cpu", out=str(tmp_path),
                  **kw)


def test_version():
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"gpugrad {gg.__version__}"


@pytest.mark.parametrize("command, required", [
    ("train", []), ("evaluate", ["runs/x"]), ("predict", ["runs/x", "--input", "x.npy"]),
    ("bench", []), ("info", [])])
def test_unknown_option_prints_the_commands_usage(command, required):
    r = _run(command, *required, "--bogus")
    assert r.returncode == 2
    assert r.stderr.startswith(f"usage: gpugrad {command} ")
    assert f"gpugrad {command}: error: unrecognized arguments: --bogus" in r.stderr


def test_help_shows_every_default():
    parser = cli._parser()
    for name, command in parser.commands.items():
        for action in command._actions:
            if action.dest == "help" or action.required:  # nothing to default
                continue
            assert action.help and "default" in action.help, (name, action.option_strings)
    r = _run("train", "--help")
    assert "(default: per dataset: digits 60, spiral 300" in " ".join(r.stdout.split())


def test_every_train_option_is_a_config_field():
    """So a new option (say --distributed) is one add_argument and one Config field."""
    fields = {f.name for f in train.dataclasses.fields(Config)}
    dests = {a.dest for a in cli._parser().commands["train"]._actions} - {"help", "no_progress"}
    assert dests <= fields


def _blas_threads():
    from threadpoolctl import threadpool_info
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.mark.parametrize("threads, expected", [(None, train.DEFAULT_THREADS), (2, 2)])
def test_threads_limit_blas_during_the_run_only(tmp_path, threads, expected):
    pytest.importorskip("threadpoolctl")
    before, seen = _blas_threads(), []
    m = run(_spiral(tmp_path, threads=threads), log=lambda *a, **k: seen.append(_blas_threads()))
    assert seen and all(s == {expected} for s in seen)  # logged while training
    assert m["threads"] == expected and m["config"]["threads"] == threads
    assert _blas_threads() == before


def test_threads_without_threadpoolctl(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    logged = []
    m = run(_spiral(tmp_path), log=lambda *a, **k: logged.append(" ".join(map(str, a))))
    assert "threads: NumPy's BLAS default (threadpoolctl is not installed: pip install " \
           "threadpoolctl)" in logged
    assert m["threads"] is None
    assert main(["train", "--dataset", "spiral", "--epochs", "1", "--threads", "2",
                 "--no-progress", "--out", str(tmp_path / "b"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == (
        "gpugrad: error: --threads needs threadpoolctl: pip install threadpoolctl")
    assert not (tmp_path / "b" / "model.npz").exists()


def test_bad_threads_is_a_usage_error():
    r = _run("train", "--threads", "0")
    assert r.returncode == 2 and "--threads: expected an integer >= 1, got '0'" in r.stderr
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        Config(threads=0).resolved()


def test_metrics_record_versions_device_and_time(tmp_path):
    run(_spiral(tmp_path), log=quiet)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["versions"]["gpugrad"] == gg.__version__
    import numpy as np
    assert m["versions"]["numpy"] == np.__version__ and "cupy" in m["versions"]
    assert m["device"] == "cpu" and m["device_name"] and "cores" in m["device_name"]
    stamp = datetime.datetime.fromisoformat(m["timestamp"])
    assert stamp.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds()) < 600
    assert m["model"] == "Standardize-2-100-3 relu"


def test_progress_bar_names_the_accuracy_it_shows(tmp_path, capsys):
    pytest.importorskip("tqdm")
    run(Config(dataset="spiral", epochs=2, progress=True, device="cpu", out=str(tmp_path)),
        log=quiet)
    err = capsys.readouterr().err
    assert "test_acc=" in err and "acc=" not in err.replace("test_acc=", "")


def test_loss_curve_is_drawn_on_a_log_scale(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    real = plt.subplots

    def subplots(*a, **k):
        fig, axes = real(*a, **k)
        made.append(axes)
        return fig, axes
    monkeypatch.setattr(plt, "subplots", subplots)
    history = [{"epoch": i, "loss": 10.0 ** -i, "train_accuracy": 0.5, "test_accuracy": 0.5}
               for i in range(1, 4)]
    assert train.plot_curves(history, str(tmp_path / "c.png"))
    loss_axis, accuracy_axis = made[0]
    assert loss_axis.get_yscale() == "log" and accuracy_axis.get_yscale() == "linear"


def test_missing_matplotlib_note_names_an_install_command_that_works(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    logged = []
    run(_spiral(tmp_path), log=lambda *a, **k: logged.append(" ".join(map(str, a))))
    [line] = [s for s in logged if "matplotlib" in s]
    assert 'pip install ".[plot]" from gpugrad\'s checkout' in line
    assert "gpugrad[" not in line  # no such package on the index
