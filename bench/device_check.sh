#!/usr/bin/env bash
# The device check: on a machine with a CUDA GPU (no network needed), run the GPU tests, then the
# benchmarks, then write report.json and report.md (device, driver, CUDA/CuPy versions, date, test
# summary, benchmark table) into OUT_DIR.
#
#   bench/device_check.sh OUT_DIR           # from anywhere; runs from the checkout, PYTHONPATH=.
#
# Needs python3 (or $PYTHON) with CuPy, PyTorch, pytest and pytest-benchmark. Each step runs under
# `timeout`, so the whole check stays under 6 minutes (TESTS_TIMEOUT + BENCH_TIMEOUT + ~20 s).
# Exit status: 0 when tests and benchmarks passed and the report was written.
set -uo pipefail

out=${1:?usage: bench/device_check.sh OUT_DIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$repo" || exit 2
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

# What runs: add test folders and benchmark files here (benchmarks share bench/conftest.py).
TESTS=(tests/gpu)
BENCHES=(bench/bench_kernels.py)
TESTS_TIMEOUT=${TESTS_TIMEOUT:-200}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-130}

start=$(date +%s)
echo "== GPU tests: ${TESTS[*]} (limit ${TESTS_TIMEOUT}s)"
timeout -k 10 "$TESTS_TIMEOUT" "$PY" -m pytest "${TESTS[@]}" -q -rs -p no:cacheprovider \
    --junitxml="$out/gpu_tests.xml" 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== benchmarks: ${BENCHES[*]} (limit ${BENCH_TIMEOUT}s)"
timeout -k 10 "$BENCH_TIMEOUT" "$PY" -m pytest "${BENCHES[@]}" -q -p no:cacheprovider \
    --benchmark-only --benchmark-json="$out/bench.json" \
    --benchmark-columns=median,iqr,rounds --benchmark-sort=name 2>&1 | tee "$out/bench.log"
bench_rc=${PIPESTATUS[0]}

echo "== report"
timeout -k 5 60 "$PY" bench/report.py --out "$out" --bench-json "$out/bench.json" \
    --junit "$out/gpu_tests.xml" --tests-rc "$tests_rc" --bench-rc "$bench_rc" \
    --seconds "$(( $(date +%s) - start ))"
report_rc=$?
cat "$out/report.md" 2>/dev/null

echo "== done in $(( $(date +%s) - start ))s: tests rc=$tests_rc, benchmarks rc=$bench_rc," \
     "report rc=$report_rc (124 = timed out)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$report_rc" -eq 0 ]
