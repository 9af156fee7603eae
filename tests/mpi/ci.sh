#!/usr/bin/env bash
# CI for gg.distributed with 2 ranks, on the CPU (about 15 s): installs the [mpi] extra (mpi4py and
# MPICH from PyPI) into the active environment, runs tests/mpi under `mpiexec -n 2`, then the launch
# tests (a rank raising mid-epoch, Ctrl-C, `gpugrad train --distributed`), which skip without
# mpiexec and so are skipped by a plain test run before this.
#
#   tests/mpi/ci.sh        # from the checkout, in the venv CI made (.ci/run)
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
python -m pip install -q ".[mpi]"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1  # one BLAS thread per rank: 2 ranks, 2 cores
timeout -k 5 300 mpiexec -n 2 python tests/mpi/run.py
timeout -k 5 300 python -m pytest -q -p no:cacheprovider tests/test_distributed_launch.py
echo "tests/mpi/ci.sh: done in $((SECONDS - start)) s"
