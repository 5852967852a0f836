"""pyallreduce's C++ core: transports, allreduce algorithms and reductions."""

import enum
from typing import Any, Callable

class DType(enum.Enum):
    float32 = 0
    float64 = 1
    float16 = 2
    bfloat16 = 3
    int32 = 4
    int64 = 5

class ReduceOp(enum.Enum):
    sum = 0
    avg = 1
    min = 2
    max = 3
    prod = 4

class Collective(enum.Enum):
    allreduce = 0
    reduce_scatter = 1
    allgather = 2
    broadcast = 3
    barrier = 4

class Algorithm(enum.Enum):
    auto = 0
    recursive_doubling = 3
    halving_doubling = 2
    ring = 1
    hierarchical = 4
    binomial_tree = 5
    scatter_allgather = 6

def algorithms_of(collective: Collective) -> list[Algorithm]:
    """The concrete algorithms of a collective, fewest messages first."""

class CommunicatorOptions:
    check_arguments: bool
    ring_segment_bytes: int
    ring_receive_window: int
    hierarchical_pieces: int
    """Pieces algorithm='hierarchical' pipelines between its levels; 0 for the cost model's."""
    streaming_store_bytes: int
    algorithm_rules: str
    between_hosts_rules: str
    log_selection: Callable[[str], None] | None
    """Called with each distinct call's algorithm and why; None for no log."""
    device_transport: str | None
    """How CUDA buffers travel: 'nccl', 'mpi', or None for NCCL where libnccl.so.2 loads, else MPI."""
    timeout_s: float
    on_break: Callable[[Communicator, str], None] | None
    @overload
    def __init__(self) -> None: ...
    @overload
    def __init__(self, other: CommunicatorOptions) -> None:
        """A copy of `other`."""

class LocalWorld:
    def __init__(self, size: int, grouped: bool = False, hosts: list[int] = ...) -> None:
        """An in-process world of `size` ranks; `grouped` keeps NCCL's group semantics, `hosts` names
        each rank's host (see pyallreduce.testing.spawn_local)."""
    @property
    def size(self) -> int: ...
    @property
    def grouped(self) -> bool: ...
    def abort(self, reason: str) -> None:
        """Wake every rank blocked in this world with an error carrying `reason`."""
    def inject_fault(self, rank: int, kind: str, message: int, seconds: float = 0.0) -> None:
        """Make `rank`'s send number `message` (counted from 0, argument checks included) late by `seconds`
        ('stall'), every send from it on late ('slow'), or one byte short ('short')."""

class TimeoutError(RuntimeError):
    """A call waited longer than the communicator's timeout. The message says which call, where in its
    algorithm, which peer it waited for, and which rank holds the call up."""

class CallRecord:
    """One call of a communicator's flight recorder."""
    call: int
    operation: str
    count: int
    dtype: DType
    reduces: bool
    """whether op means anything for this operation"""
    op: ReduceOp
    algorithm: Algorithm
    state: str
    where: str
    started_s: float
    ended_s: float
    error: str

