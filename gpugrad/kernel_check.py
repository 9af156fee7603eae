"""Compile-check the CUDA kernels without a GPU: NVRTC, then ptxas -v.

    python -m gpugrad.kernel_check [FILE.cu ...] [--arch 80,90] [--out DIR]

Every `.cu` (default: all of gpugrad's kernel sources) is compiled by NVRTC to a cubin for each
architecture with the options CuPy's RawModule uses, and to PTX for the last one, which `ptxas -v`
assembles to report registers, shared memory and spills per kernel. Exit status: 0 all good,
1 a compile error or a spill, 2 NVRTC or ptxas not installed.

NVRTC and ptxas come from the pip wheels `nvidia-cuda-nvrtc-cu12` and `nvidia-cuda-nvcc-cu12` (the
`dev` extra), never from a system CUDA toolkit, so the check is the same on every machine. NVRTC is
called through ctypes: CuPy's own binding may pick up another libnvrtc, and this check must also run
where CuPy cannot.
"""
import argparse
import ctypes
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import kernels

# What cupy.RawModule(code=..., options=kernels.NVRTC_OPTIONS) hands NVRTC (CuPy 14,
# cupy/cuda/compiler.py): our options, then -ftz=true, -arch=sm_XX (a cubin, not PTX) and
# --device-as-default-execution-space. Its -I include paths are left out: the kernels include no
# headers.
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
ARCHS = ("80", "90")


class ToolNotFound(RuntimeError):
    """NVRTC or ptxas is not installed (pip install ".[dev]" from gpugrad's checkout)."""


def _nvidia_dirs():
    """The site-packages/nvidia folders of the pip CUDA wheels (a namespace package)."""
    spec = importlib.util.find_spec("nvidia")
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def find_nvrtc():
    """Path of libnvrtc from the nvidia-cuda-nvrtc wheel, or None."""
    for base in _nvidia_dirs():
        for pattern in ("cuda_nvrtc/lib/libnvrtc.so.*", "cu*/lib/libnvrtc.so.*",
                        "cuda_nvrtc/bin/nvrtc64_*.dll"):
            hits = sorted(p for p in base.glob(pattern)
                          if "builtins" not in p.name and ".alt." not in p.name)
            if hits:
                return hits[0]
    return None


def find_ptxas():
    """Path of ptxas from the nvidia-cuda-nvcc wheel, or None."""
    for base in _nvidia_dirs():
        for pattern in ("cuda_nvcc/bin/ptxas", "cu*/bin/ptxas", "cuda_nvcc/bin/ptxas.exe"):
            hits = sorted(base.glob(pattern))
            if hits:
                return hits[0]
    return None


class Nvrtc:
    """The handful of NVRTC calls needed to compile one source, through ctypes."""

    def __init__(self, path=None):
        path = path or find_nvrtc()
        if path is None:
            raise ToolNotFound("NVRTC not found: pip install nvidia-cuda-nvrtc-cu12 "
                               "(part of gpugrad's dev extra: pip install \".[dev]\")")
        self.path = Path(path)
        lib = self.lib = ctypes.CDLL(str(path))
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def _check(self, result, what):
        if result != 0:
            raise RuntimeError(f"{what} failed: {self.lib.nvrtcGetErrorString(result).decode()}")

    def _get(self, prog, what):
        """Bytes of the program's log / PTX / CUBIN via nvrtcGet<what>Size + nvrtcGet<what>."""
        size = ctypes.c_size_t()
        self._check(getattr(self.lib, f"nvrtcGet{what}Size")(prog, ctypes.byref(size)), what)
        buf = ctypes.create_string_buffer(size.value)
        self._check(getattr(self.lib, f"nvrtcGet{what}")(prog, buf), what)
        return buf.raw[:size.value].rstrip(b"\0")

    def compile(self, source, name, options):
        """(PTX or CUBIN bytes, log) for `options` (-arch=compute_XX gives PTX, sm_XX a cubin).
        Raises kernels.KernelCompileError with NVRTC's log when the source does not compile."""
        prog = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(),
                                                name.encode(), 0, None, None), "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            result = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            log = self._get(prog, "ProgramLog").decode(errors="replace")
            if result != 0:
                raise kernels.KernelCompileError(name, log, " ".join(options))
            ptx = any(o.startswith("-arch=compute_") for o in options)
            return self._get(prog, "PTX" if ptx else "CUBIN"), log
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def cupy_options(arch, ptx=False):
    """NVRTC options CuPy would use for this architecture ("90")."""
    return (*kernels.NVRTC_OPTIONS, *CUPY_ADDED_OPTIONS,
            f"-arch={'compute' if ptx else 'sm'}_{arch}")


