#!/usr/bin/env bash
# The emulated kernel tests (tests/emulated) under one sanitizer. From anywhere:
#   tests/emulated/run.sh [ubsan|asan|tsan] [pytest args...]
# ubsan (the default) needs nothing preloaded, so it is also what a plain `python -m pytest` (or
# `-m emulated`) runs. asan and tsan need the sanitizer's runtime loaded before anything else:
# LD_PRELOAD into the real Python binary (sys.executable: a pyenv shim is a shell script, which
# would run, and trip, under the sanitizer too). Compiled kernels are cached by content in
# $CUEMU_CACHE (default: a per-user folder in the temp dir); set it to a new folder for a cold run.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."
mode=${1:-ubsan}
[ $# -gt 0 ] && shift
py=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
runtime() { "${CXX:-g++}" -print-file-name="$1"; }
case $mode in
  ubsan) ;;
  asan) export LD_PRELOAD=$(runtime libasan.so) ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=0} ;;
  # every launch reports its own races (no deduplication across launches), and reports that
  # the tests provoke on purpose leave the exit status to pytest
  tsan) export LD_PRELOAD=$(runtime libtsan.so) \
          TSAN_OPTIONS=${TSAN_OPTIONS:-suppress_equal_stacks=0:suppress_equal_addresses=0:exitcode=0} ;;
  *) echo "run.sh: unknown mode '$mode' (ubsan, asan or tsan)" >&2; exit 2 ;;
esac
export CUEMU_SANITIZE=$mode PYTHONDONTWRITEBYTECODE=1
where=tests/emulated  # unless the arguments name test files or tests themselves
for arg in "$@"; do case $arg in tests/*|*.py|*::*) where= ;; esac; done
exec "$py" -m pytest -q -p no:cacheprovider -m emulated $where "$@"
