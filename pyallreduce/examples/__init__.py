"""Runnable examples: ``python -m pyallreduce.examples.large_batch`` under mpiexec."""
