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


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success give it the default mode and move it
    onto ``path`` (``os.replace``), on error delete it. The caller writes (and fsyncs) it."""
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{osp.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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
