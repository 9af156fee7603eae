"""Training that diverges stops: a NaN or infinite loss (or parameters) ends `gpugrad train` with a
one-line error naming the epoch and step and a non-zero exit, and writes nothing; out-of-memory is
a one-line error too."""
import json
import math

import numpy as np
import pytest

from gpugrad import train
from gpugrad.cli import main
from gpugrad.train import Config, DivergenceError, run

quiet = lambda *a, **k: None  # noqa: E731


def train_cli(tmp_path, *args):
    return main(["train", "--dataset", "spiral", "--epochs", "3", "--no-progress", "--device",
                 "cpu", "--out", str(tmp_path), *args])


def one_error_line(capsys):
    """The error line, last on stderr, after at most run()'s one-line description of the run."""
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) <= 2 and err[-1].startswith("gpugrad: error: ")
    assert "test accuracy" not in captured.out
    return err[-1]


@pytest.mark.parametrize("engine", ["executor", "eager"])
def test_lr_inf_stops_with_one_line_naming_epoch_and_step(tmp_path, capsys, engine):
    (tmp_path / "metrics.json").write_text('{"test_accuracy": 0.97}')  # an earlier run's
    code = train_cli(tmp_path, "--lr", "inf", "--engine", engine)
    line = one_error_line(capsys)
    assert code == 1
    assert "training diverged" in line and "epoch 1, step 2 of 10" in line and "nan" in line
    assert "--lr inf" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # nothing written
    assert (tmp_path / "metrics.json").read_text() == '{"test_accuracy": 0.97}'


def fake_step(losses, poison=None):
    """A stand-in for the training step returning `losses` in turn; at call `poison` it also
    writes inf into the first parameter (an update that blew up while its loss was fine)."""
    calls = []

    def make(model, opt, *rest):
        def step(xb, yb):
            calls.append(1)
            if len(calls) == poison:
                next(model.parameters()).data[...] = np.inf
            return losses[len(calls) - 1] if len(calls) <= len(losses) else 0.5
        return step
    return make


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_later_on_names_that_epoch_and_step(tmp_path, monkeypatch, value):
    # spiral: 300 samples in batches of 30 = 10 steps per epoch; call 13 is epoch 2, step 3
    monkeypatch.setattr(train, "_executor_step", fake_step([0.5] * 12 + [value]))
    with pytest.raises(DivergenceError) as e:
        run(Config(dataset="spiral", epochs=3, progress=False, out=str(tmp_path)), log=quiet)
    assert (e.value.epoch, e.value.step) == (2, 3)
    assert f"the loss is {value} at epoch 2, step 3 of 10" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_parameters_that_blow_up_at_an_epochs_last_step_are_caught(tmp_path, monkeypatch):
    """The loss of epoch 1's last step was finite, but its update left inf in the weights:
    accuracy from those would be a wrong number, not an error."""
    monkeypatch.setattr(train, "_executor_step", fake_step([0.5] * 10, poison=10))
    with pytest.raises(DivergenceError) as e:
        run(Config(dataset="spiral", epochs=3, progress=False, out=str(tmp_path)), log=quiet)
    assert (e.value.epoch, e.value.step) == (1, 10)
    assert "parameters" in str(e.value) and "epoch 1, step 10 of 10" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_metrics_are_never_written_with_nan(tmp_path, monkeypatch):
    """Whatever slips past the checks, metrics.json stays strict JSON: the write fails first."""
    def nan_accuracy(predict, x, y, batch_size=4096):
        return math.nan
    monkeypatch.setattr(train, "accuracy", nan_accuracy)
    with pytest.raises(ValueError, match="metrics.json"):
        run(Config(dataset="spiral", epochs=1, progress=False, out=str(tmp_path)), log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_a_finite_run_writes_strict_json(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "plot_curves", lambda *a, **k: False)  # not what is tested here
    run(Config(dataset="spiral", epochs=2, progress=False, out=str(tmp_path)), log=quiet)
    json.loads((tmp_path / "metrics.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))


# ---- out of memory --------------------------------------------------------------------------

@pytest.mark.parametrize("error, shown", [
    (MemoryError("Unable to allocate 7.28 TiB for an array with shape (10000000000000,)\n"
                 "and data type float64"),
     "out of memory: Unable to allocate 7.28 TiB for an array with shape (10000000000000,) "
     "and data type float64"),
    (MemoryError(), "out of memory"),
])
def test_cli_turns_memory_error_into_one_line(tmp_path, capsys, monkeypatch, error, shown):
    def run_out_of_memory(cfg, log=print):
        raise error
    monkeypatch.setattr(train, "run", run_out_of_memory)
    assert train_cli(tmp_path) == 1
    assert one_error_line(capsys).startswith(f"gpugrad: error: {shown}")


# ---- batch sizes ----------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size, message", [
    (0, "batch size must be >= 1, got 0"), (-3, "batch size must be >= 1, got -3"),
    (2.5, "batch size must be an integer >= 1, got 2.5"),
    ("8", "batch size must be an integer >= 1, got '8'"),
    (True, "batch size must be an integer >= 1, got True")])
def test_config_batch_size_must_be_a_positive_integer(batch_size, message):
    with pytest.raises(ValueError, match=message):
        Config(batch_size=batch_size).resolved()
