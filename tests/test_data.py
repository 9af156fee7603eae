"""Dataset loaders: built-in sets' shapes, splits and construction; MNIST from small files written
here (IDX plain and gzipped, npz) and every malformed-file error; the minibatch iterator."""
import gzip
import random
import struct
import sys

import numpy as np
import pytest

from gpugrad import data
from gpugrad.data import DataError, Dataset

IDX = dict(zip(("x_train", "y_train", "x_test", "y_test"), data._IDX_NAMES))


# ---- helpers: tiny MNIST-shaped data on disk ------------------------------------------------

def fake_mnist(n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test, dtype=np.uint8)}


def idx_bytes(a, magic=None):
    """The IDX encoding: magic 0x0000_08_<ndim>, big-endian uint32 sizes, then the uint8 data."""
    a = np.asarray(a, dtype=np.uint8)
    magic = 0x800 | a.ndim if magic is None else magic
    return struct.pack(f">{1 + a.ndim}I", magic, *a.shape) + a.tobytes()


def write_idx(d, arrays, gz=False, names=IDX):
    for key, name in names.items():
        raw = idx_bytes(arrays[key])
        (d / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return d


def assert_matches(ds, arrays):
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.num_features == 784
    for split in ("train", "test"):
        x, y = getattr(ds, "x_" + split), getattr(ds, "y_" + split)
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_allclose(x, arrays["x_" + split].reshape(-1, 784) / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, arrays["y_" + split])


# ---- names, arguments, Dataset ------------------------------------------------------------

def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="digits, spiral, mnist1d, mnist"):
        data.load("cifar10")


def test_data_path_is_refused_for_builtin_sets(tmp_path):
    with pytest.raises(ValueError, match="--data is for mnist only"):
        data.load("spiral", path=tmp_path)


def test_dataset_rejects_wrong_dtypes_and_labels():
    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 2, 0])
    described = Dataset("ok", x, y, x, y, 3).describe()
    assert described == "ok: 4 train / 4 test samples, 2 features, 3 classes"
    with pytest.raises(ValueError, match="float32"):
        Dataset("bad", x.astype(np.float64), y, x, y, 3)
    with pytest.raises(ValueError, match="outside 0..1"):
        Dataset("bad", x, y, x, y, 2)


@pytest.mark.parametrize("name,modules", [("digits", ["sklearn", "sklearn.datasets"]),
                                          ("mnist1d", ["mnist1d", "mnist1d.data"])])
def test_missing_optional_package_says_how_to_install(monkeypatch, name, modules):
    for m in modules:  # None in sys.modules makes `import m` raise ImportError
        monkeypatch.setitem(sys.modules, m, None)
    with pytest.raises(ImportError, match=r'pip install "\.\[data\]" from gpugrad\'s checkout'):
        data.load(name)


# ---- digits -------------------------------------------------------------------------------

def test_digits_shapes_ranges_and_stratified_split():
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    ds = data.load("digits")
    assert ds.num_features == 64 and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    full_x, full_y = load_digits(return_X_y=True)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    # Stratified: every class gives round(20%) of its samples to test.
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.round(0.2 * np.bincount(full_y)))
    # The two splits are a partition of the 1,797 images (as a multiset of (pixels, label) rows).
    rows = lambda x, y: (lambda a: a[np.lexsort(a.T)])(np.c_[np.rint(x * 16), y].astype(np.int64))
    np.testing.assert_array_equal(rows(np.r_[ds.x_train, ds.x_test], np.r_[ds.y_train, ds.y_test]),
                                  rows(full_x / 16, full_y))
    assert not np.all(np.diff(ds.y_train) >= 0), "train split must be shuffled, not class-sorted"


def test_digits_split_depends_only_on_seed():
    pytest.importorskip("sklearn")
    a, b, c = data.load("digits", seed=0), data.load("digits", seed=0), data.load("digits", seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_test, c.x_test)


# ---- spiral -------------------------------------------------------------------------------

def test_spiral_is_the_case_study_construction():
    ds = data.load("spiral", seed=3)
    x, y = ds.x_train, ds.y_train
    assert x.shape == (300, 2) and ds.num_classes == 3 and x.dtype == np.float32
    np.testing.assert_array_equal(y, np.repeat([0, 1, 2], 100))
    for j in range(3):
        arm = x[y == j].astype(np.float64)
        radius = np.hypot(arm[:, 0], arm[:, 1])
        np.testing.assert_allclose(radius, np.linspace(0, 1, 100), atol=1e-6)
        # x = (r sin t, r cos t): the angle's deviation from the arm's line is the N(0, 0.2) noise.
        t = np.arctan2(arm[1:, 0], arm[1:, 1])
        noise = (t - np.linspace(4 * j, 4 * (j + 1), 100)[1:] + np.pi) % (2 * np.pi) - np.pi
        assert abs(noise.mean()) < 0.06 and 0.15 < noise.std() < 0.25
    # The case study's code, with np.random replaced by a Generator seeded as documented.
    rng, ref = np.random.default_rng(3), []
    for j in range(3):
        r = np.linspace(0.0, 1, 100)
        t = np.linspace(j * 4, (j + 1) * 4, 100) + rng.standard_normal(100) * 0.2
        ref.append(np.c_[r * np.sin(t), r * np.cos(t)])
    np.testing.assert_allclose(x, np.concatenate(ref), atol=1e-6)


