"""A checkpoint that is a model: gg.nn.Standardize (preprocessing inside the model, saved with it),
module buffers, and gg.nn.save_model / gg.nn.load_model (architecture + weights + info, no
pickle). Bad files raise one clear error naming the file and what is wrong."""
import json
import zipfile

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import nn
from gpugrad.errors import ShapeError
from gpugrad.serialization import MODEL_KEY


def _model(seed=0, activation="relu", sizes=(4, 5, 3)):
    gg.manual_seed(seed)
    pre = nn.Standardize(np.arange(4, dtype=np.float32), np.array([1, 2, 3, 4], np.float32))
    return nn.Sequential(pre, *nn.mlp(sizes, activation=activation))


# ---- Standardize --------------------------------------------------------------------------

def test_standardize_is_the_affine_map_in_its_dtype():
    pre = nn.Standardize([1.0, 2.0], [2.0, 4.0])
    assert pre.mean.dtype == np.float32 and pre.num_features == 2
    x = np.array([[3.0, 10.0], [1.0, 2.0]])  # float64 in: the layer's dtype out
    y = pre(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), [[1.0, 2.0], [0.0, 0.0]])
    np.testing.assert_array_equal(pre(np.array([[5, 6]], np.uint8)).numpy(), [[2.0, 1.0]])


def test_standardize_is_not_trained_but_passes_gradients():
    pre = nn.Standardize([1.0, 2.0], [2.0, 4.0])
    assert list(pre.parameters()) == [] and not pre.mean.requires_grad
    x = gg.tensor([[3.0, 10.0]], requires_grad=True)
    pre(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0.5, 0.25]])


def test_standardize_fit_uses_the_data_and_floors_tiny_spreads():
    x = np.array([[0.0, 5.0, 1.0], [2.0, 5.0, 3.0]], np.float32)
    pre = nn.Standardize.fit(x, floor=0.1)
    np.testing.assert_array_equal(pre.mean.numpy(), [1.0, 5.0, 2.0])
    # spreads 1, 0, 1: the constant feature gets 0.1 * mean spread (2/3), not 0
    np.testing.assert_allclose(pre.std.numpy(), [1.0, 0.2 / 3, 1.0], rtol=1e-6)
    assert np.isfinite(pre(x).numpy()).all()


@pytest.mark.parametrize("mean, std, error, pattern", [
    ([0.0, 1.0], [1.0], ShapeError, "2 means but 1 std"),
    ([[0.0]], [[1.0]], ShapeError, "1-D"),
    ([0.0], [0.0], ValueError, "std must be > 0"),
    ([np.nan], [1.0], ValueError, "finite"),
    ([0.0], [np.inf], ValueError, "finite"),
    ([], [], ShapeError, "at least one feature"),
])
def test_standardize_bad_statistics(mean, std, error, pattern):
    with pytest.raises(error, match=pattern):
        nn.Standardize(mean, std)


def test_standardize_wrong_feature_count():
    with pytest.raises(ShapeError, match="Standardize: input has 3 features .* expected 2"):
        nn.Standardize([0.0, 0.0], [1.0, 1.0])(np.zeros((4, 3)))


# ---- buffers ------------------------------------------------------------------------------

