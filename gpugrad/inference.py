"""What `gpugrad evaluate` and `gpugrad predict` do with a saved model: find it (a run folder or
its model file), check it against the data, read raw inputs (.npy, .npz, .csv) and write the
predictions (.npy, .npz, .csv) atomically.

Every problem with a path or a file raises FileNotFoundError or ValueError with a one-line
message naming the file, before anything is written.
"""
import csv
import errno
import io
import math
import os

import numpy as np

from . import data, nn, npz
from .serialization import save_arrays, write_atomically
from .train import accuracy, predictor

__all__ = ["FORMATS", "model_file", "input_features", "evaluate", "read_inputs",
           "check_output", "write_predictions", "predictions_csv", "range_note"]

FORMATS = (".npy", ".npz", ".csv")


def model_file(path):
    """The model file that PATH names: PATH itself, or PATH/model.npz for a run folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        file = os.path.join(path, "model.npz")
        if not os.path.exists(file):
            raise FileNotFoundError(errno.ENOENT, "the folder has no model.npz: pass the output "
                                    "folder of gpugrad train (its --out) or a model file", path)
        return file
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such run folder or model file", path)
    return path


def input_features(model):
    """How many features the model's first layer takes."""
    for m in model.modules():
        if isinstance(m, nn.Standardize):
            return m.num_features
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError(f"the model ({type(model).__name__}) has no Standardize or Linear layer")


def evaluate(model, dataset=None, data_path=None):
    """{"dataset", "train_accuracy", "test_accuracy"} of `model` on the dataset it was trained
    on (its info), or on `dataset`; data_path is --data (mnist's files)."""
    info = getattr(model, "info", {})
    name = dataset or info.get("dataset")
    if name is None:
        raise ValueError("the model file records no dataset (it was not written by gpugrad "
                         "train): pass --dataset")
    ds = data.load(name, path=data_path if data_path is not None else info.get("data"))
    features, classes = input_features(model), _output_size(model)
    if (features, classes) != (ds.num_features, ds.num_classes):
        raise ValueError(f"the model takes {features} features and scores {classes} classes, "
                         f"but {name} has {ds.num_features} features and {ds.num_classes} "
                         f"classes")
    predict = predictor(model)
    return {"dataset": name, "train_accuracy": accuracy(predict, ds.x_train, ds.y_train),
            "test_accuracy": accuracy(predict, ds.x_test, ds.y_test)}


def _output_size(model):
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linear[-1].out_features if linear else None


# ---- inputs ---------------------------------------------------------------------------------

