#!/usr/bin/env bash
# The device check: on a machine with a CUDA GPU (no network needed), run the GPU tests, then the
# benchmarks, then write report.json and report.md (device, driver, CUDA/CuPy versions, date, test
# summary, benchmark table) into OUT_DIR.
#
#   bench/device_check.sh OUT_DIR           # from anywhere; runs from the checkout, PYTHONPATH=.
#
# Needs python3 (or $PYTHON) with CuPy, PyTorch, pytest and pytest-benchmark. Each step runs under
# `timeout`, so the whole check stays under 6 minutes: the limits below add up to 345 s plus at
# most 3 s of kill grace per step. NumPy's BLAS and PyTorch use every core (GPUGRAD_BENCH_THREADS
# to change it), so the GPU speedups are over a whole CPU.
# Exit status: 0 when tests and benchmarks passed and the report was written.
set -uo pipefail

out=${1:?usage: bench/device_check.sh OUT_DIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$repo" || exit 2
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

# What runs: add test folders here; benchmark runs below (they share bench/conftest.py). Each
# benchmark run writes its own JSON, so a run that times out loses only its own rows.
TESTS=(tests/gpu)
TESTS_TIMEOUT=${TESTS_TIMEOUT:-150}
KERNEL_BENCH_TIMEOUT=${KERNEL_BENCH_TIMEOUT:-95}
TRAIN_BENCH_TIMEOUT=${TRAIN_BENCH_TIMEOUT:-75}
REPORT_TIMEOUT=25

start=$(date +%s)
echo "== GPU tests: ${TESTS[*]} (limit ${TESTS_TIMEOUT}s)"
timeout -k 3 "$TESTS_TIMEOUT" "$PY" -m pytest "${TESTS[@]}" -q -rs -p no:cacheprovider \
    --junitxml="$out/gpu_tests.xml" 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

bench() {  # bench NAME LIMIT PYTEST-ARGS...: one benchmark run, JSON in $out/NAME.json
    local name=$1 limit=$2
    shift 2
    echo "== benchmarks: $name (limit ${limit}s)"
    timeout -k 3 "$limit" "$PY" -m pytest "$@" -q -p no:cacheprovider --benchmark-only \
        --benchmark-json="$out/$name.json" --benchmark-columns=median,iqr,rounds \
        --benchmark-sort=name 2>&1 | tee "$out/$name.log"
    return "${PIPESTATUS[0]}"
}
bench bench_kernels "$KERNEL_BENCH_TIMEOUT" bench/bench_kernels.py
kernels_rc=$?
# the training step on cpu and cuda (all contenders), issue 2's eager overhead and the
# host <-> device copies; CPU rows get few rounds (--benchmark-max-time): they set the speedups
bench bench_train "$TRAIN_BENCH_TIMEOUT" bench/bench_train.py bench/bench_ops.py \
    -k "train_step or eager_overhead or host_device_copy" --benchmark-max-time=0.25 \
    --benchmark-min-rounds=3
train_rc=$?
bench_rc=$(( kernels_rc != 0 ? kernels_rc : train_rc ))

echo "== report"
timeout -k 3 "$REPORT_TIMEOUT" "$PY" bench/report.py --out "$out" \
    --bench-json "$out/bench_kernels.json" --bench-json "$out/bench_train.json" \
    --junit "$out/gpu_tests.xml" --tests-rc "$tests_rc" --bench-rc "$bench_rc" \
    --seconds "$(( $(date +%s) - start ))"
report_rc=$?
cat "$out/report.md" 2>/dev/null

echo "== done in $(( $(date +%s) - start ))s: tests rc=$tests_rc, benchmarks rc=$kernels_rc" \
     "(kernels) $train_rc (train), report rc=$report_rc (124 = timed out)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$report_rc" -eq 0 ]
