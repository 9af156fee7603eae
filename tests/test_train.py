"""`gpugrad train` end to end: the quality targets that are fast enough for every CI run."""
import json
import os

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import data, nn, optim
from gpugrad.cli import main
from gpugrad.train import Config, run

pytest.importorskip("sklearn")
quiet = lambda *a, **k: None  # noqa: E731


def test_default_command_reaches_97_percent_on_digits(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("test accuracy: ")
    accuracy = float(lines[-1].split(": ")[1])
    assert accuracy >= 0.97
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=5e-5)
    assert {"test_accuracy", "train_accuracy", "history", "device", "seconds"} <= set(metrics)
    assert metrics["device"] == "cpu" and len(metrics["history"]) == 60
    assert metrics["config"]["weight_decay"] == 5e-4  # the dataset's default, not the CLI's
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "report.html").stat().st_size > 1000
    state = gg.load(tmp_path / "model.npz")
    assert list(state) == ["0.mean", "0.std", "1.weight", "1.bias", "3.weight", "3.bias",
                           "5.weight", "5.bias"]
    model = nn.load_model(tmp_path / "model.npz")  # the standardisation is inside the model
    assert [type(m).__name__ for m in model] == ["Standardize", "Linear", "ReLU", "Linear",
                                                 "ReLU", "Linear"]
    # gpugrad evaluate recomputes the run's number, line for line
    assert main(["evaluate", str(tmp_path), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]


def test_eager_engine_and_executor_train_the_same_model(tmp_path):
    common = dict(dataset="digits", epochs=2, progress=False, seed=3)
    a = run(Config(engine="executor", out=str(tmp_path / "a"), **common), log=quiet)
    b = run(Config(engine="eager", out=str(tmp_path / "b"), **common), log=quiet)
    assert a["engine"] == "executor" and b["engine"] == "eager"
    np.testing.assert_allclose([h["loss"] for h in a["history"]],
                               [h["loss"] for h in b["history"]], rtol=1e-4)
    wa, wb = gg.load(tmp_path / "a" / "model.npz"), gg.load(tmp_path / "b" / "model.npz")
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_spiral_two_layer_relu_net_reaches_98_percent(tmp_path):
    m = run(Config(dataset="spiral", hidden=(100,), activation="relu", progress=False,
                   out=str(tmp_path)), log=quiet)
    assert m["train_accuracy"] >= 0.98


def test_spiral_linear_softmax_classifier_stays_near_49_percent():
    # the case study: full-batch gradient descent, step size 1, L2 strength 1e-3, 200 steps
    ds = data.load("spiral")
    gg.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3, init="xavier"))
    opt = optim.SGD(model.parameters(), lr=1.0)
    x = gg.tensor(ds.x_train)
    for _ in range(200):
        loss = gg.cross_entropy(model(x), ds.y_train) + \
            optim.l2_penalty([model[0].weight], 0.5e-3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (model(x).numpy().argmax(1) == ds.y_train).mean()
    assert 0.45 <= acc <= 0.56  # a line cannot separate a spiral


@pytest.mark.parametrize("engine", ["executor", "eager"])
def test_l1_penalty_trains_on_either_engine_with_the_same_result(tmp_path, engine):
    """The Executor takes the L1 term in its loss (no silent switch to eager): both engines
    record the same run, to float32 rounding."""
    m = run(Config(dataset="spiral", epochs=20, l1=1e-4, engine=engine, progress=False,
                   out=str(tmp_path / engine)), log=quiet)
    assert m["engine"] == engine and m["config"]["l1"] == 1e-4
    assert m["train_accuracy"] > 0.6
    other = "eager" if engine == "executor" else "executor"
    o = run(Config(dataset="spiral", epochs=20, l1=1e-4, engine=other, progress=False,
                   out=str(tmp_path / other)), log=quiet)
    np.testing.assert_allclose([h["loss"] for h in m["history"]],
                               [h["loss"] for h in o["history"]], rtol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="cifar"), "unknown dataset"),
    (dict(epochs=0), "epochs"),
    (dict(lr=-1.0), "learning rate"),
    (dict(activation="gelu"), "activation"),
    (dict(schedule="linear"), "schedule"),
])
def test_config_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(**kwargs).resolved()


def test_runs_without_matplotlib(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    logged = []
    run(Config(dataset="spiral", epochs=1, progress=False, out=str(tmp_path)),
        log=lambda *a, **k: logged.append(" ".join(map(str, a))))
    assert any("no plot: matplotlib is not installed" in line for line in logged)
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "model.npz", "report.html"]


def test_mnist1d_mlp_and_logistic_regression_match_the_paper(tmp_path):
    """MNIST-1D paper: MLP 68%, logistic regression 32% test accuracy; within two points."""
    pytest.importorskip("mnist1d")
    mlp = run(Config(dataset="mnist1d", progress=False, out=str(tmp_path / "mlp")), log=quiet)
    assert abs(mlp["test_accuracy"] - 0.68) <= 0.02
    linear = run(Config(dataset="mnist1d", hidden=(), lr=0.01, epochs=50, progress=False,
                        out=str(tmp_path / "linear")), log=quiet)
    assert abs(linear["test_accuracy"] - 0.32) <= 0.02
