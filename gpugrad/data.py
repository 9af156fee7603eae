"""Datasets for `gpugrad train`: digits, spiral and MNIST-1D built in, MNIST from the user's files.

Nothing here touches the network: digits ships inside scikit-learn, spiral is a formula, MNIST-1D
is generated locally by the mnist1d package, and MNIST is read from files the user names.
Every loader returns a Dataset with x float32 of shape (n, features) and y int64 of shape (n,).

Errors carry one-line messages that name the file and the problem, so the CLI can print them
without a traceback: FileNotFoundError (missing file), DataError, a ValueError (malformed file),
ImportError (optional package missing), ValueError (bad argument).
"""
from __future__ import annotations

import gzip
import math
import os
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import npz

__all__ = ["DATASETS", "DataError", "Dataset", "MAX_DATA_BYTES", "load", "batches"]

DATASETS = ("digits", "spiral", "mnist1d", "mnist")
# The package's own name first: a checkout run with PYTHONPATH=. has no gpugrad to add extras to.
_INSTALL_HINT = "pip install {}, or pip install \".[data]\" from gpugrad's checkout for every dataset"
# LeCun's file names, in the order train images, train labels, test images, test labels.
_IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# The most bytes of data one file may declare: 1 GiB, 22 times MNIST's training images. Files are
# checked against it before they are read (as PIL's MAX_IMAGE_PIXELS guards against
# decompression bombs); raise it to load larger ones.
MAX_DATA_BYTES = 1 << 30
_EXPECTED = (f"a directory with {', '.join(_IDX_NAMES)} (each optionally .gz), or an .npz file "
             f"(or a directory holding mnist.npz) with arrays {', '.join(_NPZ_KEYS)}")


class DataError(ValueError):
    """A dataset file that exists but cannot be used: bad header, truncated, bad shape or labels."""


@dataclass(frozen=True, eq=False)  # eq=False: == on numpy arrays is elementwise, not a bool
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self):
        # A loader bug should fail here, not as a shape error deep inside training.
        for split in ("train", "test"):
            x, y = getattr(self, "x_" + split), getattr(self, "y_" + split)
            if (x.dtype != np.float32 or x.ndim != 2
                    or y.dtype != np.int64 or y.shape != x.shape[:1]):
                raise ValueError(f"{self.name} {split}: need x float32 (n, features) and y int64"
                                 f" (n,), got x {x.dtype} {x.shape} and y {y.dtype} {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(f"{self.name} {split}: labels span {y.min()}..{y.max()},"
                                 f" outside 0..{self.num_classes - 1}")
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(f"{self.name}: {self.x_train.shape[1]} train features"
                             f" but {self.x_test.shape[1]} test features")

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    def describe(self) -> str:
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test samples, "
                f"{self.num_features} features, {self.num_classes} classes")


def load(name: str, path=None, seed: int = 0) -> Dataset:
    """Load a dataset by name (one of DATASETS).

    seed picks the digits train/test split and the spiral's noise. mnist1d ignores it: the
    benchmark is one fixed dataset (mnist1d's own seed), the one the paper's accuracies refer to;
    mnist's split is the files'. path (the CLI's --data) is for mnist only: see _EXPECTED.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "mnist":
        return _mnist(path)
    if path is not None:  # a user passing --data with a built-in set would silently train on it
        raise ValueError(f"dataset {name!r} is built in and reads no files; "
                         "--data is for mnist only")
    return {"digits": _digits, "spiral": _spiral, "mnist1d": _mnist1d}[name](seed)


def _digits(seed):
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(f"dataset 'digits' needs scikit-learn: "
                          f"{_INSTALL_HINT.format('scikit-learn')} ({e})") from e
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixels are counts 0..16 (4x4 blocks of a 32x32 bitmap)
    y = y.astype(np.int64)
    train, test = _stratified_split(y, 0.2, np.random.default_rng(seed))
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10)


def _stratified_split(y, test_fraction, rng):
    """(train, test) indices: each class gives round(test_fraction * its count) samples to test,
    so both splits keep the class balance; each split is shuffled so no batch is one class."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(test_fraction * len(idx))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _spiral(seed):
    # The case study reports training accuracy only; the test set is a second, independent draw.
    x, y = _make_spiral(np.random.default_rng(seed))
    x_test, y_test = _make_spiral(np.random.default_rng(seed + 1))
    return Dataset("spiral", x, y, x_test, y_test, num_classes=3)


