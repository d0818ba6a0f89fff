"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every file ann_seg writes goes through ``atomic_path``: a hidden temporary file beside the
target, fsynced, given the mode a plain ``open`` would give, then ``os.replace``d onto it.
"""

import contextlib
import json
import os
import os.path as osp
import tempfile
from typing import Any, BinaryIO, Callable, Iterator


def default_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open(path, 'w')`` would create."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicFile:
    """A hidden temporary file ``tmp`` beside ``path`` (``suffix`` last: some writers choose the
    format by it) that ``commit`` moves onto ``path`` with the default mode and ``discard``
    deletes; once either ran, the other does nothing."""

    def __init__(self, path: str, suffix: str = ".tmp"):
        directory = osp.dirname(osp.abspath(path))
        os.makedirs(directory, exist_ok=True)
        prefix = f".{osp.basename(path)}."
        fd, self.tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
        os.close(fd)
        self.path, self.done = path, False

    def commit(self, sync: bool = True) -> None:
        """fsync ``tmp`` (unless the writer did: ``sync=False``), then move it onto ``path``."""
        if self.done:
            return
        if sync:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(self.tmp, default_file_mode())
        os.replace(self.tmp, self.path)
        self.done = True

    def discard(self) -> None:
        """Delete ``tmp``; ``path`` stays as it was."""
        if not self.done:
            self.done = True
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success give it the default mode and move it
    onto ``path`` (``os.replace``), on error delete it. The caller writes (and fsyncs) it."""
    file = AtomicFile(path)
    try:
        yield file.tmp
        file.commit(sync=False)
    except BaseException:
        file.discard()
        raise


def atomic_write_with(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a binary file that becomes ``path`` atomically (after fsync)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON (non-finite floats as in ``json.dumps``), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