def compile_source(source, name, arch="90", nvrtc=None, ptx=False):
    """Compile like CuPy does: the cubin (or PTX) bytes, else KernelCompileError."""
    return (nvrtc or Nvrtc()).compile(source, name, cupy_options(arch, ptx))[0]


def ptxas_report(ptx_path, arch="90", ptxas=None):
    """Run `ptxas -v` on a PTX file: {kernel: {"registers", "smem", "stack", "spill_stores",
    "spill_loads"}} parsed from its info lines."""
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise ToolNotFound("ptxas not found: pip install nvidia-cuda-nvcc-cu12 (part of "
                           "gpugrad's dev extra: pip install \".[dev]\")")
    ptx_path = Path(ptx_path)
    cmd = [str(ptxas), "-v", f"-arch=sm_{arch}", str(ptx_path),
           "-o", str(ptx_path.with_suffix(f".ptxas.sm_{arch}.cubin"))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed on {ptx_path.name}:\n{done.stderr}")
    return parse_ptxas(done.stderr + done.stdout)


def parse_ptxas(text):
    """Per-kernel resource usage from ptxas -v output."""
    report, current = {}, None
    for line in text.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?", line)
        if m:
            current = report.setdefault(m.group(1), {"registers": 0, "smem": 0, "stack": 0,
                                                     "spill_stores": 0, "spill_loads": 0})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return report


def check(files, archs=ARCHS, out_dir=None, stream=sys.stdout):
    """Compile every file for every arch, ptxas -v the last arch; print a table. Returns the exit
    status (0 good, 1 compile error or spill)."""
    nvrtc = Nvrtc()
    find = find_ptxas()
    if find is None:
        raise ToolNotFound("ptxas not found: pip install nvidia-cuda-nvcc-cu12 (part of "
                           "gpugrad's dev extra: pip install \".[dev]\")")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"NVRTC {nvrtc.version[0]}.{nvrtc.version[1]} ({nvrtc.path})\nptxas {find}\n"
          f"options: {' '.join(cupy_options(archs[-1]))}", file=stream)
    failed, rows = False, []
    for path in files:
        path = Path(path)
        source = path.read_text()
        try:
            for arch in archs:
                cubin = compile_source(source, path.name, arch, nvrtc)
                (out / f"{path.stem}.sm_{arch}.cubin").write_bytes(cubin)
            ptx_file = out / f"{path.stem}.compute_{archs[-1]}.ptx"
            ptx_file.write_bytes(compile_source(source, path.name, archs[-1], nvrtc, ptx=True))
        except kernels.KernelCompileError as e:
            print(f"\nFAILED {e}", file=stream)
            failed = True
            continue
        report = ptxas_report(ptx_file, archs[-1], find)
        for name, r in sorted(report.items()):
            rows.append((path.name, name, r))
            failed |= r["spill_stores"] > 0 or r["spill_loads"] > 0
    print(f"\n{'file':<28}{'kernel':<26}{'regs':>5}{'smem B':>8}{'stack B':>8}{'spill st/ld B':>15}"
          f"   (ptxas -v, sm_{archs[-1]})", file=stream)
    for fname, kname, r in rows:
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        flag = "  SPILL" if r["spill_stores"] or r["spill_loads"] else ""
        print(f"{fname:<28}{kname:<26}{r['registers']:>5}{r['smem']:>8}{r['stack']:>8}"
              f"{spill:>15}{flag}", file=stream)
    print("\nFAILED: compile error or register spill" if failed else "\nOK: every kernel compiles "
          f"for sm_{', sm_'.join(archs)} with no spills", file=stream)
    return 1 if failed else 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gpugrad.kernel_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help=".cu files (default: gpugrad's kernels)")
    ap.add_argument("--arch", default=",".join(ARCHS),
                    help="comma-separated compute capabilities; ptxas -v runs for the last")
    ap.add_argument("--out", help="keep the PTX and cubins here (default: a temporary folder)")
    args = ap.parse_args(argv)
    files = args.files or kernels.kernel_files()
    archs = tuple(a.strip() for a in args.arch.split(",") if a.strip())
    try:
        if args.out:
            return check(files, archs, args.out)
        with tempfile.TemporaryDirectory() as tmp:
            return check(files, archs, tmp)
    except ToolNotFound as e:
        print(f"kernel_check: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
