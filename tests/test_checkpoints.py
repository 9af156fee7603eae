"""Checkpoints that cannot go quietly wrong: temp files of killed saves are cleaned up by the next
save (and only they), saving through a symlink writes its target, keys that the archive would
merge or rewrite are refused, and an archive that has lost entries raises instead of loading
fewer arrays."""
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.serialization import load, save
from test_loaders_bounded import bounded, npy_bytes, npy_header, zip_archive

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and symlinks")

# A child process that saves {"big": 200k float64, "small": 7 ones} to argv[2] and, when it reaches
# "small", either SIGKILLs itself (argv[1] == "kill") or says "writing" and waits for a line on
# stdin before going on ("pause"). By then "big" (1.6 MB) has reached the temp file.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import gpugrad as gg
    real_write = np.lib.format.write_array

    def write(fp, array, **kw):
        if array.size == 7:
            if sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            print("writing", flush=True)
            sys.stdin.readline()
        real_write(fp, array, **kw)

    np.lib.format.write_array = write
    gg.save({"big": np.arange(200_000.0), "small": np.ones(7)}, sys.argv[2])
""")


def child(mode, path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(path)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def existing_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    save({"old": np.arange(3.0)}, path)
    return path, path.read_bytes()


# ---- temp files of killed saves --------------------------------------------------------------

def test_killed_saves_leave_temp_files_that_the_next_save_removes(tmp_path):
    path, old = existing_checkpoint(tmp_path)
    (tmp_path / "real.txt").write_text("a symlink's target")
    (tmp_path / ".d.gpugrad-0123456789ab.tmp").mkdir()  # a folder, whatever its name
    not_ours = ["notes.txt", ".ckpt.npz.tmp", "ckpt.npz.gpugrad-0123456789ab.tmp",
                ".ckpt.npz.gpugrad-0123456789ab.tmp.part", ".ckpt.npz.gpugrad-0123.tmp"]
    for name in not_ours:
        (tmp_path / name).write_bytes(b"PK\x03\x04 not gpugrad's")
    (tmp_path / ".l.gpugrad-0123456789ab.tmp").symlink_to(tmp_path / "real.txt")
    before, seen = set(os.listdir(tmp_path)), set()
    for _ in range(2):  # each killed save first removes the one the previous left
        with child("kill", path) as p:
            assert p.wait(timeout=60) == -signal.SIGKILL
        (left,) = set(os.listdir(tmp_path)) - before
        assert left.startswith(".ckpt.npz.") and left not in seen
        assert (tmp_path / left).stat().st_size > 10**6          # "big" reached the disk
        seen.add(left)
    assert path.read_bytes() == old                               # killed saves changed nothing

    save({"w": np.zeros(2)}, tmp_path / "other.npz")              # the next save into the folder
    assert set(os.listdir(tmp_path)) == before | {"other.npz"}
    assert (tmp_path / "real.txt").read_text() == "a symlink's target"
    assert path.read_bytes() == old


def test_temp_file_of_a_save_in_progress_is_left_alone(tmp_path):
    """Another process is half-way through a save into the same folder: it holds a lock on its
    temp file, so this save leaves it be, and that save completes."""
    path = tmp_path / "theirs.npz"
    with child("pause", path) as p:
        try:
            assert p.stdout.readline() == "writing\n"
            (theirs,) = [n for n in os.listdir(tmp_path) if n.startswith(".theirs.npz.")]
            save({"w": np.zeros(2)}, tmp_path / "mine.npz")
            assert (tmp_path / theirs).exists()
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.wait(timeout=60) == 0
        finally:
            p.kill()
    assert sorted(os.listdir(tmp_path)) == ["mine.npz", "theirs.npz"]
    np.testing.assert_array_equal(load(path)["big"], np.arange(200_000.0))


def test_an_empty_temp_file_is_removed_only_once_it_is_old(tmp_path):
    """An empty one may be a save that has just created it and not yet locked it."""
    empty = tmp_path / ".x.npz.gpugrad-0123456789ab.tmp"
    empty.touch()
    save({"w": np.zeros(2)}, tmp_path / "a.npz")
    assert empty.exists()
    an_hour_ago = time.time() - 3600
    os.utime(empty, (an_hour_ago, an_hour_ago))
    save({"w": np.zeros(2)}, tmp_path / "a.npz")
    assert not empty.exists()


# ---- symlinks ---------------------------------------------------------------------------------

def test_saving_through_a_symlink_writes_the_file_it_points_to(tmp_path):
    (tmp_path / "store").mkdir()
    target, link = tmp_path / "store" / "model.npz", tmp_path / "model.npz"
    save({"v": np.zeros(2)}, target)
    link.symlink_to(os.path.join("store", "model.npz"))           # a relative link
    save({"v": np.ones(2)}, link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("store", "model.npz")
    np.testing.assert_array_equal(load(target)["v"], np.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["model.npz", "store"]  # no temp file beside the link
    dangling = tmp_path / "new.npz"
    dangling.symlink_to(tmp_path / "store" / "new.npz")
    save({"v": np.full(2, 3.0)}, dangling)
    assert dangling.is_symlink()
    np.testing.assert_array_equal(load(tmp_path / "store" / "new.npz")["v"], np.full(2, 3.0))


def test_a_symlink_loop_is_refused_and_left_alone(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(OSError, match="a.npz"):
        save({"v": np.zeros(2)}, a)
    assert a.is_symlink() and b.is_symlink()


# ---- keys the archive would merge or rewrite ----------------------------------------------------

@pytest.mark.parametrize("keys, message", [
    (["a", "a.npy"], "keys 'a' and 'a.npy' would collide"),
    (["w.npy", "b", "w"], "keys 'w' and 'w.npy' would collide"),
    (["w.npy", "w.npy.npy"], "keys 'w.npy' and 'w.npy.npy' would collide"),
    (["a\0b"], r"key 'a\\x00b' would be stored in the archive as 'a'"),
    (["\ud800"], r"key '\\ud800' cannot be written as UTF-8"),
])
def test_keys_the_archive_would_merge_or_rewrite_are_refused(tmp_path, keys, message):
    path, old = existing_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=message) as e:
        save({k: np.zeros(1) for k in keys}, path)
    assert "\n" not in str(e.value)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["ckpt.npz"]


def test_keys_ending_in_npy_that_do_not_collide_round_trip(tmp_path):
    save({"w.npy": np.ones(2), "b.npy.npy": np.zeros(3)}, tmp_path / "m.npz")
    for loaded in (load(tmp_path / "m.npz"), np.load(tmp_path / "m.npz")):
        assert loaded["w.npy"].shape == (2,) and loaded["b.npy.npy"].shape == (3,)


# ---- damaged archives ---------------------------------------------------------------------------

def directory_entries(data):
    """(offset, length) of each entry of a zip archive's central directory."""
    start = zipfile.ZipFile(io.BytesIO(data)).start_dir
    end, found = data.rindex(b"PK\x05\x06"), []
    while start < end:
        n, e, c = np.frombuffer(data[start + 28:start + 34], "<u2")
        found.append((start, 46 + int(n) + int(e) + int(c)))
        start += found[-1][1]
    return found


