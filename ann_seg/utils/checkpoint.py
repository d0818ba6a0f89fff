"""Weights-only loading of mmengine checkpoints with an explicit allowlist.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``. mmengine 0.10.7 calls it bare, so
checkpoints written by its ``Runner`` (which pickle more than tensors) cannot be loaded or resumed.
This module keeps weights-only loading and allows, for the duration of our own loads only, exactly
the extra objects such checkpoints were found to contain (``get_unsafe_globals_in_checkpoint`` run
on checkpoints written by ``Runner`` for iter/epoch loops, SGD/Adam/AdamW, LR/momentum schedulers,
EMAHook, save_best and the default hooks):

* ``numpy.ndarray``, ``numpy.dtype`` and numpy's ``_reconstruct``/``scalar`` rebuild functions
  (under both the numpy 1.x ``numpy.core`` and 2.x ``numpy._core`` names): ``HistoryBuffer``
  stores ndarrays, the ETA and metrics (e.g. ``best_score``) are numpy scalars, and dataset
  metainfo may hold arrays (palettes). Only plain bool/int/uint/float/complex/bytes/str dtypes
  may be rebuilt; object and structured dtypes are not allowed.
* ``mmengine.logging.history_buffer.HistoryBuffer``: the message hub's ``log_scalars``.
* ``builtins.getattr``, replaced by a restricted version that resolves only
  ``HistoryBuffer.{min,max,current,mean}`` (pickled in ``HistoryBuffer.__getstate__``) and
  ``OneCycleParamScheduler._annealing_{cos,linear}`` (``anneal_func`` in a OneCycle scheduler's
  state). ``OneCycleParamScheduler`` itself is mapped to a stand-in that cannot be instantiated.

Everything else torch allows by default (tensors, ``OrderedDict``, ``Counter``, ``set``, dtypes,
...) stays allowed; anything else is refused before it can run (:class:`UnsafeCheckpointError`).
A file that tries to change ``HistoryBuffer``'s class-level statistics methods is refused too and
the change undone. mmengine's http(s)/torchvision/mmcls/open-mmlab loaders are replaced as well:
they go through ``torch.hub.load_state_dict_from_url``, whose ``weights_only`` defaults to False.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import os.path as osp
import pickle
import re
import struct
import threading
import zipfile
from typing import Any, Callable, Iterable, Iterator, Union
from urllib.parse import urlparse

import numpy as np
import torch

__all__ = [
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "get_checkpoint_safe_globals",
    "install_mmengine_checkpoint_loader",
    "mmengine_safe_globals",
    "safe_load_checkpoint",
]

FileOrPath = Union[str, os.PathLike, io.IOBase, Any]

_LOCK = threading.RLock()
_NUMPY_DTYPE_CODES = "?bBhHiIlLqQefdgFDGSU"  # bool, (u)ints, floats, complex, bytes, str
_HISTORY_BUFFER_STATS = frozenset({"min", "max", "current", "mean"})
_ONE_CYCLE = "mmengine.optim.scheduler.param_scheduler.OneCycleParamScheduler"
_ONE_CYCLE_ATTRS = frozenset({"_annealing_cos", "_annealing_linear"})


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint was refused because it pickles objects outside the allowlist."""

    def __init__(self, filename: str, offending: Iterable[str], detail: str = ""):
        self.filename = filename
        self.offending = sorted(set(offending))
        names = ", ".join(self.offending) or "unknown (see detail)"
        msg = (
            f"Refused to load checkpoint {filename!r}: it contains pickled objects outside the "
            f"allowlist for weights-only loading ({names}). Nothing from it was executed. "
            "Only load checkpoints from sources you trust."
        )
        if detail:
            msg += f"\nDetail: {detail}"
        super().__init__(msg)


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupt or not a torch checkpoint at all."""

    def __init__(self, filename: str, detail: str):
        self.filename = filename
        super().__init__(
            f"Checkpoint {filename!r} is truncated, corrupt or not a file written by "
            f"torch.save: {detail}"
        )


class _AttrOnly:
    """Stand-in for a class whose attributes a checkpoint references but never instantiates."""

    __slots__ = ("target",)

    def __init__(self, target: type):
        self.target = target

    def __repr__(self) -> str:
        return f"<attribute-only reference to {self.target.__qualname__}>"


class _DisallowedAttribute(pickle.UnpicklingError):
    pass


_GETATTR_ALLOWED: dict[Any, frozenset] = {}


def _restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` limited to the (class, attribute) pairs in ``_GETATTR_ALLOWED``."""
    try:
        allowed = _GETATTR_ALLOWED.get(obj, frozenset())
    except TypeError:  # unhashable object
        allowed = frozenset()
    if not isinstance(name, str) or name not in allowed:
        owner = getattr(obj, "__qualname__", type(obj).__qualname__)
        raise _DisallowedAttribute(
            f"ann_seg: attribute lookup builtins.getattr({owner}, {name!r}) is not allowed"
        )
    target = obj.target if isinstance(obj, _AttrOnly) else obj
    return getattr(target, name)


