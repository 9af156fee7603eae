"""Compile CUDA C++ kernel sources with g++ and launch them on the CPU, like CuPy's RawModule.

    m = Module(source, "softmax_cross_entropy.cu")          # cupy.RawModule(code=source)
    k = m.get_function("loss_sum_f32")
    k((1,), (1024,), (x, np.int64(n), np.float64(1.0), out))  # a cupy.RawKernel call, on NumPy

The source is compiled after cuda_emu.h and linked with the runtime (scheduler.cpp,
collectives.cpp), which is compiled once per sanitizer mode; both are cached by content hash in
$CUEMU_CACHE (default: a per-user folder in the temp dir), so a test session compiles each source
once and a later session not at all.

Each launch checks every argument against the kernel's C signature, which CuPy does not (it
passes the bytes as they are): an array for each pointer, of the pointee's size and kind
(float / signed / unsigned), writable unless the pointee is const; a NumPy scalar of the
parameter's exact size and kind for each value. It checks the block size against the
__launch_bounds__ in the source, which CuPy leaves to the driver. Whatever a GPU would report or
hang on raises EmulationError.

Sanitizer (CUEMU_SANITIZE): ubsan (the default; needs nothing preloaded), asan or tsan (Python must
start with the sanitizer's runtime in LD_PRELOAD: tests/emulated/run.sh does that), none.
"""
import concurrent.futures
import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HEADERS = ("abi.h", "fiber.h", "runtime.h", "cuda_emu.h")
RUNTIME = ("scheduler.cpp", "collectives.cpp")

# The entry points and the thread count in their __launch_bounds__ (if any).
KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+'
                       r"(?:__launch_bounds__\s*\(\s*([^),]*)[^)]*\)\s*)?(\w+)\s*\(")

# -ffp-contract=off: no FMA the source does not ask for (NVRTC contracts a*b+c by default, so
# results may differ from a GPU's in the last bit either way; the tests allow for it).
# -g1: line tables for sanitizer reports, at a third of -g's compile time.
BASE_FLAGS = ["-std=c++17", "-O1", "-g1", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing",
              "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wno-unknown-pragmas",
              "-Wno-unused-function"]
SANITIZERS = {
    # misaligned 16-byte vector loads, out-of-bounds indices of fixed-size (shared) arrays,
    # signed overflow, bad shifts...; reported on stderr, which the runtime captures
    "ubsan": ["-fsanitize=undefined", "-fsanitize-recover=all", "-DCUEMU_CAPTURE_STDERR"],
    # every out-of-bounds byte of a NumPy buffer (ASAN_OPTIONS=detect_leaks=0:halt_on_error=0);
    # without UBSan, which the default mode runs: a third less compile time
    "asan": ["-fsanitize=address", "-fsanitize-recover=address", "-DCUEMU_CAPTURE_STDERR"],
    # races between the threads of a block that no barrier orders (see runtime.h)
    "tsan": ["-fsanitize=thread", "-DCUEMU_CAPTURE_STDERR"],
    "none": [],
}


class EmulationError(RuntimeError):
    """A launch failed, or a source did not compile; the message says where and why."""


def compiler():
    return os.environ.get("CXX", "g++")


def sanitize_mode():
    mode = os.environ.get("CUEMU_SANITIZE", "ubsan")
    if mode not in SANITIZERS:
        raise ValueError(f"CUEMU_SANITIZE={mode!r}: one of {', '.join(SANITIZERS)}")
    return mode