def test_buffers_are_saved_state_but_not_parameters():
    model = _model()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert [n for n, _ in model.named_buffers()] == ["0.mean", "0.std"]
    assert list(model.state_dict()) == ["0.mean", "0.std", *names]
    # a model without buffers has the state dict it always had
    assert list(nn.mlp([2, 3, 2]).state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_load_state_dict_writes_buffers_in_place_and_checks_them():
    a, b = _model(0), _model(1)
    b[0].mean.data[...] = 7.0
    mean = a[0].mean
    a.load_state_dict(b.state_dict())
    assert a[0].mean is mean  # the same Tensor, new values
    np.testing.assert_array_equal(mean.numpy(), 7.0)
    state = b.state_dict()
    state["0.std"] = np.ones(5, np.float32)
    with pytest.raises(ShapeError, match="'0.std' has shape"):
        a.load_state_dict(state)
    np.testing.assert_array_equal(mean.numpy(), 7.0)


def test_register_buffer_rejects_parameters_and_bad_names():
    m = nn.Module()
    with pytest.raises(TypeError, match="requires grad"):
        m.register_buffer("w", gg.zeros(2, requires_grad=True))
    with pytest.raises(TypeError, match="Tensor or an array"):
        m.register_buffer("w", [1.0, 2.0])
    with pytest.raises(ValueError, match="name"):
        m.register_buffer("a.b", gg.zeros(2))
    m.register_buffer("w", gg.zeros(2))
    m.w = gg.ones(2)  # reassigning a buffer keeps it a buffer
    assert [n for n, _ in m.named_buffers()] == ["w"]
    np.testing.assert_array_equal(m.w.numpy(), 1.0)


# ---- save_model / load_model --------------------------------------------------------------

@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_model_round_trip_gives_the_same_outputs(tmp_path, activation, rng):
    model = _model(activation=activation)
    path = tmp_path / "m.npz"
    nn.save_model(model, path, info={"dataset": "toy", "num_classes": 3})
    loaded = gg.nn.load_model(path)
    assert type(loaded) is nn.Sequential and type(loaded[0]) is nn.Standardize
    assert repr(loaded) == repr(model)
    x = rng.standard_normal((6, 4))
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert loaded.info == {"dataset": "toy", "num_classes": 3, "gpugrad_version": gg.__version__}
    assert all(p.requires_grad for p in loaded.parameters())


def test_model_file_is_a_plain_npz_of_its_state(tmp_path):
    """np.load reads it without pickles; gg.load gives the state dict, metadata left out."""
    model = _model()
    path = tmp_path / "m.npz"
    nn.save_model(model, path)
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted([MODEL_KEY, *model.state_dict()])
        meta = json.loads(f[MODEL_KEY].tobytes().decode("utf-8"))
    assert meta["format"] == "gpugrad.model" and meta["format_version"] == 1
    assert [layer["type"] for layer in meta["architecture"]["layers"]] == [
        "Standardize", "Linear", "ReLU", "Linear"]
    state = gg.load(path)
    assert list(state) == list(model.state_dict())
    fresh = _model(seed=5)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh[1].weight.numpy(), model[1].weight.numpy())


def test_load_model_on_a_device(tmp_path):
    nn.save_model(_model(), tmp_path / "m.npz")
    assert all(p.device == "cpu" for p in nn.load_model(tmp_path / "m.npz", device="cpu")
               .parameters())
    if not gg.cuda.is_available():
        with pytest.raises(gg.DeviceError):
            nn.load_model(tmp_path / "m.npz", device="cuda")


