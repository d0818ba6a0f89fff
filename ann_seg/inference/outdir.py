"""The output folder of a folder inference: checked before the model loads, locked against a
second run, and its storage failures (a full disk) told apart from an image's.

* ``check_out_dir``: ``--out-dir`` is a folder or can be made one, files can be created in it,
  and the journal, summary and output sub-folders there are of the right kind; otherwise
  ``OutputDirError`` (one line, ``ann-seg infer`` exits 2) before anything expensive.
* ``OutDirLock``: an advisory lock, ``infer.lock`` in the output folder holding the holder's
  pid, host and start time, taken with ``fcntl.flock`` (POSIX; elsewhere nothing is locked):
  a second run on the same folder gets ``OutDirBusyError`` naming the holder. The kernel drops
  the lock when its process dies, so a lock file left by a killed run is taken over. Forked
  children (DataLoader workers) close their inherited copy: an orphaned worker never keeps
  the folder locked.
* ``OutputStorageError``: writing under the output folder failed for a reason no other image
  would escape (no space left, quota, read-only file system): the run stops with one line
  naming the path and the free space; nothing is recorded as failed, so a re-run finishes.
"""

import contextlib
import errno
import json
import os
import os.path as osp
import shutil
import socket
import tempfile
import time
from typing import Iterator, Optional, Sequence, Set

from .inputs import InferenceInputError

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

LOCK_NAME = "infer.lock"
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})
_held_fds: Set[int] = set()  # lock descriptors of this process


class OutputDirError(InferenceInputError):
    """The output folder cannot be used (found before the model loads)."""


class OutDirBusyError(OutputDirError):
    """Another run holds the output folder's lock."""


class OutputStorageError(Exception):
    """Writing under the output folder failed for every image alike (``STORAGE_ERRNOS``).
    ``ann-seg infer`` prints it on one line and exits with ``exit_status``."""

    exit_status = 1

    def __init__(self, path: str, error: OSError, note: str = ""):
        self.path, self.error, self.note = path, error, note
        super().__init__(path, error, note)

    def __str__(self) -> str:
        text = f"cannot write {self.path}: {self.error.strerror or self.error}"
        if self.error.errno in (errno.ENOSPC, errno.EDQUOT):
            text += f" ({format_bytes(free_bytes(self.path))} free there)"
        return text + (f"; {self.note}" if self.note else "")


def format_bytes(count: Optional[int]) -> str:
    if count is None:
        return "unknown space"
    if count < 1024:
        return f"{count} B"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024 or unit == "GiB":
            break
    return f"{count:.1f} {unit}"


def free_bytes(path: str) -> Optional[int]:
    """Bytes free to this user on the file system of ``path`` (or its nearest existing parent)."""
    path = osp.abspath(path)
    while not osp.exists(path) and osp.dirname(path) != path:
        path = osp.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@contextlib.contextmanager
def storage_errors(path: str) -> Iterator[None]:
    """Turn an ``OSError`` in ``STORAGE_ERRNOS`` while writing ``path`` into
    ``OutputStorageError``; other errors pass unchanged."""
    try:
        yield
    except OSError as error:
        if error.errno in STORAGE_ERRNOS:
            raise OutputStorageError(path, error) from error
        raise


def _kind(path: str) -> str:
    return "a folder" if osp.isdir(path) else "not a regular file"


def check_out_dir(
    out_dir: str,
    files: Sequence[str] = (),
    folders: Sequence[str] = (),
    appended: Sequence[str] = (),
) -> bool:
    """Make ``out_dir`` if needed and check that files can be created in it, that ``files``
    and ``appended`` there (names) are regular files or absent, ``appended`` ones appendable,
    and ``folders`` folders or absent. Returns whether it was made. Raises
    ``OutputDirError`` with what to do."""
    hint = "choose another --out-dir"
    if osp.lexists(out_dir) and not osp.isdir(out_dir):
        raise OutputDirError(f"--out-dir {out_dir} exists and is not a folder: {hint}")
    made = not osp.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        action = "create" if made else "write in"
        raise OutputDirError(
            f"cannot {action} the output folder {out_dir}: {error.strerror or error}; {hint}"
        ) from None
    for name in [*files, *appended]:
        path = osp.join(out_dir, name)
        if osp.lexists(path) and not osp.isfile(path):
            raise OutputDirError(f"{path} is {_kind(path)}: move it away or {hint}")
        if name in appended and osp.isfile(path):
            try:
                with open(path, "ab"):
                    pass
            except OSError as error:
                raise OutputDirError(f"cannot append to {path}: {error.strerror}") from None
    for name in folders:
        path = osp.join(out_dir, name)
        if osp.lexists(path) and not osp.isdir(path):
            raise OutputDirError(f"{path} is not a folder: move it away or {hint}")
    return made


def _holder(fd: int) -> dict:
    """What the lock file open at ``fd`` says about its holder (``{}`` if unreadable)."""
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "an unknown process"
    since = holder.get("started")
    when = time.strftime(", started %Y-%m-%d %H:%M:%S", time.localtime(since)) if since else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


class OutDirLock:
    """``out_dir/infer.lock`` (see the module docstring): ``acquire`` or ``OutDirBusyError``;
    ``release`` removes it. ``taken_over``: the holder a killed run left in the file."""

    def __init__(self, out_dir: str):
        self.out_dir, self.path = out_dir, osp.join(out_dir, LOCK_NAME)
        self.taken_over: Optional[dict] = None
        self.unsupported: Optional[str] = None  # why the folder is not locked
        self._fd: Optional[int] = None

    def acquire(self) -> "OutDirLock":
        if fcntl is None:
            self.unsupported = "no fcntl on this platform"
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as error:
                raise OutputDirError(f"cannot open {self.path}: {error.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise OutDirBusyError(
                    f"{self.out_dir} is in use by another ann-seg infer ({describe_holder(holder)}"
                    f", lock {self.path}): wait for it or choose another --out-dir"
                ) from None
            except OSError as error:
                os.close(fd)
                if error.errno not in _UNSUPPORTED:
                    raise
                self.unsupported = f"{self.path}: {error.strerror}"
                return self
            if self._is_current(fd):
                break
            os.close(fd)  # released and removed by its holder meanwhile: lock the new one
        self.taken_over = _holder(fd) or None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd
        _held_fds.add(fd)
        return self

    def _is_current(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # before unlocking: a waiting run then locks a new file
        _held_fds.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _close_inherited_locks() -> None:
    """In a forked child: close the lock descriptors (the parent keeps its lock)."""
    for fd in list(_held_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)