def _make_spiral(rng, n=100, k=3):
    """CS231n "Putting it together" spiral: class j is an arm of n points with radius 0..1 and
    angle 4j..4(j+1) radians plus N(0, 0.2^2) noise; points in class order, as there."""
    x = np.zeros((n * k, 2), dtype=np.float32)
    for j in range(k):
        r = np.linspace(0.0, 1.0, n)
        t = np.linspace(j * 4, (j + 1) * 4, n) + rng.standard_normal(n) * 0.2
        x[j * n:(j + 1) * n] = np.c_[r * np.sin(t), r * np.cos(t)]
    return x, np.repeat(np.arange(k, dtype=np.int64), n)


def _mnist1d(seed):
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError(f"dataset 'mnist1d' needs the mnist1d package: "
                          f"{_INSTALL_HINT.format('mnist1d')} ({e})") from e
    # make_dataset reseeds NumPy's and Python's global generators (mnist1d.utils.set_seed);
    # restore both so loading data never changes the user's random streams.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())  # never get_dataset(): that one may download
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return Dataset("mnist1d", d["x"].astype(np.float32), d["y"].astype(np.int64),
                   d["x_test"].astype(np.float32), d["y_test"].astype(np.int64), num_classes=10)


# ---- MNIST from user files ----------------------------------------------------------------

