"""SIGINT and SIGTERM in training and testing: both stop the Runner by an exception (so the
data loader's workers and the process group are shut down on the way out), and neither lands in
the middle of a checkpoint save.

``termination_as_interrupt`` makes SIGTERM raise ``Terminated`` (a ``KeyboardInterrupt``; the
tools exit with status 143, SIGINT's ``KeyboardInterrupt`` with 130). ``deferred_interrupts``
holds a SIGINT or SIGTERM back while a checkpoint is written: the write completes (it is atomic
anyway), then the signal takes effect as it would have; a second one of the same kind during the
write takes effect at once.
"""

import contextlib
import signal
import threading
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)
_deferring = threading.local()


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during training or testing (``termination_as_interrupt``)."""

    exit_status = 128 + signal.SIGTERM

    def __str__(self) -> str:
        return "terminated (SIGTERM)"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises ``Terminated`` unless a handler other than the default one is
    installed already (a launcher's own). Outside the main thread: nothing changes."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _deliver(signum: int, handler, frame=None) -> None:
    """What ``handler`` (a ``signal.getsignal`` value) does on ``signum``."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)  # the default action: the process ends by the signal


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back inside (a checkpoint write); on leaving, the first one
    held is delivered to the handler that was in place before. Nested uses and other threads
    run the body unchanged."""
    if not _in_main_thread() or getattr(_deferring, "active", False):
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    if any(handler is None for handler in previous.values()):  # not installed from Python
        yield
        return
    held: list = []

    def hold(signum, frame):
        if signum in held:  # asked twice: at once
            _deliver(signum, previous[signum], frame)
        else:
            held.append(signum)

    _deferring.active = True
    try:
        for signum in HANDLED:
            if previous[signum] is not signal.SIG_IGN:
                signal.signal(signum, hold)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _deferring.active = False
    if held:
        _deliver(held[0], previous[held[0]])
