"""Communicator options from keyword arguments and PYALLREDUCE_* variables."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from . import _C

logger = logging.getLogger("pyallreduce")

# Variables read when a communicator is created:
#   PYALLREDUCE_ALGO                rules for algorithm="auto", e.g.
#                                   "recursive_doubling:0-4096;ring:4097-max", or one name
#   PYALLREDUCE_ALGO_BETWEEN_HOSTS  the same for algorithm="hierarchical"'s flat algorithm between
#                                   hosts (by the call's bytes); default: the cost model
#   PYALLREDUCE_CHECK               "0" turns off the cross-rank argument check
#   PYALLREDUCE_DEBUG               level of the `pyallreduce` logger (INFO, or 1: each distinct
#                                   call's algorithm and why), with a handler to stderr
#   PYALLREDUCE_RING_SEGMENT_BYTES  ring pipelining granularity (default: pyallreduce.tune's
#                                   measurement for the layout, else 1048576)
#   PYALLREDUCE_RING_RECEIVE_WINDOW  receives the ring posts ahead (default: pyallreduce.tune's
#                                   measurement for the layout, else 4)
#   PYALLREDUCE_HIERARCHICAL_PIECES  pieces algorithm="hierarchical" pipelines between its levels
#                                   (default: the cost model's count for each call)
#   PYALLREDUCE_STREAMING_STORE_BYTES  out-of-place calls from this size store their outputs
#                                   around the cache (default: pyallreduce.tune's measurement for
#                                   the layout, else a quarter of the last-level cache)
#   PYALLREDUCE_MPI_MAX_MESSAGE_BYTES  largest single MPI message (default INT_MAX)
#   PYALLREDUCE_CUDA_TRANSPORT      how CUDA buffers travel: "nccl", "mpi" (staged through
#                                   pinned host memory) or "auto" (NCCL where it loads)
#   PYALLREDUCE_TIMEOUT             seconds a call may wait for its peers (default 300; 0: forever)
#   PYALLREDUCE_ON_ERROR            "raise" (default) or "abort": what a rank does when a call breaks
#                                   its communicator (see README, "When something goes wrong")
#   PYALLREDUCE_DEBUG_DIR           where each rank writes its flight record when a call breaks
#                                   (default: a summary on stderr)

DEFAULT_TIMEOUT_S = 300.0


def cache_dir() -> Path:
    """pyallreduce's folder for what it measures or makes once per machine:
    $XDG_CACHE_HOME/pyallreduce, else ~/.cache/pyallreduce."""
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache) / "pyallreduce"
ON_ERROR_CHOICES = ("raise", "abort")


def _positive_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name}={text!r} is not a positive integer")
    return value


def env_flag(name: str, default: bool) -> bool:
    """A 0/1 variable (also true/false, yes/no, on/off); `default` when unset."""
    text = os.environ.get(name, "").strip().lower()
    if text == "":
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={text!r}: expected 0 or 1")


CUDA_TRANSPORTS = ("auto", "nccl", "mpi")

_DEBUG_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "1": logging.INFO, "WARNING": logging.WARNING,
                 "WARN": logging.WARNING, "0": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes, not to the one
    there was at import (as logging's last-resort handler does)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


_debug_handler = _StderrHandler()
_debug_handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))


def configure_logging() -> None:
    """PYALLREDUCE_DEBUG sets the `pyallreduce` logger's level (DEBUG, INFO,
    WARNING, ERROR, CRITICAL in any case, or 1 for INFO, 0 for WARNING) and
    sends it to stderr. Unset, the logger is left as the application set it."""
    text = os.environ.get("PYALLREDUCE_DEBUG", "").strip()
    if text == "":
        return
    level = _DEBUG_LEVELS.get(text.upper())
    if level is None:
        raise ValueError(f"PYALLREDUCE_DEBUG={text!r}: expected a logging level (DEBUG, INFO, WARNING, ERROR) or 1")
    logger.setLevel(level)
    if _debug_handler not in logger.handlers:
        logger.addHandler(_debug_handler)


def timeout_seconds(timeout: float | None) -> float:
    """``timeout`` (seconds), else PYALLREDUCE_TIMEOUT, else the default; 0 means forever."""
    if timeout is None:
        text = os.environ.get("PYALLREDUCE_TIMEOUT", "").strip()
        if text == "":
            return DEFAULT_TIMEOUT_S
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(f"PYALLREDUCE_TIMEOUT={text!r} is not a number of seconds") from None
        where = f"PYALLREDUCE_TIMEOUT={text!r}"
    else:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        where = f"timeout={timeout!r}"
    if not timeout >= 0 or timeout == float("inf"):
        raise ValueError(f"{where}: expected a non-negative, finite number of seconds (0 waits forever)")
    return float(timeout)


def on_error_choice() -> str:
    text = os.environ.get("PYALLREDUCE_ON_ERROR", "raise").strip().lower() or "raise"
    if text not in ON_ERROR_CHOICES:
        raise ValueError(f"PYALLREDUCE_ON_ERROR={text!r}: expected one of {', '.join(ON_ERROR_CHOICES)}")
    return text


def communicator_options(
    check: bool | None,
    ring_segment_bytes: int | None,
    cuda_transport: str | None = None,
    timeout: float | None = None,
) -> _C.CommunicatorOptions:
    options = _C.CommunicatorOptions()
    options.timeout_s = timeout_seconds(timeout)
    options.check_arguments = env_flag("PYALLREDUCE_CHECK", True) if check is None else bool(check)
    options.ring_segment_bytes = (
        _positive_int("PYALLREDUCE_RING_SEGMENT_BYTES", options.ring_segment_bytes)
        if ring_segment_bytes is None
        else ring_segment_bytes
    )
    options.ring_receive_window = _positive_int("PYALLREDUCE_RING_RECEIVE_WINDOW", options.ring_receive_window)
    options.hierarchical_pieces = _positive_int("PYALLREDUCE_HIERARCHICAL_PIECES", options.hierarchical_pieces)
    options.streaming_store_bytes = _positive_int("PYALLREDUCE_STREAMING_STORE_BYTES", options.streaming_store_bytes)
    options.algorithm_rules = os.environ.get("PYALLREDUCE_ALGO", "")
    options.between_hosts_rules = os.environ.get("PYALLREDUCE_ALGO_BETWEEN_HOSTS", "")
    configure_logging()
    options.log_selection = logger.info if logger.isEnabledFor(logging.INFO) else None
    transport = os.environ.get("PYALLREDUCE_CUDA_TRANSPORT", "auto") if cuda_transport is None else cuda_transport
    if transport not in CUDA_TRANSPORTS:
        raise ValueError(f"CUDA transport {transport!r}: expected one of {', '.join(CUDA_TRANSPORTS)}")
    options.device_transport = None if transport == "auto" else transport
    return options


def mpi_max_message_bytes() -> int:
    return _positive_int("PYALLREDUCE_MPI_MAX_MESSAGE_BYTES", 2**31 - 1)


def shm_message_bytes() -> int | None:
    """PYALLREDUCE_SHM_MESSAGE_BYTES: messages of at most this many bytes to a
    rank of the same host go through shared-memory pipes, 0 for none; None
    where it is not set (pyallreduce.tune's measurement then decides)."""
    text = os.environ.get("PYALLREDUCE_SHM_MESSAGE_BYTES")
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise ValueError(f"PYALLREDUCE_SHM_MESSAGE_BYTES={text!r} is not a non-negative integer")
    return int(text)
