"""Tests that run in any world: a world of one in the plain run, 2 ranks under mpiexec (run.py)."""