def test_save_model_refuses_layers_it_cannot_describe(tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x * 2

    class MyLinear(nn.Linear):
        pass

    for model, name in ((nn.Sequential(nn.Linear(2, 2), Custom()), "Custom"),
                        (nn.Sequential(MyLinear(2, 2)), "MyLinear"),
                        (Custom(), "Custom")):
        with pytest.raises(TypeError, match=f"cannot describe .*{name}.*gg.save"):
            nn.save_model(model, tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="info must be a dict"):
        nn.save_model(_model(), tmp_path / "m.npz", info=[1])
    with pytest.raises(ValueError, match="JSON"):
        nn.save_model(_model(), tmp_path / "m.npz", info={"x": np.float32(1)})
    assert list(tmp_path.iterdir()) == []


def test_load_model_of_a_weights_only_file_says_what_to_do(tmp_path):
    gg.save(nn.mlp([2, 3]), tmp_path / "w.npz")
    with pytest.raises(ValueError, match=r"w.npz.* weights only .*load_state_dict"):
        nn.load_model(tmp_path / "w.npz")


def test_load_model_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        nn.load_model(tmp_path / "nope.npz")


def _rewrite(path, meta=None, drop=(), replace=None):
    """Rewrite a model file with its metadata (a dict or raw bytes) or entries changed."""
    state = dict(np.load(path, allow_pickle=False))
    if meta is not None:
        raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        state[MODEL_KEY] = np.frombuffer(raw, np.uint8)
    for key in drop:
        state.pop(key)
    state.update(replace or {})
    with zipfile.ZipFile(path, "w") as zf:
        for key, arr in state.items():
            with zf.open(key + ".npy", "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)


def _layer(meta, i, **changes):
    meta["architecture"]["layers"][i].update(changes)
    return meta


def _meta(path):
    with np.load(path, allow_pickle=False) as f:
        return json.loads(f[MODEL_KEY].tobytes().decode())


@pytest.mark.parametrize("change, pattern", [
    (lambda m: b"{not json", "metadata is not valid JSON"),
    (lambda m: b"\xff\xfe", "metadata is not valid JSON"),
    (lambda m: [1, 2], "metadata must be a JSON object"),
    (lambda m: {**m, "format": "other"}, "not a gpugrad model file"),
    (lambda m: {**m, "format_version": 2}, "format version 2 .* this gpugrad reads 1"),
    (lambda m: {**m, "architecture": {"type": "os.system", "args": ["rm -rf /"]}},
     "unknown layer type 'os.system'"),
    (lambda m: {**m, "architecture": {"type": "Sequential", "layers": "x"}},
     "'layers' must be a list"),
    (lambda m: {**m, "architecture": {"type": "Linear", "in_features": 4}},
     "Linear: missing 'out_features'"),
    (lambda m: _layer(m, 1, in_features=-4), "in_features must be a positive int"),
    (lambda m: _layer(m, 1, bias=1), "bias must be true or false"),
    (lambda m: _layer(m, 0, dtype="object"), "dtype must be one of"),
    (lambda m: _layer(m, 1, in_features=10**9, out_features=10**9),
     r"'1.weight' has shape \(4, 5\), expected shape \(1000000000, 1000000000\)"),
    (lambda m: {**m, "architecture": {"type": "ReLU", "extra": 1}}, "ReLU: unexpected 'extra'"),
    (lambda m: {**m, "info": 3}, "'info' must be a JSON object"),
])
def test_load_model_refuses_bad_metadata_naming_the_file(tmp_path, change, pattern):
    path = tmp_path / "m.npz"
    nn.save_model(_model(), path)
    _rewrite(path, meta=change(_meta(path)))
    with pytest.raises(ValueError, match=pattern) as e:
        nn.load_model(path)
    assert "m.npz" in str(e.value)


@pytest.mark.parametrize("depth", [100, 100_000])  # past MAX_DEPTH; past Python's recursion
def test_load_model_deeply_nested_metadata_is_a_clear_error(tmp_path, depth):
    path = tmp_path / "m.npz"
    nn.save_model(_model(), path)
    deep = '{"type": "Sequential", "layers": [' * depth + "]}" * depth
    meta = json.dumps({**_meta(path), "architecture": "DEEP"}).replace('"DEEP"', deep)
    _rewrite(path, meta=meta.encode())
    with pytest.raises(ValueError, match="nested too deeply"):
        nn.load_model(path)


@pytest.mark.parametrize("how, pattern", [
    ("drop", r"missing arrays \['3.bias'\]"),
    ("extra", r"unexpected arrays \['9.weight'\]"),
    ("shape", r"'1.weight' has shape \(2, 5\), expected shape \(4, 5\)"),
    ("dtype", r"'0.mean' has dtype int32"),
])
def test_load_model_checks_arrays_against_the_architecture(tmp_path, how, pattern):
    path = tmp_path / "m.npz"
    nn.save_model(_model(), path)
    if how == "drop":
        _rewrite(path, drop=["3.bias"])
    elif how == "extra":
        _rewrite(path, replace={"9.weight": np.zeros(2, np.float32)})
    elif how == "shape":
        _rewrite(path, replace={"1.weight": np.zeros((2, 5), np.float32)})
    else:
        _rewrite(path, replace={"0.mean": np.zeros(4, np.int32)})
    with pytest.raises(ValueError, match=pattern):
        nn.load_model(path)


def test_load_model_does_not_draw_from_the_generator(tmp_path):
    nn.save_model(_model(), tmp_path / "m.npz")
    gg.manual_seed(3)
    expected = gg.randn(4).numpy()
    gg.manual_seed(3)
    nn.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(gg.randn(4).numpy(), expected)


def test_gg_save_refuses_the_model_files_reserved_key(tmp_path):
    with pytest.raises(ValueError, match="reserved for the model description"):
        gg.save({MODEL_KEY: np.zeros(3, np.uint8)}, tmp_path / "s.npz")
    assert list(tmp_path.iterdir()) == []
