"""What the emulator catches: the kernels with one bug planted each (a removed barrier, a barrier in
divergent code, a block that is not whole warps, an early return before a shuffle or a barrier, a
vector load without its alignment test, an out-of-bounds write), each of which must fail, and
one removal that must not (the end-of-row barrier is redundant). ASan and TSan modes add their
own reports (tests/emulated/run.sh asan|tsan)."""
import numpy as np
import pytest

from gpugrad import kernels as K

from .common import check_xent_launch, logits_and_labels, xent_args
from .cuemu import cuemu, fakecupy

pytestmark = pytest.mark.emulated

XENT, SIGMOID = "softmax_cross_entropy.cu", "sigmoid.cu"
SOURCES = {p.name: p.read_text() for p in K.kernel_files()}

# name -> (file, text to replace, replacement)
EDITS = {
    # warp 0 reads the other warps' partial (max, sum) before they are written
    "first_barrier_removed": (XENT, "        shared_s[warp] = s;\n    }\n    __syncthreads();",
                              "        shared_s[warp] = s;\n    }"),
    # everyone reads the row's (max, sum) before warp 0 has written it
    "second_barrier_removed": (XENT, "    __syncthreads();\n    m = shared_m[32];",
                               "    m = shared_m[32];"),
    "barrier_in_divergent_code": (XENT, "    __syncthreads();\n    m = shared_m[32];",
                                  "    if (warp == 0) __syncthreads();\n    m = shared_m[32];"),
    # rows past the end leave the loop early, but their lanes' partners still shuffle
    "early_exit_before_shuffle": (XENT, "        const bool row_ok = row < n;",
                                  "        const bool row_ok = row < n;\n"
                                  "        if (!row_ok) return;"),
    # the last warp returns from xent_row before its barriers, to the end-of-row one
    "early_exit_before_barrier": (
        XENT, "    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;",
        "    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;\n"
        "    if (warp > 0 && warp == nwarps - 1) return;"),
    # 16-byte vector loads whether or not the rows are 16-byte aligned
    "vector_load_unchecked": (XENT, "const bool vec = c % VEC == 0 && aligned16(logits) && "
                              "aligned16(grad);", "const bool vec = c % VEC == 0;"),
    "end_of_row_barrier_removed": (XENT, "        __syncthreads();  // the next row reuses the "
                                   "shared slots", ""),
    # the scalar loop writes one element past the end
    "write_past_the_end": (SIGMOID, "for (long long i = done + tid; i < n; i += nthreads)",
                           "for (long long i = done + tid; i <= n; i += nthreads)"),
    # the tree reduction of loss_sum without its barrier per level
    "tree_barrier_removed": (XENT, "        if (threadIdx.x < half) part[threadIdx.x] += "
                             "part[threadIdx.x + half];\n        __syncthreads();",
                             "        if (threadIdx.x < half) part[threadIdx.x] += "
                             "part[threadIdx.x + half];"),
}


def mutated(name):
    file, old, new = EDITS[name]
    assert SOURCES[file].count(old) == 1, f"{name}: the kernel changed; update EDITS"
    return SOURCES[file].replace(old, new), file


@pytest.fixture(scope="module")
def mutants():
    """{name: cuemu.Module}, compiled side by side."""
    cuemu.compile_many([mutated(name) for name in EDITS])
    return {name: cuemu.Module(*mutated(name)) for name in EDITS}


def run_xent(module, n, c, grid=None, block=None, seed=0):
    """The f32 softmax kernel that the launcher would pick for (n, c), on this module, checked
    against the twin (AssertionError when the results are wrong)."""
    kind, g, b, _ = K.xent_launch(n, c)
    check_xent_launch(module.get_function(f"softmax_xent_{kind}_f32"),
                      *logits_and_labels(np.random.default_rng(3), n, c, np.float32),
                      grid or g, block or b, seed=seed)


@pytest.mark.parametrize("name", ["first_barrier_removed", "second_barrier_removed"])
def test_a_removed_barrier_gives_wrong_results(mutants, name):
    # wrong results, in index order and in a shuffled one; under TSan the race is reported first
    for seed in (0, 1):
        with pytest.raises((AssertionError, cuemu.EmulationError)):
            run_xent(mutants[name], 20, 1000, seed=seed)


