"""Message sizes on the command line, as nccl-tests writes them."""

from __future__ import annotations

import argparse
import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes, as nccl-tests writes them: 8, 64K, 256M, 1G (powers of 1024; "KiB"/"MiB"/"GiB" too)."""
    match = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use bytes or a K/M/G suffix")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def sweep(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes
