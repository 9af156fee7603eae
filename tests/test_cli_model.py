"""The model `gpugrad train` saves, used again (issue 14): gg.nn.load_model gives a model that
takes raw inputs, `gpugrad evaluate` prints the training run's own test accuracy line, and
`gpugrad predict` classifies raw inputs from .npy/.npz/.csv into .npy/.npz/.csv or stdout.
Bad paths and files are one-line errors that write nothing."""
import json
import os

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import data
from gpugrad.cli import main

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A short digits run through the CLI: (its folder, its stdout lines)."""
    out = tmp_path_factory.mktemp("run")
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--epochs", "4", "--device", "cpu", "--no-progress",
                     "--out", str(out)]) == 0
    return out, buf.getvalue().strip().splitlines()


@pytest.fixture(scope="module")
def x_test():
    return data.load("digits").x_test


def _cli(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_loaded_model_applies_to_raw_inputs_with_the_reported_accuracy(digits_run):
    """The issue's case: model.npz on gg.data.load("digits").x_test gave 0.816, not the run's
    number, because the standardisation was not in the file."""
    out, lines = digits_run
    model = gg.nn.load_model(out / "model.npz")
    assert isinstance(model[0], gg.nn.Standardize)
    ds = data.load("digits")
    with gg.no_grad():
        acc = float((model(ds.x_test).numpy().argmax(1) == ds.y_test).mean())
    assert lines[-1] == f"test accuracy: {acc:.4f}"
    assert model.info["dataset"] == "digits" and model.info["num_classes"] == 10
    assert model.info["num_features"] == 64 and model.info["gpugrad_version"] == gg.__version__
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] == acc


@pytest.mark.parametrize("which", ["folder", "file"])
def test_evaluate_prints_the_training_runs_line(digits_run, capsys, which):
    out, lines = digits_run
    path = out if which == "folder" else out / "model.npz"
    code, stdout, err = _cli(capsys, "evaluate", path, "--device", "cpu")
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == lines[-1]  # "test accuracy: 0.XXXX", same number
    assert stdout.strip().splitlines()[0] == lines[0].split(" (")[0]  # train accuracy too
    assert "note:" not in err  # no disagreement with the run to report


def test_evaluate_says_when_its_number_differs_from_the_runs(digits_run, tmp_path, capsys):
    model = gg.nn.load_model(digits_run[0] / "model.npz")
    model.info["test_accuracy"] = 0.5
    info = {k: v for k, v in model.info.items() if k != "gpugrad_version"}
    gg.nn.save_model(model, tmp_path / "m.npz", info=info)
    code, stdout, err = _cli(capsys, "evaluate", tmp_path / "m.npz", "--device", "cpu")
    assert code == 0 and "note: the training run reported test accuracy 0.5000" in err


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "missing", "no such run folder or model file"),
    (lambda d: d, "the folder has no model.npz"),
    (lambda d: gg.save(gg.nn.mlp([64, 10]), d / "w.npz") or d / "w.npz", "holds weights only"),
    (lambda d: (d / "x.npz").write_bytes(b"not a zip") and d / "x.npz",
     "is not a valid .npz checkpoint"),
])
def test_evaluate_bad_paths_are_one_line_errors(tmp_path, capsys, setup, message):
    code, stdout, err = _cli(capsys, "evaluate", setup(tmp_path), "--device", "cpu")
    assert code == 2 and stdout == ""
    [line] = err.strip().splitlines()
    assert line.startswith("gpugrad: error: ") and message in line


def test_evaluate_on_a_dataset_that_does_not_fit(digits_run, capsys):
    code, _, err = _cli(capsys, "evaluate", digits_run[0], "--dataset", "spiral")
    assert code == 2
    assert "the model takes 64 features and scores 10 classes, but spiral has 2 features" in err


def test_evaluate_needs_a_dataset_for_a_model_without_one(tmp_path, capsys):
    gg.nn.save_model(gg.nn.mlp([2, 3]), tmp_path / "m.npz")
    code, _, err = _cli(capsys, "evaluate", tmp_path / "m.npz")
    assert code == 2 and "records no dataset" in err and "--dataset" in err
    code, out, _ = _cli(capsys, "evaluate", tmp_path / "m.npz", "--dataset", "spiral")
    assert code == 0 and out.strip().splitlines()[-1].startswith("test accuracy: ")


# ---- predict --------------------------------------------------------------------------------

def _expected(digits_run, x):
    model = gg.nn.load_model(digits_run[0] / "model.npz")
    with gg.no_grad():
        logits = model(x)
        return logits.numpy().argmax(1), gg.softmax(logits, axis=-1).numpy()


def test_predict_npy_to_npy_gives_the_runs_accuracy(digits_run, x_test, tmp_path, capsys):
    np.save(tmp_path / "x.npy", x_test)
    code, _, err = _cli(capsys, "predict", digits_run[0], "--input", tmp_path / "x.npy",
                        "--out", tmp_path / "pred.npy", "--device", "cpu")
    assert code == 0, err
    pred = np.load(tmp_path / "pred.npy")
    assert pred.dtype == np.int64 and pred.shape == (len(x_test),)
    np.testing.assert_array_equal(pred, _expected(digits_run, x_test)[0])
    acc = (pred == data.load("digits").y_test).mean()
    assert digits_run[1][-1] == f"test accuracy: {acc:.4f}"
    assert f"wrote {len(x_test)} predictions to" in err


def test_predict_probabilities_to_npz_and_npy(digits_run, x_test, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=x_test[:20], other=np.zeros(3))
    classes, probs = _expected(digits_run, x_test[:20])
    assert _cli(capsys, "predict", digits_run[0], "--input", tmp_path / "x.npz", "--out",
                tmp_path / "p.npz", "--probabilities")[0] == 0
    with np.load(tmp_path / "p.npz") as f:
        np.testing.assert_array_equal(f["classes"], classes)
        np.testing.assert_allclose(f["probabilities"], probs, rtol=1e-6)
        np.testing.assert_allclose(f["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert _cli(capsys, "predict", digits_run[0], "--input", tmp_path / "x.npz", "--out",
                tmp_path / "p.npy", "--probabilities")[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), probs, rtol=1e-6)


def test_predict_csv_in_csv_out_and_stdout(digits_run, x_test, tmp_path, capsys):
    rows = "\n".join(",".join(f"{v:.9g}" for v in row) for row in x_test[:5])
    (tmp_path / "x.csv").write_text(",".join(f"px{i}" for i in range(64)) + "\n" + rows + "\n")
    classes, probs = _expected(digits_run, x_test[:5].astype(np.float64))
    code, stdout, _ = _cli(capsys, "predict", digits_run[0], "--input", tmp_path / "x.csv")
    assert code == 0
    assert stdout.splitlines() == ["class"] + [str(c) for c in classes]
    assert _cli(capsys, "predict", digits_run[0], "--input", tmp_path / "x.csv", "--out",
                tmp_path / "p.csv", "--probabilities")[0] == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "class," + ",".join(f"p{k}" for k in range(10))
    table = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    np.testing.assert_array_equal(table[:, 0], classes)
    np.testing.assert_allclose(table[:, 1:], probs, rtol=1e-5, atol=1e-7)


def test_predict_one_sample_and_images(digits_run, x_test, tmp_path, capsys):
    np.save(tmp_path / "one.npy", x_test[3])
    np.save(tmp_path / "images.npy", x_test[:4].reshape(4, 8, 8))
    classes = _expected(digits_run, x_test[:4])[0]
    code, out, _ = _cli(capsys, "predict", digits_run[0], "--input", tmp_path / "one.npy")
    assert code == 0 and out.splitlines() == ["class", str(classes[3])]
    code, out, _ = _cli(capsys, "predict", digits_run[0], "--input", tmp_path / "images.npy")
    assert code == 0 and out.splitlines()[1:] == [str(c) for c in classes]


def test_predict_notes_inputs_scaled_unlike_the_training_data(digits_run, x_test, tmp_path,
                                                               capsys):
    np.save(tmp_path / "counts.npy", x_test[:3] * 16)  # pixel counts 0..16, not 0..1
    code, _, err = _cli(capsys, "predict", digits_run[0], "--input", tmp_path / "counts.npy")
    assert code == 0
    assert "note: the inputs span 0..16, but the model was trained on inputs in 0..1" in err
    np.save(tmp_path / "ok.npy", x_test[:3])
    assert "note:" not in _cli(capsys, "predict", digits_run[0], "--input",
                               tmp_path / "ok.npy")[2]


def _write(tmp_path, name, content):
    path = tmp_path / name
    if callable(content):
        with open(path, "wb") as f:
            content(f)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("name, content, message", [
    ("x.npy", np.zeros((3, 5)), "an array of shape (3, 5) does not fit the model, which takes "
                                "64 features"),
    ("x.npy", np.full((2, 64), np.nan), "sample 0 has a value that is not a finite number (nan)"),
    ("x.npy", np.array([["a"] * 64]), "holds <U1 values, not numbers"),
    ("x.npy", np.zeros((0, 64)), "holds no samples"),
    ("x.npy", np.array([{"a": 1}], dtype=object), "holds Python objects"),
    ("x.npy", lambda f: np.lib.format.write_array_header_1_0(f, {  # a header and no data
        "descr": "<f8", "fortran_order": False, "shape": (10**11, 64)}),
     "not a complete .npy file"),
    ("x.npz", {"a": np.zeros((2, 64)), "b": np.zeros((2, 64))}, "name the input array 'x'"),
    ("x.csv", "1,2\n3,x\n", "line 2: 'x' is not a number"),
    ("x.csv", "1,2\n3\n", "line 2 has 1 values, the first row 2"),
    ("x.txt", "1", "expected a .npy, .npz, .csv file"),
])
def test_predict_bad_inputs_are_one_line_errors(digits_run, tmp_path, capsys, name, content,
                                                message):
    path = _write(tmp_path, name, content)
    code, out, err = _cli(capsys, "predict", digits_run[0], "--input", path, "--out",
                          tmp_path / "pred.npy")
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("gpugrad: error: --input ") and message in line, line
    assert not (tmp_path / "pred.npy").exists()


@pytest.mark.parametrize("out, message", [
    ("pred.txt", "name a .npy, .npz, .csv file"),
    ("missing/pred.npy", "the folder does not exist"),
])
def test_predict_bad_out_is_refused_before_any_work(digits_run, x_test, tmp_path, capsys, out,
                                                    message):
    np.save(tmp_path / "x.npy", x_test[:2])
    before = sorted(os.listdir(tmp_path))
    code, _, err = _cli(capsys, "predict", digits_run[0], "--input", tmp_path / "x.npy",
                        "--out", tmp_path / out)
    assert code == 2 and message in err
    assert sorted(os.listdir(tmp_path)) == before


def test_predict_needs_input(digits_run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict", str(digits_run[0])])
    assert e.value.code == 2
    assert "the following arguments are required: --input" in capsys.readouterr().err
