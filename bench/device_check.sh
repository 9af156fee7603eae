#!/usr/bin/env bash
# The device check, for a lent GPU machine (no network, a fixed image: python3 with numpy, CuPy,
# PyTorch, pytest, pytest-benchmark; the project's pins do not apply). From the checkout:
#
#   bench/device_check.sh OUT_DIR        # runs with PYTHONPATH=<checkout>; $PYTHON overrides python3
#
# Stages, in order; each writes its results into OUT_DIR before the next starts, and each runs
# under `timeout` (limits sized for a cold start on 16 cores: kernel compiles, cuBLAS/cuRAND
# initialisation). The limits add up to 415 s, plus at most 3 s of kill grace per stage, so the
# whole check stays under 7 minutes:
#   preflight     45 s  gg.cuda probe (NVRTC kernel, cuBLAS GEMM, cuRAND) and the CUDA-graph probe;
#                       when CUDA is unusable it prints why and cupy.show_config() and STOPS (exit 3)
#   gpu_tests    130 s  pytest tests/gpu (JUnit XML)
#   train         50 s  gpugrad train --device cuda on digits (spiral without scikit-learn)
#   bench_kernels 55 s  the fused kernels against copy bandwidth, CuPy and PyTorch
#   bench_cuda    75 s  training steps on cuda (executor, CUDA graph, eager, floor, torch), eager
#                       overhead, host <-> device copies
#   bench_cpu     40 s  the same training steps on the CPU, smallest model, batch 64 and 512
#   report        20 s  report.json + report.md: what ran on the GPU, what did not, and why
# Exit status: 0 when every stage passed; 3 when CUDA is unusable (preflight); else 1.
set -uo pipefail

out=${1:?usage: bench/device_check.sh OUT_DIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$repo" || exit 2
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# CuPy's kernel cache in a writable temporary folder (the image's home may be read-only); shared
# by every stage, so a kernel compiled by the tests is not compiled again by the benchmarks
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$(mktemp -d)/cupy-cache}
mkdir -p "$CUPY_CACHE_DIR"
PY=${PYTHON:-python3}
start=$(date +%s)
: >"$out/stages.tsv"

stage() {  # stage NAME LIMIT COMMAND...: run, log to $out/NAME.log, record "name rc seconds limit"
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "== $name (limit ${limit}s)"
    t0=$(date +%s)
    timeout -k 3 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >>"$out/stages.tsv"
    return "$rc"
}

report() {
    stage report 20 "$PY" bench/report.py --out "$out" --stages "$out/stages.tsv" \
        --preflight "$out/preflight.json" --train-metrics "$out/train/metrics.json" \
        --bench-json "$out/bench_kernels.json" --bench-json "$out/bench_cuda.json" \
        --bench-json "$out/bench_cpu.json" --junit "$out/gpu_tests.xml" \
        --seconds "$(( $(date +%s) - start ))"
    cat "$out/report.md" 2>/dev/null
}

stage preflight 45 "$PY" - "$out/preflight.json" <<'EOF'
import json, sys, time
t0 = time.perf_counter()
import gpugrad as gg
ok = gg.cuda.is_available()
info = {"usable": ok, "reason": gg.cuda.unavailable_reason(),
        "checks": [list(row) for row in gg.cuda.probe_report()]}
for name, passed, detail in info["checks"]:
    print(f"  {name:<7} {'ok' if passed else 'FAILED'}: {detail}")
if ok:
    info["device"] = gg.cuda.device_name()
    info["graphs"], info["graphs_reason"] = gg.cuda.graphs_available(), \
        gg.cuda.graphs_unavailable_reason()
    print(f"  graphs  {'ok' if info['graphs'] else 'FAILED'}: {info['graphs_reason'] or 'GEMM + kernel + reductions captured and replayed'}")
else:
    print(f"preflight: CUDA is not usable: {info['reason']}")
    try:
        import cupy
        cupy.show_config()
    except Exception as e:
        print(f"(cupy.show_config() failed: {type(e).__name__}: {e})")
info["seconds"] = round(time.perf_counter() - t0, 1)
open(sys.argv[1], "w").write(json.dumps(info, indent=2, default=str) + "\n")
sys.exit(0 if ok else 3)
EOF
pre_rc=$?
if [ "$pre_rc" -ne 0 ]; then
    echo "preflight failed (exit $pre_rc): nothing ran on a GPU; see $out/preflight.log"
    report
    exit 3
fi

failed=0
stage gpu_tests 130 "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider \
    --junitxml="$out/gpu_tests.xml" || failed=1
# digits comes with scikit-learn; an image without it trains the generated spiral instead
dataset=digits
"$PY" -c "import sklearn" 2>/dev/null || { dataset=spiral; echo "no scikit-learn: training spiral"; }
stage train 50 "$PY" -m gpugrad train --dataset "$dataset" --device cuda --no-progress \
    --out "$out/train" || failed=1

bench() {  # bench NAME LIMIT PYTEST-ARGS...: one benchmark run, its JSON in $out/NAME.json
    local name=$1 limit=$2
    shift 2
    stage "$name" "$limit" "$PY" -m pytest "$@" -q -p no:cacheprovider --benchmark-only \
        --benchmark-json="$out/$name.json" --benchmark-columns=median,iqr,rounds \
        --benchmark-sort=name
}
bench bench_kernels 55 bench/bench_kernels.py || failed=1
bench bench_cuda 75 bench/bench_train.py bench/bench_ops.py \
    -k "(train_step and cuda) or eager_overhead or host_device_copy" || failed=1
bench bench_cpu 40 bench/bench_train.py -k "train_step and cpu and 784-256-256-10 and not b4096" \
    --benchmark-max-time=0.25 --benchmark-min-rounds=3 || failed=1

report || failed=1
echo "== done in $(( $(date +%s) - start ))s; stages (name rc seconds limit; 124 = timed out):"
cat "$out/stages.tsv"
exit "$failed"
