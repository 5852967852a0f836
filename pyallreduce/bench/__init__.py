"""pyallreduce's allreduce microbenchmark: ``mpiexec -n N pyallreduce-bench --help`` (or ``python -m pyallreduce.bench``)."""
