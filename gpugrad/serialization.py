"""gg.save / gg.load: checkpoints as .npz files of host NumPy arrays, written atomically.

The file is an ordinary NumPy .npz (np.load reads it), one array per parameter name, each with its
own dtype. It is written to a temporary file beside `path`, flushed and fsynced, and only then
renamed over `path` (os.replace is atomic on POSIX and Windows), so a crash or a full disk midway
leaves the previous checkpoint intact and no half-written file behind.
"""
import contextlib
import errno
import os
import secrets
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from . import backend as _backend
from .nn import Module
from .tensor import Tensor

__all__ = ["save", "load"]


def save(obj, path):
    """Write a Module's parameters (or a state dict of Tensors / NumPy / CuPy arrays) to `path`.

    The file lands exactly at `path` (no ".npz" appended). Non-array values and keys that are
    not strings raise TypeError before anything is written."""
    state = obj.state_dict() if isinstance(obj, Module) else obj
    if not isinstance(state, Mapping):
        raise TypeError(f"gg.save: expected a gg.nn.Module or a state dict (name -> Tensor or "
                        f"array), got {type(obj).__name__}")
    arrays = OrderedDict((_key(k), _host_array(k, v)) for k, v in state.items())
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "gg.save: directory does not exist", directory)
    _write_atomically(path, directory, arrays)


def load(path):
    """Read a checkpoint written by gg.save: an ordered dict name -> numpy.ndarray.

    A missing file raises FileNotFoundError, a file that is not a valid .npz ValueError, both
    naming the path. Pickled (object) arrays are refused: loading never runs code."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "gg.load: no checkpoint file", path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # BadZipFile, ValueError (pickle / bad header), EOFError, ...
        raise ValueError(f"gg.load: {path!r} is not a valid .npz checkpoint ({e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a lone .npy array
        raise ValueError(f"gg.load: {path!r} holds a single array, not a .npz checkpoint of "
                         f"named arrays")
    try:
        with archive:
            return OrderedDict((name, archive[name]) for name in archive.files)
    except Exception as e:  # a member with a bad CRC or a truncated array
        raise ValueError(f"gg.load: {path!r} is corrupt ({e})") from e


def _key(name):
    if not isinstance(name, str) or not name:
        raise TypeError(f"gg.save: state dict keys must be non-empty strings, got {name!r}")
    return name


def _host_array(name, value):
    """`value` as a host numpy array of a plain numeric dtype (no pickled objects)."""
    if isinstance(value, Tensor):
        arr = value.numpy()
    else:
        src = _backend.backend_for_array(value)
        if src is None:
            raise TypeError(f"gg.save: {name!r} is a {type(value).__name__}; values must be "
                            f"Tensors or NumPy/CuPy arrays")
        arr = src.to_numpy(value)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"gg.save: {name!r} has dtype {arr.dtype}; only numeric arrays are saved")
    return arr


def _write_atomically(path, directory, arrays):
    # the temp file is in the target's directory so os.replace is a rename on one filesystem;
    # os.open with mode 0o666 lets the umask set the final permissions, as a plain open would
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temp file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _write_npz(f, arrays):
    """What np.savez writes (a zip of name.npy members), without its keyword-argument API, where
    a parameter called "file" or "allow_pickle" would collide with savez's own arguments."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _fsync_directory(directory):
    """Persist the rename itself (POSIX); where directories cannot be opened, skip."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
