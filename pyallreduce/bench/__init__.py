"""pyallreduce's allreduce microbenchmark: ``mpiexec -n N python -m pyallreduce.bench --help``."""
