"""How many CPU threads torch uses in ``ann-seg infer`` and the benchmark tools.

PyTorch's default is one OpenMP thread per core. When other processes keep cores busy, every
parallel region waits for a descheduled thread: on a 2-core machine with one other busy
process, ``ann-seg infer`` with torch's default 2 threads ran 12-23x slower than with 1. The
default here therefore takes only the cores the 1-minute load average leaves free, at least 1
and at most torch's default; ``OMP_NUM_THREADS`` in the environment, or ``--threads N``, wins.
"""

import argparse
import os
from typing import Optional

import torch

from .distributed import RankInfo

THREADS_HELP = (
    "torch CPU threads (default: torch's, capped by the cores the 1-minute load average "
    "leaves free, at least 1; OMP_NUM_THREADS set wins): on a 2-core machine with another "
    "busy process, 2 threads ran 12-23x slower than 1"
)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Threads that do not oversubscribe the machine: torch's default (``OMP_NUM_THREADS``
    when set, else one per core) capped by the cores the 1-minute load average leaves free
    (rounded to the nearest core), at least 1."""
    torch_default = max(1, torch.get_num_threads())
    if os.environ.get("OMP_NUM_THREADS"):
        return torch_default
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return torch_default
    free = int(available_cores() - load + 0.5)
    return max(1, min(torch_default, free))


def choose_threads(requested: Optional[int] = None) -> int:
    """``torch.set_num_threads(requested or default_threads())``; returns the count."""
    if requested is not None and requested < 1:
        raise ValueError(f"--threads must be >= 1, got {requested}")
    threads = requested or default_threads()
    torch.set_num_threads(threads)
    return threads


def _thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (validated; ``None`` = ``default_threads()``), for ``choose_threads``."""
    parser.add_argument("--threads", type=_thread_count, metavar="N", help=THREADS_HELP)


def choose_rank_threads(requested: Optional[int], info: RankInfo) -> int:
    """``choose_threads`` for one process; under a launcher, by default
    ``max(1, cores // LOCAL_WORLD_SIZE)`` (torchrun's ``OMP_NUM_THREADS=1`` ignored)."""
    if requested is not None or info.launcher == "none":
        return choose_threads(requested)
    return choose_threads(max(1, available_cores() // info.local_world_size))
