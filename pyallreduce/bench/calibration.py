"""What the machine does, measured at the start of a benchmark run: the cost
model's constants per level (pyallreduce.tune's measurement: inside a host,
and between hosts where there are several), the memory bandwidth that bounds
any collective on one rank, and the link bandwidth that bounds it across
hosts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mpi4py import MPI

from .. import _C, tune
from .collectives import Collective


@dataclass(frozen=True)
class Calibration:
    tuning: tune.Tuning  # measured in this run, both levels where the layout has them
    hosts: list[int]  # each rank's host
    memory_bytes_per_s: float  # tune's a += b, counting every byte read and written (3 per byte of b)

    def model(self) -> _C.CostModel:
        return self.tuning.model()

    def memory_limit_s(self, collective: Collective, nbytes: int) -> float:
        """The least time `collective` on ``nbytes`` can take on one rank:
        the bytes that must cross its memory bus (collectives.py, e.g. 4n
        for an allreduce) at the a += b rate."""
        return collective.memory_bytes(nbytes) / self.memory_bytes_per_s

    def link_limit_s(self, collective: Collective, nbytes: int) -> float | None:
        """The least time `collective` on ``nbytes`` can take across H > 1
        hosts: the bytes that must cross one host's link (collectives.py,
        e.g. 2n(H-1)/H for an allreduce) at the measured rate between hosts
        (None on one host)."""
        hosts = len(set(self.hosts))
        if hosts == 1:
            return None
        return collective.link_bytes(nbytes, hosts) * self.tuning.between.beta_s_per_byte

    def describe(self) -> list[str]:
        lines = [f"calibration ({_C.describe_layout(self.hosts)}): inside a host {self.tuning.inside.describe()}"]
        if len(set(self.hosts)) > 1:
            lines.append(f"calibration: between hosts {self.tuning.between.describe()}")
        lines.append(f"calibration: combine {1e-9 / self.tuning.gamma_s_per_byte:.1f} GB/s; memory (a += b, all "
                     f"ranks at once) {self.memory_bytes_per_s / 1e9:.1f} GB/s per rank")
        return lines

    def as_dict(self) -> dict:
        return asdict(self)


def calibrate(world: MPI.Comm, comm: Any) -> Calibration:
    """Collective over ``world``, of which the pyallreduce communicator
    ``comm`` is a duplicate (its messages are timed); every rank gets the
    same numbers."""
    tuning = tune.measure(world, comm)
    return Calibration(tuning, comm.hosts, 3 / tuning.gamma_s_per_byte)
