"""SIGTERM handled as SIGINT: a folder inference stopped by either ends its loop in order.

Inside ``sigterm_as_interrupt`` SIGTERM raises ``Terminated``, a ``KeyboardInterrupt``, in
the main thread, so every loop (sequential, pipelined, each rank of a distributed run) stops
as on Ctrl-C: the DataLoader workers are shut down, the writer threads finish what they hold,
temporary files are removed, the journal is closed and ``summary.json`` is rebuilt from it.
``ann-seg`` then exits with ``exit_status``: 143 (128 + SIGTERM), 130 for SIGINT. As with a
second Ctrl-C, a second SIGTERM interrupts that clean-up.
"""

import contextlib
import signal
import threading
from typing import Iterator

SIGINT_STATUS = 130  # 128 + SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``sigterm_as_interrupt``)."""

    exit_status = 128 + signal.SIGTERM

    def __str__(self) -> str:
        return "SIGTERM"


@contextlib.contextmanager
def sigterm_as_interrupt(enabled: bool = True) -> Iterator[None]:
    """SIGTERM raises ``Terminated`` inside; the previous handler is restored after. Only in
    the main thread (elsewhere a no-op, as signal handlers can be set only there)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