_SAFE_GLOBALS: list | None = None


def get_checkpoint_safe_globals() -> list:
    """Return the allowlist (entries for ``torch.serialization.safe_globals``), built lazily."""
    global _SAFE_GLOBALS
    with _LOCK:
        if _SAFE_GLOBALS is None:
            _SAFE_GLOBALS = _build_safe_globals()
        return list(_SAFE_GLOBALS)


def _build_safe_globals() -> list:
    """The allowlist itself; also fills ``_GETATTR_ALLOWED``."""
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler

    reconstruct = np.ndarray((0,)).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    one_cycle = _AttrOnly(OneCycleParamScheduler)
    _GETATTR_ALLOWED.clear()
    _GETATTR_ALLOWED[HistoryBuffer] = _HISTORY_BUFFER_STATS
    _GETATTR_ALLOWED[one_cycle] = _ONE_CYCLE_ATTRS
    entries: list = [
        np.ndarray,
        np.dtype,
        HistoryBuffer,
        (_restricted_getattr, "builtins.getattr"),
        (one_cycle, _ONE_CYCLE),
    ]
    for core in ("numpy.core", "numpy._core"):
        entries += [
            (reconstruct, f"{core}.multiarray._reconstruct"),
            (scalar, f"{core}.multiarray.scalar"),
        ]
    # dtype instances are rebuilt via BUILD, which checks their concrete class.
    entries += sorted(
        {type(np.dtype(c)) for c in _NUMPY_DTYPE_CODES} - {np.dtype},
        key=lambda t: t.__qualname__,
    )
    return entries


@contextlib.contextmanager
def mmengine_safe_globals(extra_safe_globals: Iterable = ()) -> Iterator[None]:
    """Allow the mmengine checkpoint allowlist in ``torch.load(weights_only=True)`` temporarily.

    Only entries not already allowlisted by the caller are added, and they are removed on exit.
    Note that torch's allowlist is process-wide, so other threads calling ``torch.load`` at the
    same time see it too; our own loads are serialised with a lock.
    """
    with _LOCK:
        present = set(torch.serialization.get_safe_globals())
        new = [
            g for g in get_checkpoint_safe_globals() + list(extra_safe_globals) if g not in present
        ]
        with torch.serialization.safe_globals(new):
            yield


def _display_name(f: FileOrPath) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return str(getattr(f, "name", None) or f"<{type(f).__name__} object>")


_GLOBAL_RE = re.compile(r"GLOBAL (\S+?)(?: was not| whose module|\s|$)")
_REFUSAL_MARKERS = (
    "was not an allowed global",
    "is blocked",
    "Can only ",
    "unrecognized function",
    "must be imported to load",
    "ann_seg: attribute lookup",
)
_CORRUPT_MARKERS = (
    "PytorchStreamReader",
    "zip archive",
    "central directory",
    "magic number",
    "EOF",
    "truncated",
    "corrupt",
    "Invalid load key",
    "invalid load key",
)
_CORRUPT_ERRORS = (
    EOFError,
    zipfile.BadZipFile,
    KeyError,
    IndexError,
    struct.error,
    UnicodeDecodeError,
    OverflowError,
)