def test_spiral_test_set_is_an_independent_draw_with_seed_plus_one():
    a, b = data.load("spiral", seed=0), data.load("spiral", seed=1)
    np.testing.assert_array_equal(a.x_test, b.x_train)
    assert not np.array_equal(a.x_train, a.x_test)
    np.testing.assert_array_equal(a.x_train, data.load("spiral", seed=0).x_train)


# ---- mnist1d (generated once for the module: it takes seconds) ----------------------------

@pytest.fixture(scope="module")
def mnist1d_run():
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    ds = data.load("mnist1d")
    return ds, expected, (np.random.random(), random.random())


def test_mnist1d_shapes_and_balance(mnist1d_run):
    ds = mnist1d_run[0]
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40) and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    assert np.bincount(ds.y_train, minlength=10).min() > 350
    # make_dataset standardizes the whole set; a float32 cast must not have changed that.
    assert abs(ds.x_train.mean()) < 0.1 and 0.9 < ds.x_train.std() < 1.1


def test_mnist1d_leaves_global_rngs_alone(mnist1d_run):
    _, expected, got = mnist1d_run
    assert got == expected


# ---- mnist from files -----------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path, gz):
    arrays = fake_mnist()
    ds = data.load("mnist", path=write_idx(tmp_path, arrays, gz=gz))
    assert_matches(ds, arrays)
    assert ds.x_train.shape == (12, 784) and ds.x_test.shape == (5, 784)


def test_mnist_accepts_kaggle_dotted_names(tmp_path):
    arrays = fake_mnist()
    write_idx(tmp_path, arrays, names={k: v.replace("-idx", ".idx") for k, v in IDX.items()})
    assert_matches(data.load("mnist", path=str(tmp_path)), arrays)


def test_mnist_from_npz_file_and_directory(tmp_path):
    arrays = fake_mnist()
    np.savez(tmp_path / "mnist.npz", **arrays)  # Keras layout: uint8 (n, 28, 28)
    assert_matches(data.load("mnist", path=tmp_path / "mnist.npz"), arrays)
    assert_matches(data.load("mnist", path=tmp_path), arrays)
    floats = {k: v.reshape(len(v), -1) / 255.0 if k[0] == "x" else v for k, v in arrays.items()}
    np.savez(tmp_path / "floats.npz", **floats)  # already scaled, already flat
    assert_matches(data.load("mnist", path=tmp_path / "floats.npz"), arrays)


def _as(array, magic=None):
    """Damage that replaces a file's bytes with another array's IDX encoding."""
    return lambda _: idx_bytes(array, magic)


# case: ({file key: damage(good bytes) -> bad bytes}, file the message must name, problem it states)
IDX_CASES = {
    "bad magic": ({"x_train": _as(np.zeros((12, 28, 28)), magic=0x0804)}, "x_train",
                  "magic number 0x00000804, expected magic 0x00000803"),
    "labels as images": ({"x_test": _as(np.zeros(5))}, "x_test",
                         "magic number 0x00000801, expected magic 0x00000803"),
    "empty file": ({"x_test": lambda b: b""}, "x_test", "only 0 bytes, expected magic"),
    "short header": ({"y_test": lambda b: b[:6]}, "y_test", "shorter than the 8-byte"),
    "truncated": ({"x_train": lambda b: b[:-100]}, "x_train", "(truncated)"),
    "trailing bytes": ({"y_train": lambda b: b + b"\0"}, "y_train", "file has 21 bytes"),
    "wrong dims": ({"x_train": _as(np.zeros((12, 27, 28)))}, "x_train", "expected (n, 28, 28)"),
    "count mismatch": ({"y_train": _as(np.zeros(11))}, "y_train", "12 images but"),
    "label 10": ({"y_test": _as([0, 1, 2, 3, 10])}, "y_test", "expected digits 0..9"),
    "no images": ({"x_test": _as(np.zeros((0, 28, 28))), "y_test": _as(np.zeros(0))}, "x_test",
                  "holds no images"),
}


@pytest.mark.parametrize("case", IDX_CASES)
def test_malformed_idx_raises_data_error_naming_file_and_problem(tmp_path, case):
    damage, named, problem = IDX_CASES[case]
    write_idx(tmp_path, fake_mnist())
    for key, fn in damage.items():
        f = tmp_path / IDX[key]
        f.write_bytes(fn(f.read_bytes()))
    with pytest.raises(DataError) as e:
        data.load("mnist", path=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / IDX[named]) in msg and problem in msg and "\n" not in msg