class Communicator:
    @staticmethod
    def from_mpi(mpi4py_comm: object, options: CommunicatorOptions, max_message_bytes: int = 2147483647,
                 shared_memory_message_bytes: int = 0) -> Communicator:
        """Duplicate an mpi4py communicator (collective) and communicate over MPI point-to-point, and over
        shared-memory pipes to the ranks of this host for messages of at most shared_memory_message_bytes."""
    @staticmethod
    def local(world: LocalWorld, rank: int, options: CommunicatorOptions) -> Communicator:
        """Rank `rank` of an in-process world; each rank must run on its own thread."""
    @property
    def rank(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def hosts(self) -> list[int]:
        """Each rank's host, numbered from 0 in the order of the hosts' lowest ranks."""
    @property
    def freed(self) -> bool: ...
    @property
    def check_arguments(self) -> bool: ...
    def set_cost_model(self, model: CostModel, source: str) -> None:
        """The constants algorithm="auto" uses from now on, and where they came from (for the log)."""
    ring_segment_bytes: int
    ring_receive_window: int
    streaming_store_bytes: int
    """Out-of-place calls of at least this many bytes store their outputs around the cache."""
    shared_memory_message_bytes: int
    """Messages of at most this many bytes to a rank of this host go through shared-memory pipes (0: none
    do). Only an MPI communicator has it; set it alike on every rank, between calls."""
    @property
    def shared_memory_absent(self) -> str:
        """Why this rank has no shared-memory pipes, or '' where it has them."""
    @property
    def device_transport(self) -> str | None:
        """The transport CUDA calls use ('nccl' or 'mpi'), or None before pyallreduce._cuda is loaded."""
    def allreduce_coalesced(
        self, tensors: list, op: object, algorithm: object, bucket_bytes: int, stream: int | None = None
    ) -> list:
        """Reduce every tensor of the list in place, packed into buckets of at most `bucket_bytes`; returns the list. See pyallreduce.Communicator.allreduce_coalesced."""
    def loopback(self, x: object, out: object, stream: int | None = None) -> None:
        """Send x's bytes to this rank itself into out over the transport x would use (see
        pyallreduce.testing.loopback)."""
    def ping_pong(self, first: int, second: int, bytes: int, repeats: int) -> list[float]:
        """One-way seconds of each of `repeats` ping-pongs of `bytes` between ranks first and second over
        the host transport (after an untimed one); on the other ranks [] at once."""
    def allreduce(self, x: object, op: object, algorithm: object, out: object, stream: int | None = None) -> object:
        """Reduce `x` across all ranks, in place or into `out` (None for in place); returns the result's object. See pyallreduce.Communicator.allreduce."""
    def reduce_scatter(self, x: object, out: object, op: object, algorithm: object, stream: int | None = None) -> object:
        """Reduce x (world size blocks) across all ranks into out, this rank's block; returns out. See
        pyallreduce.Communicator.reduce_scatter."""
    def allgather(self, x: object, out: object, algorithm: object, stream: int | None = None) -> object:
        """Gather every rank's x into out, rank r's as block r; returns out. See
        pyallreduce.Communicator.allgather."""
    def broadcast(self, x: object, root: object, algorithm: object, stream: int | None = None) -> object:
        """Copy rank root's x into x on every rank; returns x. See pyallreduce.Communicator.broadcast."""
    def barrier(self) -> None:
        """Return once every rank has called it."""
    def choose_algorithm(
        self, requested: Algorithm, bytes: int, collective: Collective = Collective.allreduce
    ) -> tuple[Algorithm, str]:
        """The algorithm a call of `collective` on `bytes` would use, and why."""
    def packing_limit(self, requested: Algorithm = Algorithm.auto) -> int:
        """The least span allreduce_coalesced reduces where it lies rather than packing it with others."""
    def free(self) -> None:
        """Release the transport; later calls raise ValueError."""
    def flight_record(self) -> list[CallRecord]:
        """The last calls (at most 64), oldest first; the running one with the step it is in."""
    @property
    def broken_reason(self) -> str:
        """Why the communicator is broken, or '' while it works."""
    @property
    def timeout_s(self) -> float: ...

def check_options(options: CommunicatorOptions) -> None:
    """Raise ValueError where a communicator could not be built with `options`."""
def describe_call(
    x: object, op: object, algorithm: object, collective: Collective = Collective.allreduce
) -> tuple[int, DType | None, ReduceOp | None, Algorithm, int | None]:
    """(count, dtype, op, algorithm, stream) of a call of `collective` on `x` (a buffer, or a list of
    them; op None where the collective has none) made on this thread; stream is the CUDA stream (a cudaStream_t as an integer) it is ordered on: torch's
    current stream on the tensor's device, or the stream a __cuda_array_interface__ names (legacy
    default, 0, when it names none), None for host buffers. Raises as the call would."""
def _register_device_backend(backend: object) -> None:
    """Called by pyallreduce._cuda when imported: the backend for CUDA buffers."""
def mpi_library_version() -> str: ...
def mpi_built_against() -> str: ...
def streaming_vector_bytes() -> int:
    """The vector size from which out-of-place combines write around the cache."""

def lars_step(
    params: list[Any],
    grads: list[Any],
    momentum_buffers: list[Any] | None,
    adapt: list[bool],
    momentum_corrections: list[float],
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    eps: float,
    nesterov: bool,
    trust_clip: bool,
    threads: int,
    tile_bytes: int = 0,
    known_w_squares: list[float] | None = None,
) -> list[float]:
    """One fused LARS step over contiguous CPU float32 or float64 tensors, in place, in tiles of
    tile_bytes (0: the last-level cache); the same bits whatever threads and tile_bytes are.
    known_w_squares: per tensor, the sum of squares of its parameters that the previous step
    returned, if nothing wrote them since, else NaN (None: all NaN). Returns each adapted
    tensor's sum of squares after the step, NaN for the others."""

class LinkCost:
    """What a message costs on one level: inside a host, or between hosts."""
    def __init__(
        self, alpha_s: float, beta_s_per_byte: float, rendezvous_bytes: int = ..., rendezvous_s: float = 0.0
    ) -> None: ...
    @property
    def alpha_s(self) -> float:
        """seconds per message"""
    @property
    def beta_s_per_byte(self) -> float:
        """seconds per byte sent"""
    @property
    def rendezvous_bytes(self) -> int:
        """messages of at least this many bytes go by rendezvous"""
    @property
    def rendezvous_s(self) -> float:
        """extra seconds per rendezvous message"""

def describe_layout(hosts: int | list[int]) -> str:
    """A layout (each rank's host) as the ranks per host: "2 hosts x 4 ranks", "2 hosts (3, 2 ranks)"."""

class CostModel:
    """The cost model of an allreduce, per level (see docs/design.md)."""
    def __init__(self, inside: LinkCost, between: LinkCost, gamma_s_per_byte: float) -> None: ...
    @staticmethod
    def default() -> CostModel:
        """The constants that algorithm="auto" uses."""
    @property
    def inside(self) -> LinkCost:
        """messages between ranks of one host"""
    @property
    def between(self) -> LinkCost:
        """messages between hosts, through one host's link"""
    @property
    def gamma_s_per_byte(self) -> float:
        """seconds per byte combined"""
    def predict(
        self,
        algorithm: Algorithm,
        bytes: int,
        hosts: int | list[int],
        ring_segment_bytes: int = 1048576,
        collective: Collective = Collective.allreduce,
    ) -> float:
        """Predicted seconds for one call of `collective` on `bytes` (an allgather's output, a
        reduce-scatter's input) over `hosts`: a world size (one host) or each rank's host (any
        numbers; equal means shared), the ring cut into segments of `ring_segment_bytes`."""
    def between_hosts(
        self, bytes: int, hosts: int | list[int], ring_segment_bytes: int = 1048576
    ) -> tuple[Algorithm, float]:
        """hierarchical's algorithm between hosts for a call of `bytes`, and its predicted seconds."""
    def hierarchical_pieces(
        self,
        bytes: int,
        hosts: int | list[int],
        ring_segment_bytes: int = 1048576,
        collective: Collective = Collective.allreduce,
    ) -> tuple[int, float]:
        """How many pieces hierarchical pipelines for a call of `collective` on `bytes` with the ring
        between hosts, and the predicted seconds (1 and infinity where no host has several ranks)."""
