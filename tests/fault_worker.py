"""A rank of a job with one faulty rank, started by test_faults_mpi.py:

    mpiexec -n N python fault_worker.py FAULT CULPRIT [TIMEOUT]

Every rank makes 4 ring allreduces (through the DDP hook for FAULT=ddp);
rank CULPRIT, before its third, sleeps past the timeout (sleep, async, ddp),
skips it (skip), shrinks its buffer (short; meant for PYALLREDUCE_CHECK=0)
or kills itself with SIGKILL (kill). Each rank prints one line:
"rank R: ok" or "rank R: <exception type> after <s> s: <message>"."""

import os
import signal
import sys
import time

import numpy as np

import pyallreduce

fault, culprit = sys.argv[1], int(sys.argv[2])
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
comm = pyallreduce.init(timeout=timeout, **({"torch_backend": "gloo"} if fault == "ddp" else {}))


def report(line: str) -> None:
    """One line in one write: print() writes the text and the newline apart,
    and under mpiexec another rank's line can land between the two."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def disturb(i: int) -> bool:
    """The culprit's fault before call i; False to skip the call."""
    if comm.rank != culprit or i != 2:
        return True
    if fault in ("sleep", "async", "ddp"):
        time.sleep(3 * timeout + 2)
    elif fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return fault != "skip"


def plain_calls() -> None:
    x = np.ones(1 << 16, np.float32)
    for i in range(4):
        if fault == "short" and comm.rank == culprit and i == 2:
            x = np.ones((1 << 16) - 1, np.float32)
        if not disturb(i):
            continue
        if fault == "async":
            comm.allreduce_async(x, algorithm="ring").result()
        else:
            comm.allreduce(x, algorithm="ring")


def ddp_steps() -> None:
    import torch

    from pyallreduce.ddp import HookState, allreduce_hook

    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
    model.register_comm_hook(HookState(comm), allreduce_hook)
    for i in range(4):
        disturb(i)
        model(torch.ones(8, 64)).sum().backward()


started = time.monotonic()
try:
    ddp_steps() if fault == "ddp" else plain_calls()
except Exception as exc:  # noqa: BLE001 - reported for the test to read
    report(f"rank {comm.rank}: {type(exc).__name__} after {time.monotonic() - started:.1f} s: {exc}")
else:
    report(f"rank {comm.rank}: ok")