@pytest.mark.parametrize("damage", [lambda b: b[:len(b) // 2],  # cut short
                                    lambda b: b[:10] + b"garbage" + b[17:],  # corrupt stream
                                    lambda b: b"not gzip at all"])
def test_corrupt_gzip_raises_data_error(tmp_path, damage):
    write_idx(tmp_path, fake_mnist(), gz=True)
    p = tmp_path / (IDX["x_train"] + ".gz")
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not a readable gzip file"):
        data.load("mnist", path=tmp_path)


# case: (array key, change(good array) -> bad array or None to leave it out, problem stated)
NPZ_CASES = {
    "missing key": ("y_test", lambda y: None, "missing y_test"),
    "labels out of range": ("y_train", lambda y: np.r_[y[:-1], 12], "[y_train]: labels span"),
    "float labels": ("y_test", lambda y: y * 1.0, "[y_test]: labels are float64"),
    "float pixels above 1": ("x_test", lambda x: x * 1.0, "[x_test]: float64 pixels span"),
    "count mismatch": ("y_train", lambda y: y[:-1], "[x_train] holds 12 images but"),
    "pickled object array": ("x_train", lambda x: np.array([{}], dtype=object), "cannot read"),
}


@pytest.mark.parametrize("case", NPZ_CASES)
def test_malformed_npz_raises_data_error(tmp_path, case):
    key, change, problem = NPZ_CASES[case]
    arrays = fake_mnist()
    arrays[key] = change(arrays[key])
    np.savez(tmp_path / "m.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DataError) as e:
        data.load("mnist", path=tmp_path / "m.npz")
    assert "m.npz" in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


def test_npz_that_is_not_an_archive(tmp_path):
    (tmp_path / "m.npz").write_text("hello")
    with pytest.raises(DataError, match=r"m\.npz: not a valid \.npz"):
        data.load("mnist", path=tmp_path / "m.npz")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((1, 28, 28))))
    with pytest.raises(DataError, match="pass the directory holding them"):
        data.load("mnist", path=tmp_path / "train-images-idx3-ubyte")


def test_mnist_without_path_says_what_to_pass():
    with pytest.raises(ValueError) as e:
        data.load("mnist")
    for needed in ("--data PATH", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                   "mnist.npz", "y_test"):
        assert needed in str(e.value)


def test_missing_mnist_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist; expected a directory"):
        data.load("mnist", path=tmp_path / "nowhere")
    write_idx(tmp_path, fake_mnist())
    (tmp_path / IDX["y_test"]).unlink()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no t10k-labels-idx1-ubyte"):
        data.load("mnist", path=tmp_path)


# ---- batches ----------------------------------------------------------------

@pytest.mark.parametrize("n,bs,drop_last,sizes", [(10, 3, False, [3, 3, 3, 1]),
                                                  (10, 3, True, [3, 3, 3]),
                                                  (9, 3, True, [3, 3, 3]), (2, 5, False, [2])])
def test_batches_cover_each_sample_once_per_epoch(n, bs, drop_last, sizes):
    x, y = np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n)
    rng = np.random.default_rng(0)
    epochs = [list(data.batches(x, y, bs, rng=rng, drop_last=drop_last)) for _ in range(2)]
    for epoch in epochs:
        assert [len(b[1]) for b in epoch] == sizes
        seen = np.concatenate([b[1] for b in epoch])
        assert len(set(seen)) == len(seen) == sum(sizes)  # no repeats; all n unless drop_last
        for xb, yb in epoch:
            np.testing.assert_array_equal(xb, x[yb])  # rows stay paired with their labels
    if n == 10:  # each epoch draws a new order
        orders = [np.concatenate([b[1] for b in epoch]) for epoch in epochs]
        assert not np.array_equal(*orders)


def test_batches_order_without_shuffle_and_reproducible_with_seed():
    x, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10)
    plain = list(data.batches(x, y, 4, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in plain]), y)
    assert np.shares_memory(plain[0][0], x)  # in-order batches are views, no copy
    first = [b[1] for b in data.batches(x, y, 4, rng=7)]
    again = [b[1] for b in data.batches(x, y, 4, rng=np.random.default_rng(7))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(np.concatenate(first), y)


@pytest.mark.parametrize("bs", [0, -1, 2.5, True])
def test_batches_rejects_bad_batch_size_at_call_time(bs):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        data.batches(np.zeros((4, 1)), np.zeros(4), bs)


@pytest.mark.parametrize("bs", [0, -2, 1.0, "4", None])
@pytest.mark.parametrize("kwargs", [{}, {"drop_last": True}, {"shuffle": False}])
def test_batches_error_names_the_argument_and_value(bs, kwargs):
    with pytest.raises(ValueError) as e:
        data.batches(np.zeros((4, 1)), np.zeros(4), bs, **kwargs)
    assert str(e.value) == f"batch_size must be a positive integer, got {bs!r}"


def test_batches_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="x has 4 samples but y has 3"):
        data.batches(np.zeros((4, 1)), np.zeros(3), 2)
