"""Is CUDA usable? Each check runs the real thing once, so the answer is true only where training
would work, and a failure names the part that failed and what to install.

    cupy       CuPy imports (its CUDA runtime loads)
    device     a device is visible, and a context and a first copy work
    nvrtc      NVRTC compiles a tiny kernel (to PTX, no cache) that the driver loads and runs
    cublas     gpugrad's own cuBLAS handle runs a GEMM (backend/cublas.py) with the right values
    curand     CuPy's generator (cuRAND) draws finite numbers

A second probe, `probe_graphs`, answers whether CUDA-graph capture of a GEMM, one of gpugrad's
kernels and a reduction works and replays correctly: what `Executor(cuda_graph=True)` needs.
Nothing here raises: every failure becomes a (name, False, detail) row and a reason.
"""
import numpy as np

CHECKS = ("cupy", "device", "nvrtc", "cublas", "curand")
_LIBRARY = {"nvrtc": "NVRTC", "cublas": "cuBLAS"}  # the checks whose failure a wheel fixes

_PROBE_KERNEL = r'''
extern "C" __global__ void gpugrad_probe(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = 2.0f * x[i] + 1.0f;
}
'''


INSTALL_HINT = ("install CuPy for your driver: from gpugrad's checkout, pip install \".[cuda12]\" "
                "(CUDA 12.x, driver >= 525) or \".[cuda13]\" (CUDA 13.x)")


def cupy_package():
    """The installed CuPy wheel's name (for install hints), e.g. 'cupy-cuda12x'."""
    import importlib.metadata as md
    for name in ("cupy-cuda12x", "cupy-cuda13x", "cupy"):
        try:
            md.version(name)
            return name
        except md.PackageNotFoundError:
            continue
    return "cupy-cuda12x"


def install_hint(part=None):
    pkg = cupy_package()
    what = f"{part} comes with CUDA's library wheels: " if part else ""
    return (f"{what}pip install '{pkg}[ctk]' (or, from gpugrad's checkout, pip install "
            f"\".[cuda12]\" for CUDA 12.x drivers >= 525, \".[cuda13]\" for CUDA 13)")


def probe(seed=None, explain=None):
    """Run every check in order, stopping at the first failure.

    Returns (backend or None, reason or None, rows): rows is [(check, ok, detail)]."""
    rows = []

    def fail(name, detail):
        rows.append((name, False, detail))
        return None, f"{name}: {detail}", rows

    try:
        import cupy
    except Exception as e:  # ImportError, or a CuPy that fails to load its runtime
        return fail("cupy", f"CuPy is not installed or does not import ({e}); {INSTALL_HINT}")
    rows.append(("cupy", True, cupy.__version__))
    steps = (("device", lambda: _device(cupy, explain)), ("nvrtc", lambda: _nvrtc(cupy)),
             ("cublas", lambda: _cublas(cupy)))
    for name, step in steps:
        try:
            rows.append((name, True, step()))
        except Exception as e:
            detail = getattr(e, "gpugrad_reason", None) or f"{type(e).__name__}: {e}"
            if name in _LIBRARY:
                detail += f"; {install_hint(_LIBRARY[name])}"
            return fail(name, detail)
    try:
        from .cupy_backend import CupyBackend
        bk = CupyBackend(seed=seed)
        sample = cupy.asnumpy(bk.randn((64,), np.float32))
        if not np.all(np.isfinite(sample)) or sample.std() == 0:
            raise RuntimeError(f"cuRAND drew {sample[:4]}...")
        rows.append(("curand", True, "64 normal draws"))
    except Exception as e:
        return fail("curand", f"{type(e).__name__}: {e}; {install_hint('cuRAND')}")
    return bk, None, rows


def _device(cupy, explain):
    from cupy_backends.cuda.api import runtime
    try:
        count = runtime.getDeviceCount()
        if count == 0:
            raise RuntimeError("no CUDA device is visible (check nvidia-smi and "
                               "CUDA_VISIBLE_DEVICES)")
        x = cupy.zeros(4, np.float32)  # context creation and a memset
        x.fill(1.0)
        if float(cupy.asnumpy(x).sum()) != 4.0:
            raise RuntimeError("a fill and a copy back gave wrong values")
    except Exception as e:
        e.gpugrad_reason = explain(cupy, e) if explain else str(e)
        raise
    props = runtime.getDeviceProperties(runtime.getDevice())
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"{count} device(s); {name}, sm_{props['major']}{props['minor']}"