def _mnist(path):
    if path is None:
        raise ValueError(f"dataset 'mnist' is read from your files: pass --data PATH "
                         f"(path= in Python), where PATH is {_EXPECTED}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"mnist data path {p} does not exist; expected {_EXPECTED}")
    if p.is_dir() and (p / "mnist.npz").is_file():
        p = p / "mnist.npz"
    arrays = _read_npz(p) if p.is_file() else _read_idx_dir(p)
    return Dataset("mnist", *arrays, num_classes=10)


def _read_idx_dir(d):
    x_train, y_train, x_test, y_test = (_find_idx(d, name) for name in _IDX_NAMES)
    return (*_mnist_split(_read_idx(x_train, 3), _read_idx(y_train, 1), x_train, y_train),
            *_mnist_split(_read_idx(x_test, 3), _read_idx(y_test, 1), x_test, y_test))


def _find_idx(d, name):
    # Kaggle's widely used copy spells the names with a dot: train-images.idx3-ubyte.
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        if (d / candidate).is_file():
            return d / candidate
    raise FileNotFoundError(f"{d} has no {name} (or {name}.gz); mnist expects {_EXPECTED}")


def _read_idx(path, ndim):
    """Parse an IDX file of uint8: magic 0x0000_08_<ndim>, ndim big-endian uint32 sizes, data.

    The sizes are checked against what the file can hold before the data is read, and a .gz is
    inflated in bounded chunks, stopping one byte past what its header declares."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if path.suffix != ".gz":
            return _parse_idx(path, f, ndim, file_size=size)
        try:
            with gzip.GzipFile(fileobj=f) as unzipped:
                return _parse_idx(path, unzipped, ndim, gzip_size=size)
        except (OSError, EOFError, zlib.error) as e:  # bad header/CRC, cut short, corrupt stream
            raise DataError(f"{path}: not a readable gzip file ({e})") from e


def _parse_idx(path, f, ndim, file_size=None, gzip_size=None):
    """file_size: a plain file's size; gzip_size: a .gz file's size (what it holds is unknown)."""
    kind, magic, header = ("images" if ndim == 3 else "labels"), 0x800 | ndim, 4 + 4 * ndim
    raw = f.read(header)
    # Magic first: it tells a swapped or foreign file apart from a merely damaged one.
    if len(raw) < 4 or raw[:4] != magic.to_bytes(4, "big"):
        got = (f"magic number 0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4
               else f"only {len(raw)} bytes")
        raise DataError(f"{path}: {got}, expected magic 0x{magic:08x} (IDX uint8 {kind})")
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than the {header}-byte IDX {kind} "
                        "header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = header + math.prod(dims)
    says = f"{path}: header says {' x '.join(map(str, dims))} {kind} ({size} bytes)"
    if file_size is not None and file_size != size:
        raise DataError(f"{says} but the file has {file_size} bytes"
                        + (" (truncated)" if file_size < size else ""))
    if gzip_size is not None and size > npz.deflate_capacity(gzip_size):
        raise DataError(f"{says} but a gzip file of {gzip_size} bytes cannot hold more than "
                        f"{npz.deflate_capacity(gzip_size)}")
    if size - header > MAX_DATA_BYTES:
        raise DataError(f"{says}, more than gpugrad.data.MAX_DATA_BYTES ({MAX_DATA_BYTES}) "
                        "allows; raise it to load larger files")
    pixels = np.empty(dims, dtype=np.uint8)
    got = header + npz.read_into(f, pixels.reshape(-1))
    if got < size:
        raise DataError(f"{says} but the file decompresses to only {got} bytes (truncated)")
    if f.read(1):
        raise DataError(f"{says} but the file decompresses to more than that")
    return pixels


def _read_npz(path):
    """The four arrays of an .npz, every entry's sizes checked before it is read (npz.py)."""
    if path.suffix != ".npz":
        raise DataError(f"{path}: not an .npz file; for IDX files pass the directory holding them")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a valid .npz (zip) archive")
    try:
        with npz.open_archive(path) as z:  # never unpickles: loading data must not run code
            found = npz.entries(z)
            missing = [k for k in _NPZ_KEYS if k not in found]
            if missing:
                raise DataError(f"{path}: missing {', '.join(missing)}; "
                                f"expected arrays {', '.join(_NPZ_KEYS)}")
            a = {k: npz.read_array(z, found[k], MAX_DATA_BYTES, "gpugrad.data.MAX_DATA_BYTES")
                 for k in _NPZ_KEYS}
    except DataError:
        raise
    except npz.READ_ERRORS as e:
        raise DataError(f"{path}: cannot read its arrays ({e})") from e
    return (*_mnist_split(a["x_train"], a["y_train"], f"{path}[x_train]", f"{path}[y_train]"),
            *_mnist_split(a["x_test"], a["y_test"], f"{path}[x_test]", f"{path}[y_test]"))


def _mnist_split(x, y, x_src, y_src):
    """Check and convert one split; x_src and y_src say where the arrays came from."""
    x, y = _pixels(x, x_src), _labels(y, y_src)
    if len(x) != len(y):
        raise DataError(f"{x_src} holds {len(x)} images but {y_src} holds {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{x_src} holds no images")
    return x, y


def _pixels(x, src):
    """(n, 28, 28) or (n, 784) pixels, uint8 0..255 or float 0..1 -> float32 (n, 784) in [0, 1]."""
    if x.shape[1:] not in ((28, 28), (784,)):
        raise DataError(f"{src}: images have shape {x.shape}, expected (n, 28, 28) or (n, 784)")
    if x.dtype.kind not in "uif":
        raise DataError(f"{src}: pixels have dtype {x.dtype}, "
                        "expected uint8 0..255 or floats in [0, 1]")
    top = 255 if x.dtype.kind in "ui" else 1
    if x.size and not (x.min() >= 0 and x.max() <= top):  # written this way to catch NaN as well
        raise DataError(f"{src}: {x.dtype} pixels span {x.min()}..{x.max()}, expected 0..{top}")
    out = x.reshape(len(x), 784).astype(np.float32)
    if top == 255:
        out /= 255
    return out


def _labels(y, src):
    if y.ndim != 1 or y.dtype.kind not in "ui":
        raise DataError(f"{src}: labels are {y.dtype} of shape {y.shape}, "
                        "expected integers of shape (n,)")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{src}: labels span {y.min()}..{y.max()}, expected digits 0..9")
    return y.astype(np.int64)


# ---- minibatches for the trainer ------------------------------------------------------------

def batches(x, y, batch_size, shuffle=True, rng=None, drop_last=False, rank=0, world_size=1):
    """Minibatches (x_batch, y_batch) covering each sample once: one epoch per call.

    shuffle draws a permutation from rng (a numpy Generator, a seed, or None for fresh entropy)
    when batches() is called, and batches are copies; without shuffle they are in-order views.
    drop_last skips a final batch shorter than batch_size. Arguments are checked at the call,
    not at the first next().

    Data parallel (rank, world_size): every rank draws the same permutation (pass the same seed
    everywhere), cuts it into global batches of batch_size * world_size samples, and takes its
    own contiguous part of each: rank r gets samples [r * batch_size, (r + 1) * batch_size) of
    every full global batch, so the ranks' shards are disjoint and, concatenated in rank order,
    are the global batch. A last, shorter global batch is split as evenly as possible; one with
    fewer samples than ranks is dropped, so every rank takes the same number of steps.
    """
    is_int = isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
    if not is_int or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    for name, value, low in (("world_size", world_size, 1), ("rank", rank, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if rank >= world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} ranks")
    order = np.random.default_rng(rng).permutation(len(x)) if shuffle else None
    step = batch_size * world_size
    stop = len(x) - len(x) % step if drop_last else len(x)
    if world_size > 1 and stop % step and stop % step < world_size:
        stop -= stop % step  # too few samples left for one per rank
    return _iter_batches(x, y, step, order, stop, rank, world_size)


def _iter_batches(x, y, step, order, stop, rank, world_size):
    for i in range(0, stop, step):
        m = min(step, stop - i)  # this global batch's size; rank's part: [lo, hi)
        lo, hi = i + m * rank // world_size, i + m * (rank + 1) // world_size
        if order is None:
            yield x[lo:hi], y[lo:hi]
        else:
            idx = order[lo:hi]
            yield x[idx], y[idx]
