"""Loaders that cannot be made to eat the machine: every size a file declares is checked against
what the file can hold before anything is allocated, and compressed data is inflated in bounded
chunks, so a gzip bomb or a header declaring 10^12 elements is a quick one-line DataError.

The bombs are built in milliseconds from one deflate block repeated (see deflate_zeros). Each load
runs under `bounded`, which measures its time and peak Python/NumPy memory (tracemalloc) and, on
Linux, caps the address space for its duration, so a loader that regresses fails the test with a
MemoryError instead of swapping the machine.
"""
import contextlib
import io
import resource
import struct
import sys
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from gpugrad import data
from gpugrad.cli import main
from gpugrad.data import DataError
from test_data import IDX, fake_mnist, write_idx

MiB = 1 << 20
BOMB_MIB = 8192  # what the gzip bombs expand to: 8 GiB


def deflate_zeros(prefix, mib, wbits):
    """A deflate stream (wbits 31: gzip, -15: raw) of `prefix` and then `mib` MiB of zeros.

    After a full flush the compressor starts afresh, so one MiB of zeros compresses to the same
    ~1 KB block every time: the stream is that block repeated. The gzip trailer's CRC and size
    are those of the bytes actually compressed (a loader must stop long before it gets there)."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * mib + c.flush()


def idx_header(*dims, ndim=3):
    return struct.pack(f">{1 + len(dims)}I", 0x800 | ndim, *dims)


@contextlib.contextmanager
def bounded(limit=64 * MiB):
    """Measure the block's seconds and peak traced memory into the yielded dict; on Linux, cap
    the address space at its present size + 1 GiB meanwhile."""
    stats = {}
    cap = _address_space_cap(1024 * MiB)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield stats
    finally:
        stats["seconds"] = time.perf_counter() - start
        stats["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        cap.close()
    assert stats["peak"] < limit, f"peak {stats['peak'] / MiB:.1f} MiB"
    assert stats["seconds"] < 1.0, f"{stats['seconds']:.2f} s"


def _address_space_cap(extra):
    stack = contextlib.ExitStack()
    if sys.platform != "linux":
        return stack
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    old = resource.getrlimit(resource.RLIMIT_AS)
    if old[1] != resource.RLIM_INFINITY and vm + extra > old[1]:
        return stack
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, old[1]))
    stack.callback(resource.setrlimit, resource.RLIMIT_AS, old)
    return stack


def mnist_dir_with(tmp_path, key, raw, gz):
    """A directory of good small MNIST files but for `key`, whose file holds `raw` (written as is:
    for gz, `raw` is already the compressed stream)."""
    write_idx(tmp_path, fake_mnist(), gz=gz)
    path = tmp_path / (IDX[key] + (".gz" if gz else ""))
    path.write_bytes(raw)
    return path


def load_error(path):
    with pytest.raises(DataError) as e:
        data.load("mnist", path=path)
    message = str(e.value)
    assert "\n" not in message
    return message


# ---- IDX ------------------------------------------------------------------------------------

def test_gzip_bomb_behind_a_plausible_header_stops_at_the_declared_size(tmp_path):
    """1000 images declared (784 KB), 8 GiB inside: inflate the 784 KB and one byte more, stop."""
    bomb = mnist_dir_with(tmp_path, "x_train",
                          deflate_zeros(idx_header(1000, 28, 28), BOMB_MIB, 31), gz=True)
    assert bomb.stat().st_size < 9 * MiB
    with bounded(limit=8 * MiB) as stats:
        message = load_error(tmp_path)
    assert str(bomb) in message and "1000 x 28 x 28 images (784016 bytes)" in message
    assert "decompresses to more than that" in message
    print(f"gzip bomb ({bomb.stat().st_size / MiB:.1f} MB -> 8 GiB) behind a 1000-image header: "
          f"rejected in {stats['seconds'] * 1e3:.1f} ms, peak {stats['peak'] / MiB:.2f} MiB")


def test_gzip_bomb_whose_header_declares_all_of_it_is_refused_from_the_header(tmp_path):
    """The header tells the truth (10,956,549 images = 8 GiB): over MAX_DATA_BYTES, refused
    before a byte of data is inflated."""
    n = BOMB_MIB * MiB // 784
    bomb = mnist_dir_with(tmp_path, "x_train",
                          deflate_zeros(idx_header(n, 28, 28), BOMB_MIB, 31), gz=True)
    with bounded(limit=2 * MiB) as stats:
        message = load_error(tmp_path)
    assert str(bomb) in message and f"{n} x 28 x 28 images" in message
    assert "gpugrad.data.MAX_DATA_BYTES" in message
    print(f"truthful 8 GiB bomb: rejected in {stats['seconds'] * 1e3:.1f} ms, "
          f"peak {stats['peak'] / MiB:.2f} MiB")


@pytest.mark.parametrize("gz", [False, True])
def test_header_declaring_1e12_elements_is_refused_before_reading(tmp_path, gz):
    header = idx_header(10_000, 10_000, 10_000)  # 10^12 bytes of images
    raw = deflate_zeros(header, BOMB_MIB, 31) if gz else header + bytes(1000)
    path = mnist_dir_with(tmp_path, "x_train", raw, gz=gz)
    with bounded(limit=2 * MiB):
        message = load_error(tmp_path)
    assert str(path) in message and "10000 x 10000 x 10000 images (1000000000016 bytes)" in message


def test_plain_file_larger_than_its_header_says_is_refused_from_its_size(tmp_path):
    """An 8 GiB (sparse) file whose header declares 10 images: its size is known without reading
    it, and it is not read."""
    path = mnist_dir_with(tmp_path, "x_train", idx_header(10, 28, 28), gz=False)
    with open(path, "r+b") as f:
        f.truncate(BOMB_MIB * MiB)
    with bounded(limit=2 * MiB):
        message = load_error(tmp_path)
    assert str(path) in message and f"the file has {BOMB_MIB * MiB} bytes" in message


def test_gzip_that_cannot_hold_what_its_header_declares_is_refused_before_inflating(
        tmp_path, monkeypatch):
    """With the size limit raised out of the way, 4 GB declared by a 1 KB gzip is still refused:
    deflate expands at most 1032:1."""
    monkeypatch.setattr(data, "MAX_DATA_BYTES", 1 << 50)
    raw = deflate_zeros(idx_header(5_000_000, 28, 28), 1, 31)
    path = mnist_dir_with(tmp_path, "x_train", raw, gz=True)
    with bounded(limit=2 * MiB):
        message = load_error(tmp_path)
    assert str(path) in message and f"a gzip file of {len(raw)} bytes" in message


def test_gzip_shorter_than_its_header_says_is_truncated(tmp_path):
    path = mnist_dir_with(tmp_path, "x_train",
                          zlib.compress(idx_header(12, 28, 28) + bytes(1000), wbits=31), gz=True)
    message = load_error(tmp_path)
    assert str(path) in message and "decompresses to only 1016 bytes (truncated)" in message


def test_max_data_bytes_is_the_limit_for_every_file(tmp_path, monkeypatch):
    write_idx(tmp_path, fake_mnist(), gz=True)
    monkeypatch.setattr(data, "MAX_DATA_BYTES", 12 * 784 - 1)
    message = load_error(tmp_path)
    assert "train-images-idx3-ubyte.gz" in message and "MAX_DATA_BYTES" in message
    monkeypatch.setattr(data, "MAX_DATA_BYTES", 12 * 784)
    assert data.load("mnist", path=tmp_path).x_train.shape == (12, 784)


# ---- .npz -----------------------------------------------------------------------------------

def npy_header(shape, dtype="|u1"):
    """A .npy version 1.0 header (magic, length, dict padded to 64 bytes)."""
    d = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    d += " " * (-(10 + len(d) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode("latin1")


def npy_bytes(a):
    f = io.BytesIO()
    np.lib.format.write_array(f, a)
    return f.getvalue()


def zip_archive(entries):
    """The bytes of a zip archive of (name, stored bytes, method, crc, size declared in the
    directory) entries, written by hand so that the sizes can be anything."""
    local, central = b"", b""
    for name, payload, method, crc, size in entries:
        name = name.encode()
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc,
                               len(payload), size, len(name), 0, 0, 0, 0, 0, len(local)) + name
        local += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc,
                             len(payload), size, len(name), 0) + name + payload
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                      len(central), len(local), 0)
    return local + central + end


def npz_with(tmp_path, key, payload, method=zipfile.ZIP_STORED, crc=None, size=None):
    """mnist.npz of good small arrays but for `key`, whose entry holds `payload` (for deflate,
    already compressed) and declares `size` bytes (default: len(payload))."""
    entries = [(k + ".npy", npy_bytes(v), zipfile.ZIP_STORED, zlib.crc32(npy_bytes(v)),
                len(npy_bytes(v))) for k, v in fake_mnist().items() if k != key]
    entries.append((key + ".npy", payload, method, zlib.crc32(payload) if crc is None else crc,
                    len(payload) if size is None else size))
    path = tmp_path / "mnist.npz"
    path.write_bytes(zip_archive(entries))
    return path


def test_npz_entry_declaring_1e12_elements_is_refused_before_allocating(tmp_path):
    path = npz_with(tmp_path, "x_train", npy_header((10**6, 1000, 1000)) + bytes(1000))
    with bounded(limit=2 * MiB):
        message = load_error(path)
    assert str(path) in message and "x_train" in message and "(1000000, 1000, 1000)" in message


def test_npz_deflate_bomb_behind_a_plausible_header_is_refused_from_its_sizes(tmp_path):
    """Header: 1000 images; directory: the 4 GB the stream truly expands to. They disagree."""
    payload = deflate_zeros(npy_header((1000, 784)), 3900, -15)
    path = npz_with(tmp_path, "x_train", payload, zipfile.ZIP_DEFLATED,
                    size=len(npy_header((1000, 784))) + 3900 * MiB)
    with bounded(limit=2 * MiB) as stats:
        message = load_error(path)
    assert str(path) in message and "x_train" in message and "(1000, 784)" in message
    print(f"npz deflate bomb ({len(payload) / MiB:.1f} MB -> 3.8 GiB): rejected in "
          f"{stats['seconds'] * 1e3:.1f} ms, peak {stats['peak'] / MiB:.2f} MiB")


def test_npz_directory_that_lies_about_a_bombs_size_stops_at_that_size(tmp_path):
    """Directory and header agree on 1000 images, the stream holds 4 GB: zipfile stops at the
    declared size and the CRC no longer matches."""
    header = npy_header((1000, 784))
    path = npz_with(tmp_path, "x_train", deflate_zeros(header, 3900, -15), zipfile.ZIP_DEFLATED,
                    size=len(header) + 784_000)
    with bounded(limit=8 * MiB):
        message = load_error(path)
    assert str(path) in message and "x_train" in message


def test_npz_entry_that_cannot_hold_what_it_declares_is_refused_before_inflating(
        tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_DATA_BYTES", 1 << 50)
    header = npy_header((5_000_000, 784))
    path = npz_with(tmp_path, "x_train", deflate_zeros(header, 1, -15), zipfile.ZIP_DEFLATED,
                    size=len(header) + 5_000_000 * 784)
    with bounded(limit=2 * MiB):
        message = load_error(path)
    assert str(path) in message and "x_train" in message and "cannot hold" in message


def test_npz_over_max_data_bytes_is_refused(tmp_path, monkeypatch):
    np.savez(tmp_path / "mnist.npz", **fake_mnist())
    monkeypatch.setattr(data, "MAX_DATA_BYTES", 12 * 784 - 1)
    message = load_error(tmp_path / "mnist.npz")
    assert "x_train" in message and "MAX_DATA_BYTES" in message


def test_compressed_npz_still_loads(tmp_path):
    arrays = fake_mnist()
    np.savez_compressed(tmp_path / "mnist.npz", **arrays)
    ds = data.load("mnist", path=tmp_path)
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    np.testing.assert_allclose(ds.x_train, arrays["x_train"].reshape(-1, 784) / 255, rtol=1e-6)


# ---- the command line -----------------------------------------------------------------------

def test_cli_turns_a_bomb_into_one_line_and_exit_2(tmp_path, capsys):
    mnist_dir_with(tmp_path, "x_train", deflate_zeros(idx_header(1000, 28, 28), BOMB_MIB, 31),
                   gz=True)
    with bounded(limit=16 * MiB):
        code = main(["train", "--dataset", "mnist", "--data", str(tmp_path), "--no-progress",
                     "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("gpugrad: error: ") and "train-images-idx3-ubyte.gz" in err[0]
