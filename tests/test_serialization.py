"""gg.save / gg.load: round trips, dtypes, exact paths, atomic writes, and bad inputs."""
import os
import pathlib
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import nn
from gpugrad.serialization import load, save


def model():
    gg.manual_seed(0)
    return nn.mlp([3, 4, 2])


def test_module_round_trip_into_a_fresh_model(tmp_path):
    src, dst = model(), nn.mlp([3, 4, 2])
    path = tmp_path / "model.npz"
    save(src, path)
    sd = load(path)
    assert isinstance(sd, OrderedDict) and list(sd) == ["0.weight", "0.bias", "2.weight",
                                                         "2.bias"]
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in sd.values())
    dst.load_state_dict(sd)
    x = gg.randn(5, 3)
    np.testing.assert_array_equal(dst(x).numpy(), src(x).numpy())


def test_state_dict_of_mixed_dtypes_and_awkward_names(tmp_path):
    state = {"w64": np.arange(6, dtype=np.float64).reshape(2, 3), "i": np.array([1, -2]),
             "flag": np.array([True, False]), "t": gg.tensor([1.5], dtype="float16"),
             "file": np.zeros(1), "allow_pickle": np.ones(1)}   # np.savez's own argument names
    path = str(tmp_path / "state.npz")
    save(state, path)
    loaded = load(path)
    assert list(loaded) == list(state)
    for k, v in state.items():
        v = v.numpy() if isinstance(v, gg.Tensor) else v
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
        np.testing.assert_array_equal(loaded[k], v)
    with np.load(path) as plain:                                  # an ordinary .npz
        np.testing.assert_array_equal(plain["w64"], state["w64"])


def test_file_lands_exactly_at_path(tmp_path):
    path = tmp_path / "checkpoint"                                # no .npz suffix
    save(model(), path)
    assert os.listdir(tmp_path) == ["checkpoint"]
    assert list(load(str(path))) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_new_file_permissions_follow_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    save(model(), tmp_path / "m.npz")
    assert os.stat(tmp_path / "m.npz").st_mode & 0o777 == 0o666 & ~umask


# -- atomicity: a failed save leaves the old checkpoint and no temp file --------------------------

def existing_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    save({"old": np.arange(3.0)}, path)
    return path, path.read_bytes()


def assert_old_checkpoint_intact(tmp_path, path, old_bytes):
    assert path.read_bytes() == old_bytes
    assert sorted(os.listdir(tmp_path)) == [path.name]           # the temp file was removed
    np.testing.assert_array_equal(load(path)["old"], np.arange(3.0))


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_midway_keeps_old_checkpoint(tmp_path, monkeypatch, error):
    path, old = existing_checkpoint(tmp_path)
    real_write = np.lib.format.write_array
    calls = []

    def write_then_fail(fp, array, **kw):
        calls.append(1)
        if len(calls) == 2:   # the first member is written in full, the second half-way
            fp.write(b"\x93NUMPY partial")
            raise error
        real_write(fp, array, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", write_then_fail)
    with pytest.raises(type(error)):
        save(model(), path)
    assert len(calls) == 2
    assert_old_checkpoint_intact(tmp_path, path, old)


def test_failed_rename_keeps_old_checkpoint(tmp_path, monkeypatch):
    path, old = existing_checkpoint(tmp_path)

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        save(model(), path)
    monkeypatch.undo()
    assert_old_checkpoint_intact(tmp_path, path, old)


def test_unwritable_directory(tmp_path):
    path, old = existing_checkpoint(tmp_path)
    os.chmod(tmp_path, 0o500)
    try:
        probe = tmp_path / "probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("permissions are not enforced for this user (root)")
        with pytest.raises(PermissionError):
            save(model(), path)
    finally:
        os.chmod(tmp_path, 0o700)
    assert_old_checkpoint_intact(tmp_path, path, old)


def test_path_that_is_a_directory_leaves_no_temp_file(tmp_path):
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(OSError):
        save(model(), tmp_path / "dir.npz")
    assert os.listdir(tmp_path) == ["dir.npz"] and os.listdir(tmp_path / "dir.npz") == []


# -- bad inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("obj, error, pattern", [
    ({"w": [1.0, 2.0]}, TypeError, "'w' is a list"),
    ({"w": 3.0}, TypeError, "'w' is a float"),
    ({"w": np.array([object()])}, TypeError, "'w' has dtype object"),
    ({1: np.zeros(1)}, TypeError, "keys must be non-empty strings, got 1"),
    ([np.zeros(1)], TypeError, "expected a gg.nn.Module or a state dict"),
])
def test_save_rejects_bad_values_and_writes_nothing(tmp_path, obj, error, pattern):
    with pytest.raises(error, match=pattern):
        save(obj, tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        save(model(), tmp_path / "missing" / "m.npz")


def test_load_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load(pathlib.Path(tmp_path / "nothing.npz"))


def corrupt_files(tmp_path):
    good = tmp_path / "good.npz"
    save(model(), good)
    data = good.read_bytes()
    yield "garbage", b"this is not a checkpoint at all"
    yield "truncated", data[: len(data) // 2]
    flipped = bytearray(data)
    flipped[200] ^= 0xFF                                          # inside the first array
    yield "bad_crc", bytes(flipped)
    yield "empty", b""


@pytest.mark.parametrize("kind", ["garbage", "truncated", "bad_crc", "empty"])
def test_load_corrupt_file_is_a_value_error_naming_the_path(tmp_path, kind):
    content = dict(corrupt_files(tmp_path))[kind]
    path = tmp_path / f"{kind}.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{kind}.npz"):
        load(path)


def test_load_refuses_single_arrays_and_pickles(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load(tmp_path / "one.npy")
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as zf:
        with zf.open("w.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"code": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npz"):
        load(tmp_path / "obj.npz")