def _scan_globals(f: FileOrPath, start: int | None, extra: list) -> set[str]:
    """Statically list globals outside the allowlist; best effort, never unpickles."""
    try:
        if not isinstance(f, (str, os.PathLike)):
            if start is None:
                return set()
            f.seek(start)
        with mmengine_safe_globals(extra):
            return set(torch.serialization.get_unsafe_globals_in_checkpoint(f))
    except Exception:  # noqa: BLE001 - legacy format, damaged pickle, ...
        return set()


def _offending_globals(message: str, f: FileOrPath, start: int | None, extra: list) -> set[str]:
    found = set()
    for name in _GLOBAL_RE.findall(message):
        found.add(name if "." in name else f"builtins.{name}")  # torch strips "builtins."
    found.update(re.findall(r"builtins\.getattr\([^)]*\)", message))
    found.update(re.findall(r"got <class '([^']+)'>", message))  # NEWOBJ/BUILD refusals
    return found | _scan_globals(f, start, extra)


def _torch_detail(message: str) -> str:
    """Keep torch's root cause but drop its advice to set ``weights_only=False``."""
    message = message.split("\n\nCheck the documentation of torch.load")[0]
    if "WeightsUnpickler error: " in message:
        message = message.split("WeightsUnpickler error: ", 1)[1]
    elif message.startswith("Weights only load failed.") and "\n\n" in message:
        message = message.split("\n\n", 1)[1]
    return message.strip()


def _load(f: FileOrPath, map_location: Any, name: str, extra_safe_globals: Iterable = ()) -> Any:
    from mmengine.logging.history_buffer import HistoryBuffer

    extra_safe_globals = list(extra_safe_globals)
    start = None
    if not isinstance(f, (str, os.PathLike)):
        with contextlib.suppress(Exception):
            start = f.tell()
    with _LOCK:
        # HistoryBuffer.__setstate__ updates a class-level dict of statistics methods; only the
        # default methods (or trusted extra globals) may be added, anything else is undone.
        stats = HistoryBuffer._statistics_methods
        before = dict(stats)
        ok = {k: getattr(HistoryBuffer, k) for k in _HISTORY_BUFFER_STATS}
        trusted = {id(g[0] if isinstance(g, tuple) else g) for g in extra_safe_globals}
        try:
            with mmengine_safe_globals(extra_safe_globals):
                ckpt = torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            msg = str(exc)
            if any(m in msg for m in _REFUSAL_MARKERS):
                raise UnsafeCheckpointError(
                    name, _offending_globals(msg, f, start, extra_safe_globals), _torch_detail(msg)
                ) from None
            raise CorruptCheckpointError(name, _torch_detail(msg)) from None
        except _CORRUPT_ERRORS as exc:
            detail = str(exc) or "unexpected end of file"
            raise CorruptCheckpointError(name, f"{type(exc).__name__}: {detail}") from exc
        except (RuntimeError, OSError) as exc:
            # torch's zip reader: RuntimeError('PytorchStreamReader failed ...') or EINVAL.
            if getattr(exc, "errno", None) == errno.EINVAL or any(
                m in str(exc) for m in _CORRUPT_MARKERS
            ):
                raise CorruptCheckpointError(name, f"{type(exc).__name__}: {exc}") from exc
            raise
        finally:
            tampered = sorted(
                k
                for k, v in stats.items()
                if v is not before.get(k, ok.get(k)) and id(v) not in trusted
            )
            for k in tampered:
                if k in before:
                    stats[k] = before[k]
                else:
                    del stats[k]
        if tampered:
            raise UnsafeCheckpointError(
                name,
                [f"HistoryBuffer.statistics_methods[{k!r}]" for k in tampered],
                "the file tried to replace HistoryBuffer statistics methods",
            )
    return ckpt


def safe_load_checkpoint(
    path_or_file: FileOrPath, map_location: Any = "cpu", *, extra_safe_globals: Iterable = ()
) -> Any:
    """Load a checkpoint with ``weights_only=True`` plus the mmengine allowlist.

    Args:
        path_or_file: Path or seekable binary file object written by ``torch.save``.
        map_location: As in :func:`torch.load`.
        extra_safe_globals: Additional trusted entries, in ``torch.serialization.safe_globals``
            form, for checkpoints carrying custom types.

    Raises:
        FileNotFoundError: ``path_or_file`` is a path that does not exist.
        UnsafeCheckpointError: The file pickles objects outside the allowlist; none was executed.
        CorruptCheckpointError: The file is truncated, corrupt or not a torch checkpoint.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        path_or_file = osp.expanduser(os.fspath(path_or_file))
        if not osp.isfile(path_or_file):
            raise FileNotFoundError(f"Checkpoint {path_or_file!r} can not be found.")
    return _load(path_or_file, map_location, _display_name(path_or_file), extra_safe_globals)


# mmengine prints ``loader.__name__[10:]`` as the backend name, hence the ``load_from_`` prefix.
def load_from_local_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine loader for local paths (weights-only + allowlist)."""
    return safe_load_checkpoint(filename, map_location)


