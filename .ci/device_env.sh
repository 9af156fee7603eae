#!/usr/bin/env bash
# CI: the lent GPU machine, without the GPU and without extras.
#
# The lent machine runs gpugrad from the checkout (PYTHONPATH=<checkout>, never pip-installed) in
# a fixed image where only numpy, cupy-cuda13x, pytest and pytest-benchmark are sure to be there.
# This builds exactly that, in a fresh venv on a machine with no GPU, and checks that gpugrad
# imports (pulling in no optional package), reports CUDA as unavailable with a reason, collects
# tests/gpu and bench, that bench/device_check.sh stops at its preflight with exit 3 and a report,
# and that what needs more (tqdm, matplotlib, scikit-learn, PyTorch, threadpoolctl) degrades to a
# one-line note, or fails with a one-line error naming what to install: never a traceback.
#
#   .ci/device_env.sh        # $PYTHON3 picks the interpreter for the venv (default python3)
#
# Exit status 0 when every check passed; any failure stops the script at once, prints that check's
# output and exits non-zero. Each check's time is printed as it ends, and all of them at the end.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
logs=$tmp/logs
mkdir -p "$logs"

# Only the four packages the lent image is sure to have; the pins are the project's (pyproject).
PACKAGES=("numpy>=2.0,<2.6" "cupy-cuda13x>=14,<15" "pytest" "pytest-benchmark")
# Importable here means the check no longer simulates the lent image.
ABSENT=(tqdm matplotlib sklearn torch hypothesis threadpoolctl scipy mnist1d)

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
begin=$(now_ms)
summary=()
current=setup
t0=$begin

step() {  # step NAME: start timing the check NAME
    current=$1
    t0=$(now_ms)
    echo "== $current"
}

done_step() {  # done_step [DETAIL]: the current check passed
    local ms=$(( $(now_ms) - t0 ))
    local line
    line=$(printf '  ok    %-16s %5d.%01d s  %s' "$current" $((ms / 1000)) $((ms % 1000 / 100)) "${1:-}")
    summary+=("$line")
    echo "$line"
}

print_summary() {
    local ms=$(( $(now_ms) - begin ))
    echo "== device_env summary"
    printf '%s\n' "${summary[@]}"
    printf '  total %21d.%01d s\n' $((ms / 1000)) $((ms % 1000 / 100))
}

fail() {  # fail MESSAGE: print the current check's logs and stop
    trap - ERR
    echo "device_env: FAILED: $current: $1" >&2
    local f
    for f in "$logs/$current".*; do
        [ -e "$f" ] || continue
        echo "---- $f" >&2
        tail -n 60 "$f" >&2
    done
    summary+=("  FAIL  $current: $1")
    print_summary >&2
    exit 1
}
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR

run() {  # run [ARGS...]: run in the lent image's way; stdout/stderr in $logs/$current.{out,err}
    PYTHONPATH=$repo "$@" >"$logs/$current.out" 2>"$logs/$current.err"
}

has() {  # has STREAM TEXT: the current check's stdout/stderr contains TEXT (fixed string)
    grep -qF -- "$2" "$logs/$current.$1"
}

no_traceback() {
    ! grep -q "Traceback" "$logs/$current.out" "$logs/$current.err" || fail "printed a traceback"
}

# ---- the environment -------------------------------------------------------------------------
step venv
"${PYTHON3:-python3}" -m venv "$tmp/venv"
# shellcheck disable=SC1091
. "$tmp/venv/bin/activate"
unset PYTHONPATH  # only what each check sets: the checkout
export PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export CUPY_CACHE_DIR=$tmp/cupy-cache
python -m pip install -q "${PACKAGES[@]}" >"$logs/venv.out" 2>"$logs/venv.err" \
    || fail "pip install ${PACKAGES[*]}"
done_step "$(python -m pip list --format=freeze 2>/dev/null \
    | grep -Ei '^(numpy|cupy-cuda13x|pytest|pytest-benchmark)==' | tr '\n' ' ')"

# ---- a. import, CUDA unavailable with a reason, gpugrad info ----------------------------------
step import
run python - "$repo" "${ABSENT[@]}" <<'EOF' || fail "the import check failed"
import importlib.metadata as md, importlib.util, os, sys
repo, absent = sys.argv[1], sys.argv[2:]
present = [m for m in absent if importlib.util.find_spec(m) is not None]
assert not present, f"the venv has {present}: it no longer looks like the lent image"
try:
    md.version("gpugrad")
    sys.exit("gpugrad is pip-installed in the venv; the lent image runs it from the checkout")