def read_inputs(path, features):
    """The samples in the file at `path` as float64 (n, features): an .npy array, the array of
    an .npz (named "x", or its only one) or the numbers of a .csv (one sample per row; a first
    row that is not numbers is a header). One sample may be a 1-D array; images (n, h, w) are
    flattened."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"--input {path}: expected a {', '.join(FORMATS)} file")
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "--input: no such file", path)
    try:
        x = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv}[ext](path)
    except npz.READ_ERRORS as e:
        raise ValueError(f"--input {path}: {' '.join(str(e).split())}") from None
    return _samples(x, features, path)


def _read_npy(path):
    with open(path, "rb") as f:  # the header is checked against the file before allocating
        shape, fortran_order, dtype = npz._read_header(f, os.path.basename(path))
        count = math.prod(shape)
        stored = os.fstat(f.fileno()).st_size - f.tell()
        if count * dtype.itemsize != stored:
            raise ValueError(f"not a complete .npy file: its header says {dtype} of shape "
                             f"{shape} ({count * dtype.itemsize} bytes), the file holds "
                             f"{stored} bytes of data")
        array = np.empty(count, dtype)
        npz.read_into(f, array.view(np.uint8))
    return array.reshape(shape, order="F" if fortran_order else "C")


def _read_npz(path):
    with npz.open_archive(path) as zf:
        entries = npz.entries(zf)
        if "x" in entries:
            name = "x"
        elif len(entries) == 1:
            [name] = entries
        else:
            raise ValueError(f"holds arrays {sorted(entries)}: name the input array 'x' (or "
                             f"keep only one)")
        return npz.read_array(zf, entries[name])


def _read_csv(path):
    rows, first = [], True
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if not row or all(not cell.strip() for cell in row):
                continue
            try:
                rows.append([float(cell) for cell in row])
            except ValueError:
                if not first:
                    bad = next(c for c in row if not _is_number(c))
                    raise ValueError(f"line {line}: {bad!r} is not a number") from None
                continue  # a header line
            finally:
                first = False
            if len(rows[-1]) != len(rows[0]):
                raise ValueError(f"line {line} has {len(rows[-1])} values, the first row "
                                 f"{len(rows[0])}")
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1 if rows else 0)


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _samples(x, features, path):
    if x.dtype.kind not in "biuf":
        raise ValueError(f"--input {path}: holds {x.dtype} values, not numbers")
    if x.ndim == 1 and x.size == features:
        x = x.reshape(1, features)  # one sample
    elif x.ndim > 2 and math.prod(x.shape[1:]) == features:
        x = x.reshape(len(x), features)  # images
    if x.ndim != 2 or x.shape[1] != features:
        raise ValueError(f"--input {path}: an array of shape {x.shape} does not fit the model, "
                         f"which takes {features} features: expected (samples, {features})")
    if len(x) == 0:
        raise ValueError(f"--input {path}: holds no samples")
    x = x.astype(np.float64)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"--input {path}: sample {i} has a value that is not a finite number "
                         f"({x[i][~np.isfinite(x[i])][0]})")
    return x


def range_note(x, info):
    """A warning when the inputs lie far outside what the model was trained on (e.g. pixels
    0..255 given to a model trained on pixels scaled to 0..1), or None."""
    lo, hi = info.get("input_range") or (None, None)
    if lo is None:
        return None
    span = (hi - lo) or 1.0
    if x.min() < lo - span or x.max() > hi + span:
        return (f"note: the inputs span {x.min():g}..{x.max():g}, but the model was trained on "
                f"inputs in {lo:g}..{hi:g} ({info.get('dataset')} as gg.data.load gives them); "
                f"scale them the same way, or the predictions mean little")
    return None


# ---- outputs --------------------------------------------------------------------------------

def check_output(path):
    """Refuse an --out that cannot be written, before any work is done."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise ValueError(f"--out {path}: name a {', '.join(FORMATS)} file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "--out: the folder does not exist", folder)
    if os.path.isdir(path):
        raise ValueError(f"--out {path}: is a folder; name a file")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--out {path}: the folder is not writable")


def write_predictions(path, classes, probabilities=None):
    """.npy: the classes, or the probabilities (n, classes) when given; .npz: arrays "classes"
    and, when given, "probabilities"; .csv: what predictions_csv says."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".npz":
        arrays = {"classes": classes}
        if probabilities is not None:
            arrays["probabilities"] = probabilities
        save_arrays(arrays, path, "gpugrad predict")
    elif ext == ".npy":
        array = classes if probabilities is None else probabilities
        write_atomically(path, lambda f: np.lib.format.write_array(f, array, allow_pickle=False),
                         "gpugrad predict")
    else:
        text = predictions_csv(classes, probabilities).encode()
        write_atomically(path, lambda f: f.write(text), "gpugrad predict")


def predictions_csv(classes, probabilities=None):
    """A header line ("class", then "p0", "p1", ... with probabilities) and one row a sample."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if probabilities is None:
        writer.writerow(["class"])
        writer.writerows([c] for c in classes.tolist())
    else:
        writer.writerow(["class"] + [f"p{k}" for k in range(probabilities.shape[1])])
        writer.writerows([c] + [f"{p:.6g}" for p in row]
                         for c, row in zip(classes.tolist(), probabilities.tolist()))
    return out.getvalue()