def _nvrtc(cupy):
    """Compile with NVRTC directly (CuPy's kernel cache would hide a broken NVRTC), to PTX for
    this device's virtual architecture, and let the driver load and run it."""
    from cupy_backends.cuda.libs import nvrtc
    from cupy.cuda import function
    cc = cupy.cuda.Device().compute_capability
    prog = nvrtc.createProgram(_PROBE_KERNEL, "gpugrad_probe.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"-arch=compute_{cc}"])
        except Exception as e:
            raise RuntimeError(f"NVRTC {nvrtc.getVersion()} could not compile for compute_{cc}: "
                               f"{e} {nvrtc.getProgramLog(prog).strip()}") from None
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    module = function.Module()
    module.load(ptx if ptx.endswith(b"\0") else ptx + b"\0")  # the driver reads a C string
    kernel = module.get_function("gpugrad_probe")
    x = cupy.arange(37, dtype=np.float32)
    y = cupy.empty_like(x)
    kernel((1,), (64,), (x, y, np.int32(x.size)))
    if not np.array_equal(cupy.asnumpy(y), 2 * np.arange(37, dtype=np.float32) + 1):
        raise RuntimeError("the probe kernel ran but wrote wrong values")
    return f"NVRTC {'.'.join(map(str, nvrtc.getVersion()))}, compute_{cc}"


def _cublas(cupy):
    from . import cublas
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    h = cublas.handle(cupy)
    da, db = cupy.asarray(a), cupy.asarray(b)
    for x, y, dx, dy in ((a, b, da, db), (b.T, a.T, db.T, da.T)):  # op N, then op T operands
        p = cublas.plan(dx.shape, dx.strides, dy.shape, dy.strides, dx.itemsize)
        out = cupy.empty(p.out_shape, np.float32)
        h.gemm(p, dx, dy, out)
        if not np.array_equal(cupy.asnumpy(out), x @ y):
            raise RuntimeError(f"GEMM gave {cupy.asnumpy(out).tolist()}, expected "
                               f"{(x @ y).tolist()}")
    return f"GEMM by {cublas.library().gpugrad_path}"


def probe_graphs(bk):
    """(ok, reason): capture a GEMM, the sigmoid kernel, a row sum and the loss reduction into a
    CUDA graph, check the capture ran nothing and allocated nothing, replay it, compare."""
    if bk is None or not bk.graphs:
        return False, "no CUDA device is usable"
    try:
        import cupy
        rng = np.random.default_rng(0)
        hx = rng.standard_normal((64, 32)).astype(np.float32)
        hw = rng.standard_normal((32, 16)).astype(np.float32)
        x, w = cupy.asarray(hx), cupy.asarray(hw)
        z, col, total = cupy.empty((64, 16), np.float32), cupy.empty(16, np.float32), \
            cupy.empty((), np.float32)

        def step():
            bk.matmul(x, w, out=z)
            bk.sigmoid_forward(z, out=z)
            bk.sum_rows(z, out=col)
            bk.reduce_loss(col, "sum", out=total)

        step()  # compile and load outside the capture
        want = float(total.get())
        total.fill(0)
        graph = bk.capture(step)
        if float(total.get()) != 0.0:
            return False, "stream capture ran the work instead of recording it"
        if graph.allocated_bytes:
            return False, f"the captured step allocated {graph.allocated_bytes} bytes"
        graph.launch()
        got = float(total.get())
        ref = float((1 / (1 + np.exp(-(hx.astype(np.float64) @ hw)))).sum())
        # the replay runs the same kernels as the uncaptured step: equal up to float32 rounding
        if abs(got - want) > 1e-6 * abs(want) or abs(got - ref) > 1e-4 * abs(ref):
            return False, f"the replayed graph gave {got}, uncaptured {want}, float64 {ref}"
        return True, None
    except Exception as e:
        return False, f"CUDA-graph capture failed: {type(e).__name__}: {e}"
