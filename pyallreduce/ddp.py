"""A DDP communication hook that reduces gradient buckets with pyallreduce.

    import pyallreduce, pyallreduce.distributed
    from pyallreduce.ddp import HookState, allreduce_hook

    pyallreduce.distributed.init_process_group("gloo")     # under mpirun
    model = torch.nn.parallel.DistributedDataParallel(net)
    model.register_comm_hook(HookState(pyallreduce.init()), allreduce_hook)

DDP hands the hook each gradient bucket as soon as backward has filled it. The
hook queues the bucket's allreduce on the communicator's progress thread and
returns a future at once, so buckets are reduced while backward goes on; they
complete in the order DDP hands them over. The result is the average over the
ranks: each rank's loss is the mean over its own micro-batch, so averaging the
gradients normalizes by the global batch (Goyal et al., remark 3).
"""

# No `from __future__ import annotations`: DDP compares the hook's annotations
# with the classes themselves, so they must not be strings.
import contextlib
from dataclasses import dataclass

from ._optional import require

require("torch", "torch", "pyallreduce.ddp")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from ._communicator import ALGORITHMS, Communicator  # noqa: E402

COMPRESSIONS = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}
HALF_DTYPES = tuple(dtype for dtype in COMPRESSIONS.values() if dtype is not None)


@dataclass
class HookState:
    """What :func:`allreduce_hook` needs, passed to ``register_comm_hook``.

    Args:
        comm: the communicator over the same ranks as the DDP process group,
            in the same order (``pyallreduce.init()`` under an MPI launch).
        algorithm: as for :meth:`Communicator.allreduce`.
        compression: None, "fp16" or "bf16": each bucket is divided by the
            world size, cast to that type, summed, and cast back, halving the
            bytes sent. Dividing first keeps the sum from overflowing float16.
    """

    comm: Communicator
    algorithm: str = "auto"
    compression: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.algorithm, str):
            self.algorithm = self.algorithm.lower()
        if not isinstance(self.comm, Communicator):
            raise TypeError(f"comm must be a pyallreduce.Communicator, not {type(self.comm).__name__}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be None, 'fp16' or 'bf16', not {self.compression!r}")
        if dist.is_initialized() and (dist.get_rank(), dist.get_world_size()) != (self.comm.rank, self.comm.size):
            raise ValueError(
                f"the communicator's rank {self.comm.rank} of {self.comm.size} is not this process's rank "
                f"{dist.get_rank()} of {dist.get_world_size()} in torch.distributed"
            )


def allreduce_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages ``bucket`` over all ranks with pyallreduce; register with
    ``ddp_model.register_comm_hook(state, allreduce_hook)``.

    Returns at once. An error in the allreduce (which, with the communicator's
    argument check on, every rank sees; a timeout names the rank that held
    the call up) fails the future, and DDP raises it from ``backward()`` as a
    RuntimeError whose message holds the error's type and message.
    """
    buffer = bucket.buffer()
    # A CUDA bucket's future names its device, so that whoever waits on it
    # waits for the work on that device's streams.
    outcome: torch.futures.Future = torch.futures.Future(devices=[buffer.device] if buffer.is_cuda else None)
    # torch's Future.set_exception fails a future for Python callers only; DDP
    # reads the value in C++, so an error travels as the value and a `then`
    # raises it, which fails the future DDP holds for C++ too.
    result: torch.futures.Future[torch.Tensor] = outcome.then(_value_or_raise)
    if buffer.layout != torch.strided:
        # Every rank's model has its sparse gradients in the same buckets, so
        # every rank refuses the same bucket and none waits for another.
        outcome.set_result(TypeError(
            f"pyallreduce's DDP hook reduces dense gradients only, and this bucket is {buffer.layout}: "
            "use torch's default hook for models with sparse gradients (nn.Embedding(sparse=True))"))
        return result
    # A CUDA bucket is reduced in the order of the stream backward runs on
    # here; the copy back from a compressed wire must follow it there too,
    # though it runs on the progress thread (whose current stream is another).
    stream = torch.cuda.current_stream(buffer.device) if buffer.is_cuda else None
    wire_dtype = COMPRESSIONS[state.compression]
    op = "sum"
    if wire_dtype is not None and buffer.dtype != wire_dtype:
        wire = buffer.div(state.comm.size).to(wire_dtype)
    elif buffer.dtype in HALF_DTYPES:
        # Partial sums of half-precision gradients are rounded to it at each
        # step and can overflow (float16 above 65504): divide first, as
        # torch's default hook does.
        wire = buffer.div_(state.comm.size)
    else:
        wire, op = buffer, "avg"
    pending = state.comm.allreduce_async(wire, op=op, algorithm=state.algorithm)

    def complete(done) -> None:  # runs on the progress thread
        try:
            done.result()
            if wire is not buffer:
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    buffer.copy_(wire)
        except BaseException as exc:  # noqa: BLE001 - handed to DDP through the future
            outcome.set_result(exc)
        else:
            outcome.set_result(buffer)

    pending.add_done_callback(complete)
    return result


def _value_or_raise(done: torch.futures.Future):
    value = done.value()
    if isinstance(value, BaseException):
        raise value
    return value
