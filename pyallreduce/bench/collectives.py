"""What the benchmark knows of each collective, in one table: how big its
buffers are, how its in-place form aliases them, nccl-tests' bus factor, the
bytes that bound it in memory and through a host's link, and the result its
reference expects.

A row's size is nccl-tests': the larger buffer (an allgather's output, a
reduce-scatter's input, the whole vector of an allreduce or a broadcast),
rounded down to a whole number of elements per rank where the collective
cuts it into blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _C


@dataclass(frozen=True)
class Collective:
    name: str
    reduces: bool  # takes a reduction op
    blocks: bool  # cuts the vector into one block per rank
    placements: tuple[str, ...]  # "out" (out of place) and "in" (in place) where it has both
    bus_share: str  # what busbw's factor counts, for the table's header

    @property
    def core(self) -> _C.Collective:
        return getattr(_C.Collective, self.name)

    def counts(self, count: int, world_size: int) -> tuple[int, int]:
        """(send, receive) element counts for a row of ``count`` elements,
        ``count`` a multiple of world_size where the collective has blocks."""
        if self.name == "reduce_scatter":
            return count, count // world_size
        if self.name == "allgather":
            return count // world_size, count
        return count, count

    def bus_factor(self, world_size: int) -> float:
        """busbw = algbw * this (nccl-tests' factors): the share of the row's
        bytes that the busiest rank must send (and receive) in any algorithm.
        An allreduce 2(p-1)/p, a reduce-scatter or an allgather (p-1)/p, a
        broadcast 1; 1 at p = 1."""
        p = world_size
        if p == 1 or self.name == "broadcast":
            return 1.0
        return (2 if self.name == "allreduce" else 1) * (p - 1) / p

    def memory_bytes(self, nbytes: int) -> int:
        """The bytes that must cross one rank's memory bus: an allreduce 4n
        (its input read, the others' contributions received and combined,
        its output written); a reduce-scatter 2n and an allgather 2n (its
        halves); a broadcast 2n (the vector read at its source and written
        at its destination)."""
        return (4 if self.name == "allreduce" else 2) * nbytes

    def link_bytes(self, nbytes: int, hosts: int) -> float:
        """The bytes that must cross one host's link across ``hosts`` > 1:
        the bus factor with hosts in place of ranks (each host a rank of a
        world of H), e.g. an allreduce 2n(H-1)/H."""
        return self.bus_factor(hosts) * nbytes


COLLECTIVES = {c.name: c for c in (
    Collective("allreduce", reduces=True, blocks=False, placements=("out", "in"), bus_share="2(p-1)/p"),
    Collective("reduce_scatter", reduces=True, blocks=True, placements=("out", "in"), bus_share="(p-1)/p"),
    Collective("allgather", reduces=False, blocks=True, placements=("out", "in"), bus_share="(p-1)/p"),
    # MPI_Bcast, gloo's and ours write in place: there is no out-of-place form to time.
    Collective("broadcast", reduces=False, blocks=False, placements=("in",), bus_share="1"),
)}


def calls(collective: Collective, send, recv, allocate, rank: int) -> dict:
    """Per placement of `collective`: (send, recv, prepare) for one rank,
    from its row's buffers (`send` holds the rank's input, never written;
    `allocate(n)` makes another buffer of n elements). Out of place the call
    reads send and writes recv. In place it works on views whose input
    `prepare()` restores before every call:
    - allreduce and broadcast: recv is both;
    - reduce-scatter: a copy of send, its output block r of that copy;
    - allgather: recv, its input block r of recv.
    """
    def restore(target, source=send):
        return lambda: target.copy_from(source)

    if collective.name == "reduce_scatter":
        work = allocate(len(send))
        in_place = (work, work.block(rank, len(recv)), restore(work))
    elif collective.name == "allgather":
        mine = recv.block(rank, len(send))
        in_place = (mine, recv, restore(mine))
    else:
        in_place = (recv, recv, restore(recv))
    views = {"out": (send, recv, None), "in": in_place}
    return {placement: views[placement] for placement in collective.placements}