UNDEFINED = [  # (mutant, rows, classes, block or None for the launcher's, the error it must give)
    ("barrier_in_divergent_code", 20, 1000, None, "different barriers|deadlock"),
    # 3 rows of 10 classes: a warp holds 2 rows of 16 lanes, the second past n, and exits
    ("early_exit_before_shuffle", 3, 10, None, "exited"),
    ("early_exit_before_barrier", 4, 2000, None, "wait at different barriers"),
    # the kernel as it is, in blocks of 48 threads: full-mask shuffles in a partial warp
    ("unmodified", 20, 1000, 48, "do not exist"),
]


@pytest.mark.parametrize("name, n, c, block, message", UNDEFINED, ids=[u[0] for u in UNDEFINED])
def test_what_a_gpu_leaves_undefined_is_reported(modules, mutants, name, n, c, block, message):
    module = modules[XENT] if name == "unmodified" else mutants[name]
    with pytest.raises(cuemu.EmulationError, match=message):
        run_xent(module, n, c, block=block)


def test_a_vector_load_on_misaligned_rows_is_reported(mutants):
    """UBSan reports the misaligned 16-byte load; without UBSan (asan and tsan modes) the
    aligned SSE load faults, and the fault fails the launch."""
    n, c = 4, 1000
    x = fakecupy.asarray(np.zeros(n * c + 1, np.float32))[1:].reshape(n, c)
    loss, grad = fakecupy.empty(n, np.float32), fakecupy.empty((n, c), np.float32)
    with pytest.raises(cuemu.EmulationError, match="misaligned"):
        mutants["vector_load_unchecked"].get_function("softmax_xent_large_f32")(
            (n,), (64,), xent_args(x, np.zeros(n, np.int64), loss, grad, 1.0,
                                   np.zeros(1, np.int32)))


def test_the_end_of_row_barrier_is_redundant(mutants):
    """Finding: the kernel's last __syncthreads per row ("the next row reuses the shared slots")
    can go: with several rows per block and shuffled schedules the results stay right, because
    the two barriers inside xent_row already order every reuse of shared_m / shared_s. Kept for
    safety; tests/emulated/run.sh tsan confirms there is no race either."""
    for seed in range(4):
        run_xent(mutants["end_of_row_barrier_removed"], 40, 1000, grid=2, seed=seed)


def test_an_out_of_bounds_write_is_reported_in_every_mode(cp, mutants):
    """fakecupy's guard bytes around every device allocation catch it through the launcher."""
    with fakecupy.installed(K, sms=2):
        K._loaded[(0, "sigmoid_forward_f32")] = fakecupy.RawKernel(
            mutants["write_past_the_end"].get_function("sigmoid_forward_f32"))
        x = cp.asarray(np.zeros(1001, np.float32))
        with pytest.raises(cuemu.EmulationError, match=r"argument 1: wrote \d+ byte\(s\) past"):
            K.sigmoid_forward_cuda(x)


@pytest.mark.skipif(cuemu.sanitize_mode() != "asan",
                    reason="needs CUEMU_SANITIZE=asan and libasan preloaded: run.sh asan")
def test_an_out_of_bounds_write_is_reported_by_asan(mutants):
    k = mutants["write_past_the_end"].get_function("sigmoid_forward_f32")
    x = np.zeros(1001, np.float32)  # plain NumPy memory, with ASan's redzones around it
    with pytest.raises(cuemu.EmulationError, match="AddressSanitizer: heap-buffer-overflow"):
        k((1,), (256,), (x, np.empty_like(x), np.int64(x.size)))


needs_tsan = pytest.mark.skipif(cuemu.sanitize_mode() != "tsan",
                                reason="needs CUEMU_SANITIZE=tsan and libtsan preloaded: run.sh tsan")


@needs_tsan
def test_tsan_reports_the_tree_reduction_without_its_barrier(mutants):
    k = mutants["tree_barrier_removed"].get_function("loss_sum_f64")
    with pytest.raises(cuemu.EmulationError, match="ThreadSanitizer: data race"):
        k((1,), (1024,), (np.ones(3000), np.int64(3000), np.float64(1), np.zeros(())))


@needs_tsan
def test_tsan_reports_the_first_xent_barrier_removed(mutants):
    with pytest.raises(cuemu.EmulationError, match="ThreadSanitizer: data race"):
        run_xent(mutants["first_barrier_removed"], 3, 1000)


@needs_tsan
def test_tsan_finds_no_race_without_the_end_of_row_barrier(mutants):
    run_xent(mutants["end_of_row_barrier_removed"], 12, 1000, grid=2)