def _download(url: str, model_dir: str | None, progress: bool) -> str:
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))
    if not osp.exists(cached):
        torch.hub.download_url_to_file(url, cached, None, progress=progress)
    return cached


def load_from_http_safe(
    filename: str,
    map_location: Any = None,
    model_dir: str | None = None,
    progress: bool = os.isatty(0),
) -> Any:
    """mmengine loader for http(s) URLs: cached download (rank 0 first), then a safe load.

    mmengine's own loader goes through ``torch.hub.load_state_dict_from_url``, whose
    ``weights_only`` defaults to False, i.e. it would unpickle downloads without restriction.
    """
    from mmengine.dist import get_dist_info

    rank, world_size = get_dist_info()
    if rank == 0:
        cached = _download(filename, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            cached = _download(filename, model_dir, progress)
    return _load(cached, map_location, f"{filename} (cached at {cached})")


def load_from_openmmlab_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine loader for ``open-mmlab://``/``openmmlab://`` model names."""
    from mmengine.runner import checkpoint as mc

    prefix = "open-mmlab://" if filename.startswith("open-mmlab://") else "openmmlab://"
    model_name = filename[len(prefix) :]
    model_name = mc.get_deprecated_model_names().get(model_name, model_name)
    model_url = mc.get_external_models()[model_name]
    if model_url.startswith(("http://", "https://")):
        return load_from_http_safe(model_url, map_location=map_location)
    return safe_load_checkpoint(osp.join(mc._get_mmengine_home(), model_url), map_location)


def load_from_torchvision_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine loader for ``torchvision://``/``modelzoo://`` model names."""
    from mmengine.runner import checkpoint as mc

    model_name = filename.split("://", 1)[1]
    return load_from_http_safe(mc.get_torchvision_models()[model_name], map_location)


def load_from_mmcls_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine loader for ``mmcls://`` model names."""
    from mmengine.runner import checkpoint as mc

    ckpt = load_from_http_safe(mc.get_mmcls_models()[filename[8:]], map_location)
    return mc._process_mmcls_checkpoint(ckpt)


def load_from_ceph_safe(filename: str, map_location: Any = None, backend: str = "petrel") -> Any:
    """mmengine loader for ``s3://``/``petrel://`` paths."""
    from mmengine.fileio import get_file_backend

    file_backend = get_file_backend(filename, backend_args={"backend": backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return _load(buffer, map_location, filename)


_SCHEMES: list[tuple[Any, Callable]] = [
    ("", load_from_local_safe),
    (("http://", "https://"), load_from_http_safe),
    (("open-mmlab://", "openmmlab://"), load_from_openmmlab_safe),
    (("modelzoo://", "torchvision://"), load_from_torchvision_safe),
    ("mmcls://", load_from_mmcls_safe),
    ((r"(\S+\:)?s3://", r"(\S+\:)?petrel://"), load_from_ceph_safe),
]


def install_mmengine_checkpoint_loader() -> None:
    """Route mmengine's checkpoint schemes through the weights-only allowlisted loaders.

    Re-registers (``force=True``, so calling it again is harmless) the local-path, http(s),
    open-mmlab, torchvision/modelzoo, mmcls and s3/petrel schemes of ``CheckpointLoader``; this
    covers ``mmengine.runner.load_checkpoint``, ``Runner.load_checkpoint``/``resume`` and
    ``init_cfg=dict(type='Pretrained')``. ``pavi://`` is left as is (it fails closed under the
    torch default).
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    for prefixes, loader in _SCHEMES:
        CheckpointLoader.register_scheme(prefixes=prefixes, loader=loader, force=True)
