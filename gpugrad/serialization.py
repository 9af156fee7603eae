"""gg.save / gg.load: checkpoints as .npz files of host NumPy arrays, written atomically.

The file is an ordinary NumPy .npz (np.load reads it), one array per parameter name, each with its
own dtype. It is written to a temporary file beside the file `path` names (through a symlink: the
file the link points to), locked, flushed and fsynced, and only then renamed over it (os.replace is
atomic), so a crash, a kill or a full disk midway leaves the previous checkpoint intact. A save
killed before it could remove its temporary file leaves it behind; the next save into that folder
removes it (POSIX: a temporary file is stale once no save holds its lock).

Keys that the archive would store under another name, or that np.load would read back as another
key's array, are refused. gg.load reads through npz.py, which checks every size an archive
declares before allocating, and refuses an archive whose directory has lost entries.

A model file (save_model / load_model, model_io.py) is such a checkpoint with one more entry,
MODEL_KEY: the architecture and info as UTF-8 JSON in a uint8 array. gg.load leaves it out, so
`model.load_state_dict(gg.load(path))` works on model files too. write_atomically is the same
atomic write for any other file (the CLI's outputs).
"""
import contextlib
import errno
import os
import re
import secrets
import time
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from . import backend as _backend
from . import npz
from .nn import Module
from .tensor import Tensor

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no cleanup of other saves' files either
    fcntl = None

__all__ = ["save", "load", "save_arrays", "load_arrays", "write_atomically", "MODEL_KEY"]

# the entry of a model file that describes it (model_io.py); no state dict may use the name
MODEL_KEY = "__gpugrad_model__"

# .<file name>.gpugrad-<12 hex digits>.tmp: what _write_atomically names its temporary files
_TEMP_NAME = re.compile(r"\..+\.gpugrad-[0-9a-f]{12}\.tmp")
# a save creates its temporary file an instant before locking it: an empty one younger than
# this may be that save's
_EMPTY_GRACE_S = 60


def save(obj, path):
    """Write a Module's parameters (or a state dict of Tensors / NumPy / CuPy arrays) to `path`.

    The file lands exactly at `path` (no ".npz" appended), or at the file a symlink there points
    to. Non-array values and keys that are not strings raise TypeError, keys the archive would
    merge or rewrite ValueError, before anything is written."""
    state = obj.state_dict() if isinstance(obj, Module) else obj
    if not isinstance(state, Mapping):
        raise TypeError(f"gg.save: expected a gg.nn.Module or a state dict (name -> Tensor or "
                        f"array), got {type(obj).__name__}")
    arrays = OrderedDict((_key(k), _host_array(k, v)) for k, v in state.items())
    if MODEL_KEY in arrays:
        raise ValueError(f"gg.save: key {MODEL_KEY!r} is reserved for the model description "
                         f"that gg.nn.save_model writes")
    save_arrays(arrays, path)


def save_arrays(arrays, path, who="gg.save"):
    """Write host arrays (name -> numpy.ndarray, checked by the caller) as an .npz, atomically."""
    _check_entry_names(arrays)
    write_atomically(path, lambda f: _write_npz(f, arrays), who)


def write_atomically(path, write, who="gpugrad"):
    """Call write(f) on a temporary binary file beside `path` (through symlinks: their target),
    flush it to disk, then rename it over `path`: readers see the old file or the new one, never
    half of one, and a failure leaves the old one (and no temporary file)."""
    path = _resolve(os.fspath(path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"{who}: directory does not exist", directory)
    _remove_stale_temps(directory)
    _write_atomically(path, directory, write)


def load(path):
    """Read a checkpoint written by gg.save: an ordered dict name -> numpy.ndarray.

    A missing file raises FileNotFoundError, a file that is not a valid .npz ValueError, both
    naming the path. Pickled (object) arrays are refused: loading never runs code. Each entry
    is read under its own name (np.load would read entry "a.npy" for both "a" and "a.npy").
    A model file's description (MODEL_KEY) is not part of the state dict and is left out."""
    state = load_arrays(path)
    state.pop(MODEL_KEY, None)
    return state


def load_arrays(path, who="gg.load"):
    """Every array of the .npz at `path`, MODEL_KEY included, checked as load() says."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"{who}: no checkpoint file", path)
    with open(path, "rb") as f:  # PermissionError and IsADirectoryError pass as they are
        if f.read(6) == b"\x93NUMPY":
            raise ValueError(f"{who}: {path!r} holds a single array, not a .npz checkpoint of "
                             f"named arrays")
        f.seek(0)
        try:
            with npz.open_archive(f) as archive:
                return OrderedDict((name, npz.read_array(archive, info))
                                   for name, info in npz.entries(archive).items())
        except npz.READ_ERRORS as e:
            raise ValueError(f"{who}: {path!r} is not a valid .npz checkpoint ({e})") from e


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


def _check_entry_names(names):
    """Each key is stored as entry key + ".npy"; refuse keys that would not come back as given."""
    for name in names:
        entry = name + ".npy"
        try:
            entry.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"gg.save: key {name!r} cannot be written as UTF-8, as zip entry "
                             "names are") from None
        stored = zipfile.ZipInfo(entry).filename  # zipfile cuts at NUL, turns os.sep into /
        if stored != entry:
            raise ValueError(f"gg.save: key {name!r} would be stored in the archive as "
                             f"{stored!r}")
        if name.endswith(".npy") and name[:-4] in names:  # np.load looks up entry `name` first
            raise ValueError(f"gg.save: keys {name[:-4]!r} and {name!r} would collide: np.load "
                             f"reads entry {name!r}, the array of {name[:-4]!r}, for both")


def _resolve(path):
    """The file that saving to `path` writes: symlinks (at any depth) followed to the end."""
    real = os.path.realpath(path)
    if os.path.islink(real):  # realpath gives up on a loop and returns the link itself
        raise OSError(errno.ELOOP, "gg.save: too many levels of symbolic links", path)
    return real


def _remove_stale_temps(directory):
    """Remove the temporary files that killed saves left in `directory`: only regular files named
    as _write_atomically names them, whose lock no save holds; an empty one only once it is
    older than _EMPTY_GRACE_S. Best effort: a file that cannot be checked stays."""
    if fcntl is None:
        return
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    _remove_if_stale(entry.path)


def _remove_if_stale(tmp):
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError while a save holds it
        st = os.fstat(fd)
        if st.st_size > 0 or time.time() - st.st_mtime > _EMPTY_GRACE_S:
            os.unlink(tmp)
    finally:
        os.close(fd)


def _write_atomically(path, directory, write):
    # the temp file is in the target's directory so os.replace is a rename on one filesystem;
    # os.open with mode 0o666 lets the umask set the final permissions, as a plain open would
    tmp = os.path.join(directory, f".{os.path.basename(path)}.gpugrad-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:  # held until the rename: other saves' cleanup leaves it alone
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
            if fcntl is not None:
                os.replace(tmp, path)  # still locked: POSIX renames an open file
        if fcntl is None:
            os.replace(tmp, path)  # Windows renames only a closed one
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