except md.PackageNotFoundError:
    pass
import gpugrad as gg  # that it imports none of them: tests/test_optional_deps.py
assert os.path.dirname(os.path.abspath(gg.__file__)) == os.path.join(repo, "gpugrad"), gg.__file__
assert gg.cuda.is_available() is False, "CUDA available on a machine without a GPU?"
reason = gg.cuda.unavailable_reason()
assert reason and reason.strip(), "CUDA unavailable without a reason"
print(reason)
EOF
done_step "cuda: $(head -c 70 "$logs/import.out")..."

step info
run python -m gpugrad info || fail "gpugrad info exited non-zero"
grep -qE "^ +cuda +no: ." "$logs/info.out" || fail "gpugrad info does not say why CUDA is unavailable"
no_traceback
done_step

# ---- b. tests/gpu and bench: collected, then run (every GPU test skips with its reason) --------
step collect
run python -m pytest --collect-only -q -p no:cacheprovider tests/gpu bench \
    || fail "pytest --collect-only tests/gpu bench: collection errors (or nothing collected)"
done_step "$(tail -n 1 "$logs/collect.out")"

step gpu_tests
run python -m pytest -q -rs -p no:cacheprovider tests/gpu || fail "pytest tests/gpu failed"
done_step "$(tail -n 1 "$logs/gpu_tests.out")"

step bench_quick
GPUGRAD_BENCH_QUICK=1 run python -m pytest bench -q -p no:cacheprovider --benchmark-disable-gc \
    --benchmark-min-rounds=1 --benchmark-max-time=0.05 --benchmark-warmup=off \
    || fail "the benchmark suites (quick) failed"
done_step "$(tail -n 1 "$logs/bench_quick.out")"

# ---- c. bench/device_check.sh stops at its preflight --------------------------------------------
step device_check
rc=0
PYTHON=$tmp/venv/bin/python run timeout -k 5 60 bench/device_check.sh "$tmp/device_check" || rc=$?
[ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || fail "bench/device_check.sh ran past 60 s"
[ "$rc" -eq 3 ] || fail "bench/device_check.sh exited $rc, expected 3 (CUDA unusable)"
has out "CUDA is not usable" || fail "bench/device_check.sh does not say CUDA is not usable"
[ -s "$tmp/device_check/report.md" ] || fail "bench/device_check.sh wrote no report.md"
done_step "exit 3, report.md written"

# ---- d. what needs more degrades: a note, or a one-line error; never a traceback --------------
step train_spiral
out=$tmp/train_spiral
run python -m gpugrad train --dataset spiral --epochs 1 --out "$out" \
    || fail "gpugrad train --dataset spiral failed without tqdm/matplotlib"
no_traceback
tail -n 1 "$logs/train_spiral.out" | grep -q "^test accuracy: " || fail "no 'test accuracy:' line"
has err "no progress bar: tqdm is not installed" || fail "no note about the missing progress bar"
has err "no plot: matplotlib is not installed" || fail "no note about the missing plot"
[ -s "$out/metrics.json" ] && [ -s "$out/model.npz" ] || fail "metrics.json or model.npz missing"
[ ! -e "$out/curves.png" ] || fail "curves.png written without matplotlib?"
done_step "$(tail -n 1 "$logs/train_spiral.out"), no bar, no plot"

step train_digits
rc=0
run python -m gpugrad train --dataset digits --epochs 1 --out "$tmp/train_digits" || rc=$?
no_traceback
[ "$rc" -ne 0 ] || fail "gpugrad train --dataset digits succeeded without scikit-learn?"
[ "$(grep -c '^gpugrad: error' "$logs/train_digits.err")" -eq 1 ] || fail "expected one one-line error"
has err "gpugrad: error: dataset 'digits' needs scikit-learn" || fail "the error names no package"
has err "pip install scikit-learn" || fail "the error does not say what to install"
done_step "exit $rc, one line"

step bench_cli
run python -m gpugrad bench --quick --device cpu --seconds 0.05 \
    || fail "gpugrad bench without PyTorch/threadpoolctl failed"
no_traceback
has out "PyTorch is not installed" || fail "gpugrad bench does not say PyTorch is missing"
done_step

print_summary