@pytest.mark.parametrize("entry", [0, 1, 2])
def test_archive_whose_directory_lost_entries_raises(tmp_path, entry):
    """A damaged comment-length field makes the directory entry swallow the ones after it:
    np.load then reads fewer arrays and says nothing."""
    gg.manual_seed(0)
    path = tmp_path / "model.npz"
    save(gg.nn.mlp([3, 4, 2]), path)
    data = bytearray(path.read_bytes())
    cd = directory_entries(bytes(data))
    start, length = cd[entry]
    swallowed = sum(n for _, n in cd[entry + 1:])
    data[start + 32:start + 34] = swallowed.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with np.load(path) as z:
        assert len(z.files) == entry + 1                          # what np.load makes of it
    with pytest.raises(ValueError, match="model.npz.*lost at least one entry"):
        load(path)


def test_entry_declaring_1e12_elements_is_refused_before_allocating(tmp_path):
    payload = npy_header((10**12,), "<f4") + bytes(64)
    path = tmp_path / "huge.npz"
    path.write_bytes(zip_archive([("w.npy", payload, zipfile.ZIP_STORED, zlib.crc32(payload),
                                   len(payload))]))
    with bounded(limit=2 * 2**20):
        with pytest.raises(ValueError, match=r"huge\.npz.*'w\.npy'.*\(1000000000000,\)"):
            load(path)


def stored(name, array):
    raw = npy_bytes(array)
    return (name, raw, zipfile.ZIP_STORED, zlib.crc32(raw), len(raw))


def test_entries_are_read_by_their_own_names(tmp_path):
    """Entries 'a.npy' and 'a.npy.npy' are arrays 'a' and 'a.npy' (np.load reads 'a.npy' for
    both); entries 'a' and 'a.npy' would both be array 'a' and are refused."""
    path = tmp_path / "two.npz"
    path.write_bytes(zip_archive([stored("a.npy", np.zeros(1)), stored("a.npy.npy", np.ones(2))]))
    loaded = load(path)
    assert list(loaded) == ["a", "a.npy"] and loaded["a.npy"].shape == (2,)
    path.write_bytes(zip_archive([stored("a", np.zeros(1)), stored("a.npy", np.ones(2))]))
    with pytest.raises(ValueError, match="entries 'a' and 'a.npy' both hold array 'a'"):
        load(path)


def test_compressed_archives_load_and_unbounded_compression_is_refused(tmp_path):
    state = {"w": np.arange(1000.0).reshape(10, 100), "b": np.zeros(3, np.float32)}
    np.savez_compressed(tmp_path / "deflated.npz", **state)
    loaded = load(tmp_path / "deflated.npz")
    assert list(loaded) == ["w", "b"] and np.array_equal(loaded["w"], state["w"])
    with zipfile.ZipFile(tmp_path / "bz2.npz", "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("w.npy", npy_bytes(state["w"]))
    with pytest.raises(ValueError, match=r"bz2\.npz.*'w\.npy' uses compression method 12"):
        load(tmp_path / "bz2.npz")
