"""The data-parallel tests with several ranks (CI runs 2):

    mpiexec -n 2 python tests/mpi/run.py [pytest options]

Every rank runs pytest on tests/mpi (their collectives match test by test); only rank 0 writes to
stdout, every rank to stderr (a failing rank's report, then MPI_Abort: see conftest.py)."""
import os
import sys

import pytest
from mpi4py import MPI

if __name__ == "__main__":
    if MPI.COMM_WORLD.Get_rank() != 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", here, *sys.argv[1:]]))