def cache_dir():
    default = Path(tempfile.gettempdir()) / f"cuemu-cache-{os.getuid()}"
    path = Path(os.environ.get("CUEMU_CACHE") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_entries(source):
    """[(name, launch bound or None)] of the extern "C" __global__ functions, in order."""
    return [(m.group(2), int(m.group(1), 0) if m.group(1) else None)
            for m in KERNEL_RE.finditer(source)]


def _flags(sanitize):
    return [*BASE_FLAGS, *SANITIZERS[sanitize], *os.environ.get("CUEMU_EXTRA_FLAGS", "").split()]


def _digest(*parts):
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _run_compiler(args, what):
    done = subprocess.run([compiler(), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise EmulationError(f"{what}: g++ could not compile it:\n{done.stderr}")
    return done.stderr


def _cached(path, build):
    """`path`, built by build(tmp_path) unless it exists: written beside it and renamed, so a
    concurrent session never loads a half-written file."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            build(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


_runtime_lock = threading.Lock()


def runtime_objects(sanitize):
    """The runtime's object files for this sanitizer mode, compiled once (side by side)."""
    flags = _flags(sanitize)
    key = _digest(compiler(), *flags, *((HERE / f).read_text() for f in HEADERS + RUNTIME))
    paths = [cache_dir() / f"{Path(src).stem}-{sanitize}-{key}.o" for src in RUNTIME]

    def build(src, path):
        return _cached(path, lambda out: _run_compiler(
            [*flags, "-c", str(HERE / src), "-o", str(out)], f"the cuemu runtime ({src})"))

    with _runtime_lock, concurrent.futures.ThreadPoolExecutor(len(RUNTIME)) as pool:
        return list(pool.map(build, RUNTIME, paths))


def compile_source(source, name="kernel.cu", sanitize=None):
    """Path of the shared library that runs `source`'s kernels (cached by content and flags)."""
    sanitize = sanitize or sanitize_mode()
    entries = kernel_entries(source)
    if not entries:
        raise EmulationError(f'{name}: no extern "C" __global__ kernels found')
    # #line keeps the .cu's own name and line numbers in every message and report
    text = (f'#include "{HERE / "cuda_emu.h"}"\n#line 1 "{name}"\n{source}\n'
            f'#line 1 "cuemu-exports"\n' + "".join(f"CUEMU_EXPORT({n})\n" for n, _ in entries))
    objects = runtime_objects(sanitize)
    flags = [*_flags(sanitize), "-shared"]
    key = _digest(text, *flags, *(o.name for o in objects))
    so = cache_dir() / f"{Path(name).stem}-{sanitize}-{key}.so"

    def build(out):
        cpp = out.with_suffix(".cpp")
        cpp.write_text(text)
        try:
            warnings = _run_compiler([*flags, str(cpp), *map(str, objects), "-o", str(out)], name)
        finally:
            cpp.unlink(missing_ok=True)
        if warnings.strip():  # kept for whoever wonders (NVRTC would not have said it)
            so.with_suffix(".warnings.txt").write_text(warnings)

    return _cached(so, build)


def compile_many(sources, sanitize=None):
    """Compile [(source, name)] concurrently (one g++ per core): a session's first use of several
    sources, or of a set of mutants, then costs the slowest, not the sum."""
    runtime_objects(sanitize or sanitize_mode())
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return list(pool.map(lambda s: compile_source(*s, sanitize=sanitize), sources))


class LaunchCfg(ctypes.Structure):  # abi.h
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("seed", ctypes.c_ulonglong), ("strict", ctypes.c_int), ("ftz", ctypes.c_int),
                ("reverse_blocks", ctypes.c_int)]


class Param(ctypes.Structure):  # abi.h
    _fields_ = [(n, ctypes.c_int) for n in ("size", "is_ptr", "elem_size", "elem_kind",
                                            "elem_const")]


KIND = {"i": 1, "u": 2, "f": 3, "b": 4}  # NumPy dtype.kind -> Param.elem_kind
KIND_NAME = {0: "void", 1: "signed integer", 2: "unsigned integer", 3: "floating", 4: "bool"}

# Launch options every launch gets unless it passes its own: seed (a seeded shuffle of the
# threads at every step and of the blocks), strict (undefined behaviour is an error), ftz
# (flush subnormals), reverse_blocks. Tests change them for a while and put them back.
defaults = {"seed": 0, "strict": True, "ftz": False, "reverse_blocks": False}


class Module:
    """cupy.RawModule look-alike: compiles `code` once; get_function(name) gives a Kernel."""

    def __init__(self, code, name="kernel.cu", options=(), sanitize=None):
        self.name, self.options = name, tuple(options)
        self.path = compile_source(code, name, sanitize)
        self.lib = ctypes.CDLL(str(self.path))
        self.lib.cuemu_last_error.restype = ctypes.c_char_p
        self.bounds = dict(kernel_entries(code))

    def get_function(self, name):
        if name not in self.bounds:
            raise AttributeError(f"{self.name}: no kernel named {name}")
        return Kernel(self, name, self.bounds[name])


def _dim3(v):
    v = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(v) <= 3:
        raise ValueError(f"a grid or block has 1 to 3 dimensions, got {v}")
    return tuple(int(x) for x in v) + (1,) * (3 - len(v))


class Kernel:
    """cupy.RawKernel look-alike: kernel(grid, block, args, **launch options)."""

    def __init__(self, module, name, bound):
        self.module, self.name, self.bound = module, name, bound
        self._launch = getattr(module.lib, f"cuemu_launch_{name}")
        self._launch.restype = ctypes.c_int
        params = (Param * 64)()
        n = getattr(module.lib, f"cuemu_sig_{name}")(params, 64)
        self.params = [params[i] for i in range(n)]

    def _pointer(self, what, a, p):
        if a is None:
            return ctypes.c_void_p(0)
        if isinstance(a, (int, np.integer)):  # a raw address
            return ctypes.c_void_p(int(a))
        if not isinstance(a, np.ndarray):
            raise EmulationError(f"{what}: the kernel takes a pointer, got {type(a).__name__}")
        if p.elem_size and (a.itemsize != p.elem_size or KIND.get(a.dtype.kind) != p.elem_kind):
            raise EmulationError(f"{what}: the kernel takes a pointer to a {p.elem_size}-byte "
                                 f"{KIND_NAME[p.elem_kind]}, got an array of {a.dtype}")
        if not p.elem_const and not a.flags.writeable:
            raise EmulationError(f"{what}: the kernel may write through it, the array is "
                                 "read-only")
        return ctypes.c_void_p(a.__array_interface__["data"][0])

    def _value(self, what, a, p):
        if isinstance(a, np.ndarray) and a.ndim == 0:
            a = a[()]
        if type(a) in (bool, int, float):  # what CuPy makes of Python numbers
            a = {bool: np.bool_, int: np.int64, float: np.float64}[type(a)](a)
        if not isinstance(a, np.generic):
            raise EmulationError(f"{what}: the kernel takes a {p.size}-byte value, got "
                                 f"{type(a).__name__}")
        if a.itemsize != p.size or KIND.get(a.dtype.kind) != p.elem_kind:
            raise EmulationError(f"{what}: the kernel takes a {p.size}-byte "
                                 f"{KIND_NAME[p.elem_kind]}, got {a.dtype} (CuPy would pass "
                                 f"its {a.itemsize} bytes as they are)")
        return ctypes.create_string_buffer(a.tobytes(), a.itemsize)

    def __call__(self, grid, block, args, shared_mem=0, stream=None, **options):
        opts = {**defaults, **options}
        grid, block = _dim3(grid), _dim3(block)
        nthreads = block[0] * block[1] * block[2]
        if self.bound is not None and nthreads > self.bound:
            raise EmulationError(f"{self.name}: too many resources requested for launch: "
                                 f"{nthreads} threads per block, __launch_bounds__({self.bound})")
        if shared_mem:
            raise EmulationError("dynamic shared memory is not emulated")
        if len(args) != len(self.params):
            raise EmulationError(f"{self.name} takes {len(self.params)} arguments, "
                                 f"got {len(args)}")
        # the buffers must outlive the call: `keep` holds them
        keep = [(self._pointer if p.is_ptr else self._value)(f"{self.name} argument {i}", a, p)
                for i, (a, p) in enumerate(zip(args, self.params))]
        ptrs = (ctypes.c_void_p * max(1, len(keep)))(*[ctypes.addressof(b) for b in keep])
        cfg = LaunchCfg((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), opts["seed"],
                        int(opts["strict"]), int(opts["ftz"]), int(opts["reverse_blocks"]))
        if self._launch(ctypes.byref(cfg), ptrs):
            msg = self.module.lib.cuemu_last_error().decode(errors="replace")
            raise EmulationError(f"{self.name}<<<{grid}, {block}>>>: {msg}")
