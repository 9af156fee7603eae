"""The CUDA sources, checked without a GPU: NVRTC compiles every kernel for sm_80 and sm_90 with
CuPy's options, ptxas reports no spills, a broken source fails with NVRTC's log, and the loader
finds the sources in a checkout and in an installed package."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gpugrad as gg
from gpugrad import kernel_check, kernels

NVRTC, PTXAS = kernel_check.find_nvrtc(), kernel_check.find_ptxas()
needs_tools = pytest.mark.skipif(
    NVRTC is None or PTXAS is None,
    reason="NVRTC/ptxas wheels not installed (pip install nvidia-cuda-nvrtc-cu12 "
           "nvidia-cuda-nvcc-cu12, part of gpugrad's dev extra)")
FILES = kernels.kernel_files()
REPO = Path(__file__).resolve().parent.parent  # the checkout these tests live in


def test_sources_are_found_with_their_entry_points():
    names = {p.name for p in FILES}
    assert {"sigmoid.cu", "softmax_cross_entropy.cu"} <= names
    entry = {p.name: kernels.kernel_names(p.read_text()) for p in FILES}
    assert entry["sigmoid.cu"] == ["sigmoid_forward_f32", "sigmoid_forward_f64",
                                   "sigmoid_backward_f32", "sigmoid_backward_f64"]
    assert {"softmax_xent_small_f32", "softmax_xent_large_f64",
            "loss_sum_f32"} <= set(entry["softmax_cross_entropy.cu"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_kernel_starts_with_its_comment_block(path):
    head = path.read_text().split("\n\n")[0]
    for topic in ("Math", "Launch", "Bytes"):
        assert topic.lower() in head.lower(), f"{path.name}: header comment lacks {topic}"


@needs_tools
@pytest.mark.parametrize("arch", kernel_check.ARCHS)
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_compiles_with_nvrtc(path, arch):
    cubin = kernel_check.compile_source(path.read_text(), path.name, arch)
    assert cubin[:4] == b"\x7fELF"  # a cubin is an ELF image


@needs_tools
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ptxas_reports_no_spills(path, tmp_path):
    source = path.read_text()
    ptx = tmp_path / f"{path.stem}.ptx"
    ptx.write_bytes(kernel_check.compile_source(source, path.name, "90", ptx=True))
    report = kernel_check.ptxas_report(ptx, "90")
    assert set(report) == set(kernels.kernel_names(source))  # every entry point was assembled
    for name, r in report.items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{name} spills: {r}"
        assert 0 < r["registers"] <= 255


BROKEN = 'extern "C" __global__ void broken(float* y) { y[0] = no_such_function(1.0f); }\n'
SPILLS = textwrap.dedent("""\
    // keeps 256 values live in one thread, capped at 32 registers: ptxas must spill
    extern "C" __global__ void __launch_bounds__(1024, 2) spills(const float* x, float* y) {
        float v[256];
    #pragma unroll
        for (int i = 0; i < 256; ++i) v[i] = x[i * blockDim.x + threadIdx.x];
        float s = 0;
    #pragma unroll
        for (int i = 0; i < 256; ++i) s += v[i] * v[255 - i];
    #pragma unroll
        for (int i = 0; i < 256; ++i) y[i * blockDim.x + threadIdx.x] = v[i] * s;
    }
    """)


@needs_tools
def test_broken_source_fails_with_the_nvrtc_log():
    source = (kernels.kernel_dir() / "sigmoid.cu").read_text() + BROKEN
    with pytest.raises(kernels.KernelCompileError) as info:
        kernel_check.compile_source(source, "sigmoid.cu", "90")
    msg = str(info.value)
    assert "sigmoid.cu" in msg and "no_such_function" in msg and "undefined" in msg


def _run_check(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "gpugrad.kernel_check", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO)


@needs_tools
def test_checker_passes_on_the_kernels_and_prints_the_table(tmp_path):
    done = _run_check("--out", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for path in FILES:
        for name in kernels.kernel_names(path.read_text()):
            assert name in done.stdout
        for arch in kernel_check.ARCHS:
            assert (tmp_path / f"{path.stem}.sm_{arch}.cubin").stat().st_size > 0
    assert "regs" in done.stdout and "spill" in done.stdout


@needs_tools
@pytest.mark.parametrize("source, expect", [(BROKEN, "no_such_function"), (SPILLS, "SPILL")],
                         ids=["compile-error", "spill"])
def test_checker_fails_on_a_broken_or_spilling_kernel(tmp_path, source, expect):
    bad = tmp_path / "bad.cu"
    bad.write_text(source)
    done = _run_check(bad)
    assert done.returncode == 1, done.stdout + done.stderr
    assert expect in done.stdout


def test_checker_exit_status_2_without_the_tools(monkeypatch, capsys):
    monkeypatch.setattr(kernel_check, "find_nvrtc", lambda: None)
    assert kernel_check.main([]) == 2
    assert "NVRTC not found" in capsys.readouterr().err


def test_parse_ptxas_output():
    text = textwrap.dedent("""\
        ptxas info    : 0 bytes gmem
        ptxas info    : Compiling entry function 'k1' for 'sm_90'
        ptxas info    : Function properties for k1
            8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
        ptxas info    : Used 40 registers, used 1 barriers, 268 bytes smem, 400 bytes cmem[0]
        ptxas info    : Compiling entry function 'k2' for 'sm_90'
        ptxas info    : Function properties for k2
            0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 12 registers, 380 bytes cmem[0]
        """)
    assert kernel_check.parse_ptxas(text) == {
        "k1": {"registers": 40, "smem": 268, "stack": 8, "spill_stores": 4, "spill_loads": 12},
        "k2": {"registers": 12, "smem": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0}}


def test_status_for_gpugrad_info():
    st = kernels.status()
    assert set(st) == {p.name for p in FILES}
    gpu = gg.cuda.is_available()
    for entry in st.values():
        if NVRTC is not None or gpu:
            assert entry["compiles"] is True, entry
        if not gpu:
            assert entry["loads"] is None and "load check skipped" in entry["detail"], entry


def test_installed_package_reads_its_own_kernels(tmp_path):
    """The wheel layout: gpugrad/_kernels/*.cu inside the package wins over any checkout."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "gpugrad", site / "gpugrad",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "kernels", site / "gpugrad" / "_kernels")
    code = "from gpugrad import kernels; print(kernels.kernel_dir())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(site)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == site / "gpugrad" / "_kernels"


def test_checkout_falls_back_to_top_level_kernels():
    if Path(kernels.__file__).resolve().parent != REPO / "gpugrad":
        pytest.skip("gpugrad was imported from an installed package, not this checkout")
    assert kernels.kernel_dir() == REPO / "kernels"


def test_missing_sources_raise_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_kernel_dir_candidates", lambda: [tmp_path / "none"])
    with pytest.raises(FileNotFoundError, match="CUDA sources"):
        kernels.kernel_dir()
