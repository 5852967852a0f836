"""Runnable examples, under mpiexec: ``python -m pyallreduce.examples.large_batch``
(the large-batch recipes on MNIST-1D) and ``python -m pyallreduce.examples.ddp_train``
(DDP with pyallreduce's hook). They need the ``[examples]`` extra and torch."""
