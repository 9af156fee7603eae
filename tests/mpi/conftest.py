"""tests/mpi run in any world: as a world of one in the plain test run, and with 2 ranks through

    mpiexec -n 2 python tests/mpi/run.py        # (run.py: only rank 0 writes to stdout)

Every rank runs the same tests in the same order (their collectives match). A failure on any rank
prints that rank's report and aborts every rank at once, so a rank left waiting in a collective
never hangs the run."""
import sys

import pytest

import gpugrad.distributed as dist

WORLD = dist.init()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and WORLD.size > 1:
        print(f"\n[rank {WORLD.rank}] FAILED {item.nodeid} ({report.when}):\n"
              f"{report.longreprtext}", file=sys.stderr)
        dist.abort(1)
