"""Model files: a model's architecture, parameters, buffers and info in one .npz file.

The file is a gg.save checkpoint (one array per state-dict name; see serialization.py) plus one
entry, MODEL_KEY, holding UTF-8 JSON:

    {"format": "gpugrad.model", "format_version": 1, "gpugrad_version": "0.1.0",
     "architecture": {"type": "Sequential", "layers": [
         {"type": "Standardize", "num_features": 64, "dtype": "float32"},
         {"type": "Linear", "in_features": 64, "out_features": 256, "bias": true,
          "init": "he", "dtype": "float32"},
         {"type": "ReLU"}, ...]},
     "info": {"dataset": "digits", "num_classes": 10, ...}}

load_model reads the architecture against a fixed table of layer types (no pickle, nothing
imported by name, no code from the file runs), checks every array's name, shape and dtype against
what the architecture implies before building anything, builds the layers with zero parameters
(no draw from gpugrad's generator) and loads the arrays into them.
"""
import json
from collections import OrderedDict

import numpy as np

from . import backend as _backend
from . import nn
from .module import Module
from .serialization import MODEL_KEY, load_arrays, save_arrays

__all__ = ["save_model", "load_model", "FORMAT", "FORMAT_VERSION"]

FORMAT, FORMAT_VERSION = "gpugrad.model", 1
MAX_DEPTH = 64  # nested Sequentials; a deeper description is refused, not recursed into
DTYPES = ("float16", "float32", "float64")
# layer type -> the fields its description holds (besides "type")
FIELDS = {"Sequential": ("layers",),
          "Linear": ("in_features", "out_features", "bias", "init", "dtype"),
          "Standardize": ("num_features", "dtype"),
          "ReLU": (), "Sigmoid": (), "Tanh": ()}
ACTIVATIONS = {"ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh}


class _Bad(ValueError):
    """A model file's description is unusable; the caller adds the file's name."""


def save_model(model, path, info=None):
    """See gg.nn.save_model. Everything is checked before the file is written."""
    who = "gg.nn.save_model"
    if not isinstance(model, Module):
        raise TypeError(f"{who}: expected a gg.nn.Module, got {type(model).__name__}")
    info = {} if info is None else info
    if not isinstance(info, dict):
        raise TypeError(f"{who}: info must be a dict of JSON values, got {type(info).__name__}")
    architecture = describe(model)
    expected = OrderedDict()
    _plan(architecture, "", expected, 0, "model")
    arrays = OrderedDict((name, t.numpy()) for name, t in model.state_dict().items())
    if list(arrays) != list(expected):  # extra parameters, or weights shared between layers
        raise TypeError(f"{who}: cannot describe the model: its state {list(arrays)} is not "
                        f"what its layers hold ({list(expected)}); save its weights with gg.save "
                        f"instead")
    from . import __version__
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "gpugrad_version": __version__,
            "architecture": architecture, "info": info}
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{who}: info must hold only JSON values (strings, finite numbers, "
                         f"booleans, None, lists, dicts): {e}") from None
    arrays[MODEL_KEY] = np.frombuffer(text.encode("utf-8"), np.uint8)
    save_arrays(arrays, path, who)


def load_model(path, device=None):
    """See gg.nn.load_model."""
    who = "gg.nn.load_model"
    bk = _backend.get_backend(device)  # DeviceError before the file is read
    state = load_arrays(path, who)
    try:
        if MODEL_KEY not in state:
            raise _Bad("holds weights only (no architecture: a state dict written by gg.save, or "
                       "a model.npz of an older gpugrad train); rebuild the model in code and "
                       "call model.load_state_dict(gg.load(path))")
        meta = _metadata(state.pop(MODEL_KEY))
        expected = OrderedDict()
        build = _plan(meta["architecture"], "", expected, 0, "model")
        _check_arrays(state, expected)
    except _Bad as e:
        raise ValueError(f"{who}: {str(path)!r} {e}") from None
    model = build(bk.name)
    model.load_state_dict(state)  # cannot fail: names, shapes and dtypes were checked
    model.info = {**meta["info"], "gpugrad_version": meta["gpugrad_version"]}
    return model


def describe(module, where="model"):
    """The JSON-able description of `module`'s architecture (TypeError for unknown layers)."""
    kind = type(module)
    if kind is nn.Sequential:
        return {"type": "Sequential",
                "layers": [describe(c, f"{where}[{i}]") for i, c in enumerate(module)]}
    if kind is nn.Linear:
        return {"type": "Linear", "in_features": module.in_features,
                "out_features": module.out_features, "bias": module.bias is not None,
                "init": module.init, "dtype": str(module.weight.dtype)}
    if kind is nn.Standardize:
        return {"type": "Standardize", "num_features": module.num_features,
                "dtype": str(module.mean.dtype)}
    if kind in ACTIVATIONS.values():
        return {"type": kind.__name__}
    raise TypeError(f"gg.nn.save_model: cannot describe {where}, a {kind.__qualname__}: a model "
                    f"file holds only gg.nn's {', '.join(FIELDS)} layers (not subclasses); save "
                    f"its weights with gg.save instead")


