"""Reading .npz archives (zips of .npy entries) without trusting the sizes they declare.

np.load believes an archive: an entry whose .npy header claims 10^12 elements is allocated before a
byte of it is read, and a damaged directory that no longer lists some entries (one corrupt
comment-length field swallows the entries after it) just yields fewer arrays. Here, before anything
is allocated, an entry's header must agree with the entry's size in the directory, that size with
what its compressed bytes can hold, and the directory with the entries in the file; the data is
then inflated in bounded chunks (zipfile stops at the declared size and checks the CRC).

Problems raise one of READ_ERRORS, with a message that names the entry; callers add the file.
"""
import math
import struct
import zipfile
import zlib

import numpy as np

__all__ = ["READ_ERRORS", "deflate_capacity", "open_archive", "entries", "read_array"]

# What reading a damaged or hostile archive can raise: zipfile's own errors, a stream that ends
# early, an encrypted entry (RuntimeError), and this module's ValueErrors.
READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error,
               RuntimeError)

# Deflate expands at most 1032:1 (a 258-byte match costs at least 2 bits); the slack covers
# stream headers and the tail of a short stream.
_DEFLATE_RATIO, _SLACK = 1032, 1024
_CHUNK = 1 << 20
# a local file header: signature, 22 bytes of versions/flags/sizes, name length, extra length
_LOCAL_HEADER = struct.Struct("<4s22xHH")


def deflate_capacity(compressed_bytes):
    """The most bytes that `compressed_bytes` of deflate data (zip entry or gzip) can expand to."""
    return _DEFLATE_RATIO * compressed_bytes + _SLACK


def open_archive(file):
    """A ZipFile for `file` (a path or a binary file object) whose directory accounts for every
    entry in the file; the caller closes it."""
    zf = zipfile.ZipFile(file)
    try:
        _check_nothing_lost(zf)
    except BaseException:
        zf.close()
        raise
    return zf


def _check_nothing_lost(zf):
    """Entries and the directory must tile the file: bytes between them with room for a local
    header are an entry the directory no longer lists (a data descriptor needs at most 24)."""
    end = 0
    for info in sorted(zf.infolist(), key=lambda i: i.header_offset):
        _check_gap(end, info.header_offset)
        zf.fp.seek(info.header_offset)
        signature, name, extra = _LOCAL_HEADER.unpack(zf.fp.read(_LOCAL_HEADER.size))
        if signature != b"PK\x03\x04":
            raise ValueError(f"entry {info.filename!r}: no local header at byte "
                             f"{info.header_offset}")
        end = info.header_offset + _LOCAL_HEADER.size + name + extra + info.compress_size
    _check_gap(end, zf.start_dir)


def _check_gap(end, start):
    if start - end >= _LOCAL_HEADER.size:
        raise ValueError(f"the archive's directory does not list bytes {end}..{start}: it is "
                         "damaged and has lost at least one entry")
    if start < end:
        raise ValueError(f"the archive's entries overlap at bytes {start}..{end}")


def entries(zf):
    """{array name: ZipInfo}, named as np.load names them: the entry name without ".npy"."""
    found = {}
    for info in zf.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if key in found:
            raise ValueError(f"entries {found[key].filename!r} and {info.filename!r} both "
                             f"hold array {key!r}")
        found[key] = info
    return found


def read_array(zf, info, max_bytes=None, limit_name="the limit"):
    """The array in entry `info`, its sizes checked before anything is allocated: stored bytes
    against declared ones, the .npy header against the entry's size, the data against
    max_bytes (named limit_name in the error); then read in bounded chunks."""
    name = info.filename
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # bzip2 and lzma can expand far beyond deflate's bound: nothing limits them but file_size
        raise ValueError(f"entry {name!r} uses compression method {info.compress_type}; only "
                         "stored and deflated entries (what np.savez writes) are read")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise ValueError(f"entry {name!r} declares {info.file_size} bytes but stores "
                         f"{info.compress_size}")
    if (info.compress_type == zipfile.ZIP_DEFLATED
            and info.file_size > deflate_capacity(info.compress_size)):
        raise ValueError(f"entry {name!r} declares {info.file_size} bytes, but "
                         f"{info.compress_size} deflated bytes cannot hold more than "
                         f"{deflate_capacity(info.compress_size)}")
    with zf.open(info) as f:
        shape, fortran_order, dtype = _read_header(f, name)
        count = math.prod(shape)
        nbytes, stored = count * dtype.itemsize, info.file_size - f.tell()
        if nbytes != stored:
            raise ValueError(f"entry {name!r}: header says {dtype} of shape {shape} ({nbytes} "
                             f"bytes) but the entry holds {stored} bytes of data")
        if max_bytes is not None and nbytes > max_bytes:
            raise ValueError(f"entry {name!r}: {dtype} of shape {shape} is {nbytes} bytes, more "
                             f"than {limit_name} ({max_bytes}) allows")
        array = np.empty(count, dtype)
        got = read_into(f, array.view(np.uint8))
        if got != nbytes:
            raise ValueError(f"entry {name!r} ends after {got} of its {nbytes} bytes of data")
    return array.reshape(shape, order="F" if fortran_order else "C")


def _read_header(f, name):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"entry {name!r}: .npy format version {version} is not supported")
    if dtype.hasobject:
        raise ValueError(f"entry {name!r} holds Python objects (dtype {dtype}); they would have "
                         "to be unpickled, which could run code")
    return shape, fortran_order, dtype


def read_into(f, out):
    """Fill the uint8 array `out` from the binary stream f, at most _CHUNK bytes per read (so a
    compressed stream is inflated piece by piece); returns how many bytes it held."""
    view, filled = memoryview(out), 0
    while filled < len(out):
        n = f.readinto(view[filled:filled + _CHUNK])
        if not n:
            break
        filled += n
    return filled