def _metadata(raw):
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _Bad(f"has a {MODEL_KEY!r} entry of {raw.dtype} {raw.shape}, not UTF-8 bytes")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _Bad(f"is damaged: its metadata is not valid JSON ({e})") from None
    except RecursionError:
        raise _Bad("has metadata nested too deeply to read") from None
    if not isinstance(meta, dict):
        raise _Bad("is damaged: its metadata must be a JSON object")
    if meta.get("format") != FORMAT:
        raise _Bad(f"is not a gpugrad model file (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise _Bad(f"has model format version {version} (a newer gpugrad's?); this gpugrad reads "
                   f"{FORMAT_VERSION}: upgrade gpugrad")
    if not isinstance(meta.get("info", {}), dict):
        raise _Bad("is damaged: 'info' must be a JSON object")
    if "architecture" not in meta:
        raise _Bad("is damaged: its metadata has no 'architecture'")
    return {"architecture": meta["architecture"], "info": meta.get("info", {}),
            "gpugrad_version": str(meta.get("gpugrad_version", "unknown"))}


def _plan(spec, prefix, expected, depth, where):
    """Check one layer's description, record the arrays it holds in `expected` (name ->
    (shape, dtype)) and return a function that builds the layer on a device."""
    if depth > MAX_DEPTH:
        raise _Bad(f"has an architecture nested too deeply (over {MAX_DEPTH} levels)")
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise _Bad(f"architecture: {where} must be a JSON object with a string 'type'")
    kind = spec["type"]
    if kind not in FIELDS:
        raise _Bad(f"architecture: {where} has unknown layer type {kind!r} (known: "
                   f"{', '.join(FIELDS)})")
    here = f"architecture: {where}: {kind}"
    for field in FIELDS[kind]:
        if field not in spec:
            raise _Bad(f"{here}: missing {field!r}")
    for field in spec:
        if field != "type" and field not in FIELDS[kind]:
            raise _Bad(f"{here}: unexpected {field!r}")
    if kind == "Sequential":
        if not isinstance(spec["layers"], list):
            raise _Bad(f"{here}: 'layers' must be a list")
        builders = [_plan(layer, f"{prefix}{i}.", expected, depth + 1, f"{where}[{i}]")
                    for i, layer in enumerate(spec["layers"])]
        return lambda device: nn.Sequential(*(b(device) for b in builders))
    if kind in ACTIVATIONS:
        return lambda device: ACTIVATIONS[kind]()
    dtype = spec["dtype"]
    if dtype not in DTYPES:
        raise _Bad(f"{here}: dtype must be one of {DTYPES}, got {dtype!r}")
    if kind == "Standardize":
        n = _positive_int(spec, "num_features", here)
        expected[prefix + "mean"] = expected[prefix + "std"] = ((n,), dtype)
        return lambda device: nn.Standardize(np.zeros(n), np.ones(n), dtype=dtype, device=device)
    n_in, n_out = (_positive_int(spec, f, here) for f in ("in_features", "out_features"))
    bias, init = spec["bias"], spec["init"]
    if not isinstance(bias, bool):
        raise _Bad(f"{here}: bias must be true or false, got {bias!r}")
    if init not in nn.Linear.INITS:
        raise _Bad(f"{here}: init must be one of {nn.Linear.INITS}, got {init!r}")
    expected[prefix + "weight"] = ((n_in, n_out), dtype)
    if bias:
        expected[prefix + "bias"] = ((n_out,), dtype)
    return lambda device: nn.Linear._to_load(n_in, n_out, bias, init, dtype, device)


def _positive_int(spec, field, here):
    value = spec[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Bad(f"{here}: {field} must be a positive int, got {value!r}")
    return value


def _check_arrays(state, expected):
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise _Bad("does not match its architecture: "
                   + "; ".join(part for part in (
                       f"missing arrays {missing}" if missing else "",
                       f"unexpected arrays {unexpected}" if unexpected else "") if part))
    for name, (shape, dtype) in expected.items():
        arr = state[name]
        if arr.shape != shape:
            raise _Bad(f"does not match its architecture: {name!r} has shape {arr.shape}, "
                       f"expected shape {shape}")
        if arr.dtype != np.dtype(dtype):
            raise _Bad(f"does not match its architecture: {name!r} has dtype {arr.dtype}, "
                       f"expected {dtype}")
