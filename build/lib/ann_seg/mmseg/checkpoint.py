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

torch < 2.5 (ann_seg supports 2.1 up) has no allowlist for ``torch.load(weights_only=True)``. There
``torch.load(weights_only=False, pickle_module=...)`` is given a restricted unpickler instead
(:class:`_RestrictedUnpickler`, modelled on torch 2.5+'s weights-only unpickler): it resolves only
the names of the same allowlist plus torch's own defaults (tensors, storages, dtypes,
``OrderedDict``...), never imports a module, and calls, instantiates or sets the state of
allowlisted objects only, so a file is refused, or loaded, exactly as on torch >= 2.5. The path is
chosen once, from what torch offers (``USE_TORCH_SAFE_GLOBALS``; tests switch it to exercise the
fallback on a recent torch).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import contextlib
import errno
import io
import os
import os.path as osp
import pickle
import pickletools
import re
import struct
import threading
import types
import zipfile
from collections import Counter, OrderedDict
from typing import Any, Callable, Iterable, Iterator, Union
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler
from mmengine.runner import checkpoint as mc

from ann_seg.layers.compat import HAS_SAFE_GLOBALS

__all__ = [
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "get_checkpoint_safe_globals",
    "checkpoint_safety_installed",
    "install_checkpoint_safety",
    "install_mmengine_checkpoint_loader",
    "uninstall_checkpoint_safety",
    "mmengine_safe_globals",
    "safe_load_checkpoint",
]

FileOrPath = Union[str, os.PathLike, io.IOBase, Any]

_LOCK = threading.RLock()
_NUMPY_DTYPE_CODES = "?bBhHiIlLqQefdgFDGSU"  # bool, (u)ints, floats, complex, bytes, str
_HISTORY_BUFFER_STATS = frozenset({"min", "max", "current", "mean"})
_ONE_CYCLE = "mmengine.optim.scheduler.param_scheduler.OneCycleParamScheduler"
_ONE_CYCLE_ATTRS = frozenset({"_annealing_cos", "_annealing_linear"})

# True: torch.load(weights_only=True) with torch.serialization.safe_globals (torch >= 2.5).
# False: torch.load(weights_only=False, pickle_module=<restricted unpickler>) (torch < 2.5).
USE_TORCH_SAFE_GLOBALS = HAS_SAFE_GLOBALS


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


class _Refused(pickle.UnpicklingError):
    """The unpickler refused ``name`` (a global, type or attribute); none of it was run."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


_GETATTR_ALLOWED: dict[Any, frozenset] = {}


def _restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` limited to the (class, attribute) pairs in ``_GETATTR_ALLOWED``."""
    try:
        allowed = _GETATTR_ALLOWED.get(obj, frozenset())
    except TypeError:  # unhashable object
        allowed = frozenset()
    if not isinstance(name, str) or name not in allowed:
        owner = getattr(obj, "__qualname__", type(obj).__qualname__)
        lookup = f"builtins.getattr({owner}, {name!r})"
        raise _Refused(f"ann_seg: attribute lookup {lookup} is not allowed", lookup)
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
    same time see it too; our own loads are serialised with a lock. Needs torch >= 2.5
    (``safe_load_checkpoint`` works on every supported torch).
    """
    if not HAS_SAFE_GLOBALS:
        raise RuntimeError(
            "mmengine_safe_globals needs torch.serialization.safe_globals (torch >= 2.5), "
            f"torch {torch.__version__} has none: load with safe_load_checkpoint instead"
        )
    with _LOCK:
        present = set(torch.serialization.get_safe_globals())
        new = [
            g for g in get_checkpoint_safe_globals() + list(extra_safe_globals) if g not in present
        ]
        with torch.serialization.safe_globals(new):
            yield


# ------------------------------------------------------------- restricted unpickler (torch < 2.5)

_TENSOR_REBUILD_FUNCTIONS = (  # torch._utils functions torch >= 2.5 allows (those torch has)
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_sparse_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_nested_tensor",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
)
_BLOCKED_MODULES = frozenset({"sys", "os", "posix", "nt"})  # refused even if allowlisted
_TORCH_DEFAULTS: dict[str, Any] | None = None


def _torch_default_globals() -> dict[str, Any]:
    """What torch >= 2.5's weights-only unpickler allows without ``safe_globals``."""
    global _TORCH_DEFAULTS
    with _LOCK:
        if _TORCH_DEFAULTS is not None:
            return _TORCH_DEFAULTS
        rc: dict[str, Any] = {
            "collections.OrderedDict": OrderedDict,
            "collections.Counter": Counter,
            "torch.nn.parameter.Parameter": torch.nn.Parameter,
            "torch.serialization._get_layout": torch.serialization._get_layout,
            "torch.Size": torch.Size,
            "torch.Tensor": torch.Tensor,
            "torch.device": torch.device,
            "_codecs.encode": codecs.encode,  # bytes in pickle protocol 2
            "builtins.bytearray": bytearray,
            "builtins.set": set,
            "builtins.complex": complex,
            "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
        }
        for value in vars(torch).values():
            if isinstance(value, (torch.dtype, torch.qscheme)):
                rc[str(value)] = value
        for cls in torch._tensor_classes:
            rc[f"{cls.__module__}.{cls.__name__}"] = cls
        for cls in torch._storage_classes:
            name = f"{cls.__module__}.{cls.__name__}"
            if cls in (torch.storage.TypedStorage, torch.storage.UntypedStorage):
                rc[name] = cls
            else:  # legacy typed storages: only their dtype, as torch itself
                rc[name] = torch.serialization.StorageType(cls.__name__)
        for name in _TENSOR_REBUILD_FUNCTIONS:
            if hasattr(torch._utils, name):
                rc[f"torch._utils.{name}"] = getattr(torch._utils, name)
        _TORCH_DEFAULTS = rc
        return rc


def _restricted_globals(extra_safe_globals: Iterable = ()) -> dict[str, Any]:
    """``"module.name"`` -> object: the allowlist and ``extra_safe_globals`` (named as
    ``torch.serialization.safe_globals`` names them) plus torch's defaults, which win."""
    table: dict[str, Any] = {}
    for entry in get_checkpoint_safe_globals() + list(extra_safe_globals):
        if isinstance(entry, tuple):
            if len(entry) != 2 or not isinstance(entry[1], str):
                raise ValueError(f"expected a global or (global, 'module.name'), got {entry!r}")
            obj, name = entry
        else:
            obj, name = entry, f"{entry.__module__}.{entry.__qualname__}"
        table[name] = obj
    table.update(_torch_default_globals())
    return table


def _global_name(module: str, name: str) -> tuple[str, str]:
    """(module, "module.name") after pickle's Python 2 renames, as torch's unpickler maps them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module, f"{module}.{name}"


def _describe(obj: Any) -> str:
    """``module.qualname`` of a class or function, else of the object's type."""
    if isinstance(getattr(obj, "__qualname__", None), str) and hasattr(obj, "__module__"):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _track_sparse(cls: Any, result: Any) -> None:
    """Sparse tensors built by their legacy class are validated after the load, as in torch."""
    if isinstance(cls, type) and cls in torch._tensor_classes and "sparse" in cls.__module__:
        torch._utils._sparse_tensors_to_validate.append(result)


class _RestrictedUnpickler:
    """Unpickler for ``torch.load(pickle_module=...)`` that runs allowlisted objects only.

    Modelled on torch 2.5+'s weights-only unpickler, for torch versions whose weights-only load
    has no allowlist. It reads the pickle protocol 2 opcodes ``torch.save`` writes (others are
    refused); ``GLOBAL`` resolves ``"module.name"`` in ``allowed`` and never imports anything
    (torch's wrapper maps legacy ``*Storage`` names to their dtype first); ``REDUCE`` calls,
    ``NEWOBJ`` instantiates and ``BUILD`` sets the state of allowlisted objects only; ``APPEND``
    works on lists and ``SETITEM`` on dicts only; persistent ids may only name storages.
    Refusals raise :class:`_Refused` naming the global or type.
    """

    allowed: dict[str, Any] = {}  # set on the per-load subclass (_restricted_pickle_module)
    allowed_ids: frozenset = frozenset()

    def __init__(self, file: Any, *, encoding: str = "bytes", **_: Any):
        self.read = file.read
        self.readline = file.readline
        self.encoding = encoding
        self.memo: dict[int, Any] = {}
        self.stack: list = []
        self.metastack: list = []

    def find_class(self, module: str, name: str) -> Any:
        module, full = _global_name(module, name)
        if module in _BLOCKED_MODULES:
            raise _Refused(f"GLOBAL {full} was refused: its module {module} is blocked", full)
        if full not in self.allowed:
            raise _Refused(f"Unsupported global: GLOBAL {full} was not an allowed global", full)
        return self.allowed[full]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} encountered")

    def load(self) -> Any:
        self.stack, self.metastack = [], []
        while True:
            key = self.read(1)
            if not key:
                raise EOFError("pickle data was truncated")
            if key == pickle.STOP:
                return self.stack.pop()
            op = _OPCODES.get(key)
            if op is None:
                raise pickle.UnpicklingError(f"Unsupported operand {key[0]}")
            op(self)

    def pop_mark(self) -> list:
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    # Objects from allowlisted names
    def _global(self) -> None:
        module = self.readline()[:-1].decode("utf-8")
        name = self.readline()[:-1].decode("utf-8")
        self.stack.append(self.find_class(module, name))

    def _newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is torch.nn.Parameter:
            obj = torch.nn.Parameter(*args)
        elif isinstance(cls, type) and id(cls) in self.allowed_ids:
            obj = cls.__new__(cls, *args)
        else:
            raise _Refused(
                f"Can only create new objects of allowlisted classes, but got {cls!r}",
                _describe(cls),
            )
        _track_sparse(cls, obj)
        self.stack.append(obj)

    def _reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in self.allowed_ids:
            raise _Refused(
                f"Trying to call reduce for unrecognized function {func!r}", _describe(func)
            )
        self.stack[-1] = result = func(*args)
        _track_sparse(func, result)

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        cls = type(inst)
        if cls is torch.Tensor:  # legacy tensors
            inst.set_(*state)
        elif cls is torch.nn.Parameter:
            inst.__setstate__(state)
        elif cls is OrderedDict:
            inst.__dict__.update(state)
        elif id(cls) in self.allowed_ids:
            if hasattr(inst, "__setstate__"):
                inst.__setstate__(state)
                return
            slotstate = None
            if isinstance(state, tuple) and len(state) == 2:
                state, slotstate = state
            if state:
                inst.__dict__.update(state)
            for k, v in (slotstate or {}).items():
                setattr(inst, k, v)
        else:
            raise _Refused(
                f"Can only build Tensor, Parameter, OrderedDict or allowlisted types, got {cls}",
                _describe(cls),
            )

    def _persid(self) -> None:
        pid = self.stack.pop()
        if type(pid) is not tuple and type(pid) is not int:
            raise pickle.UnpicklingError(f"persistent_load id must be tuple or int, got {pid!r}")
        if type(pid) is tuple and pid and pid[0] not in ("storage", b"storage"):
            raise pickle.UnpicklingError(f"Only persistent_load of storage is allowed, got {pid!r}")
        self.stack.append(self.persistent_load(pid))

    # Containers
    def _append(self) -> None:
        item = self.stack.pop()
        self._list_target("append to").append(item)

    def _appends(self) -> None:
        items = self.pop_mark()
        self._list_target("extend").extend(items)

    def _list_target(self, what: str) -> list:
        target = self.stack[-1]
        if type(target) is not list:
            raise pickle.UnpicklingError(f"Can only {what} lists, but got {type(target)}")
        return target

    def _setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._dict_target("SETITEM")[key] = value

    def _setitems(self) -> None:
        items = self.pop_mark()
        target = self._dict_target("SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _dict_target(self, opcode: str) -> dict:
        target = self.stack[-1]
        if type(target) not in (dict, OrderedDict, Counter):
            raise pickle.UnpicklingError(
                f"Can only {opcode} for dict, OrderedDict or Counter, but got {type(target)}"
            )
        return target

    def _mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _tuple(self) -> None:
        items = self.pop_mark()
        self.stack.append(tuple(items))

    def _tuple_n(self, n: int) -> None:
        if len(self.stack) < n:
            raise IndexError("pickle stack underflow")
        self.stack[len(self.stack) - n :] = [tuple(self.stack[len(self.stack) - n :])]

    # Memo
    def _get(self, idx: int) -> None:
        self.stack.append(self.memo[idx])

    def _put(self, idx: int) -> None:
        self.memo[idx] = self.stack[-1]

    # Scalars
    def _short_binstring(self) -> None:
        data = self.read(self.read(1)[0])
        self.stack.append(data if self.encoding == "bytes" else data.decode(self.encoding))

    def _binunicode(self) -> None:
        size = struct.unpack("<I", self.read(4))[0]
        data = self.read(size)
        if len(data) != size:
            raise EOFError("pickle data was truncated")
        self.stack.append(str(data, "utf-8", "surrogatepass"))

    def _long1(self) -> None:
        self.stack.append(pickle.decode_long(self.read(self.read(1)[0])))


def _unpack(fmt: str) -> Callable:
    size = struct.calcsize(fmt)
    return lambda u: u.stack.append(struct.unpack(fmt, u.read(size))[0])


def _push(value: Callable) -> Callable:
    return lambda u: u.stack.append(value())


_U = _RestrictedUnpickler
_OPCODES: dict[bytes, Callable[[_RestrictedUnpickler], None]] = {
    pickle.GLOBAL: _U._global,
    pickle.NEWOBJ: _U._newobj,
    pickle.REDUCE: _U._reduce,
    pickle.BUILD: _U._build,
    pickle.BINPERSID: _U._persid,
    pickle.APPEND: _U._append,
    pickle.APPENDS: _U._appends,
    pickle.SETITEM: _U._setitem,
    pickle.SETITEMS: _U._setitems,
    pickle.MARK: _U._mark,
    pickle.TUPLE: _U._tuple,
    pickle.TUPLE1: lambda u: u._tuple_n(1),
    pickle.TUPLE2: lambda u: u._tuple_n(2),
    pickle.TUPLE3: lambda u: u._tuple_n(3),
    pickle.NONE: _push(lambda: None),
    pickle.NEWFALSE: _push(lambda: False),
    pickle.NEWTRUE: _push(lambda: True),
    pickle.EMPTY_TUPLE: _push(tuple),
    pickle.EMPTY_LIST: _push(list),
    pickle.EMPTY_DICT: _push(dict),
    pickle.EMPTY_SET: _push(set),
    pickle.BININT: _unpack("<i"),
    pickle.BININT1: _unpack("<B"),
    pickle.BININT2: _unpack("<H"),
    pickle.BINFLOAT: _unpack(">d"),
    pickle.BINUNICODE: _U._binunicode,
    pickle.SHORT_BINSTRING: _U._short_binstring,
    pickle.LONG1: _U._long1,
    pickle.BINGET: lambda u: u._get(u.read(1)[0]),
    pickle.LONG_BINGET: lambda u: u._get(struct.unpack("<I", u.read(4))[0]),
    pickle.BINPUT: lambda u: u._put(u.read(1)[0]),
    pickle.LONG_BINPUT: lambda u: u._put(struct.unpack("<I", u.read(4))[0]),
    pickle.PROTO: lambda u: u.read(1)[0],
}
del _U


def _restricted_pickle_module(allowed: dict[str, Any]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose unpickler allows ``allowed`` only."""
    unpickler = type(
        "Unpickler",
        (_RestrictedUnpickler,),
        {"allowed": dict(allowed), "allowed_ids": frozenset(map(id, allowed.values()))},
    )

    def load(file: Any, **kwargs: Any) -> Any:
        return unpickler(file, **kwargs).load()

    module = types.ModuleType(f"{__name__}.restricted_pickle")
    module.Unpickler = unpickler
    module.load = load
    module.UnpicklingError = pickle.UnpicklingError
    return module


def _name_allowed(module: str, name: str, allowed: dict[str, Any]) -> bool:
    """Whether the restricted unpickler (behind torch's storage/module renames) takes a name."""
    if "Storage" in name:
        with contextlib.suppress(KeyError):
            torch.serialization.StorageType(name)
            return True
    module, full = _global_name({"torch.tensor": "torch._tensor"}.get(module, module), name)
    return module not in _BLOCKED_MODULES and full in allowed


def _unsafe_globals_in_pickle(f: FileOrPath, allowed: dict[str, Any]) -> set[str]:
    """Globals named in a zip checkpoint's ``data.pkl`` outside ``allowed``; static, never
    unpickles (``get_unsafe_globals_in_checkpoint`` for torch < 2.5)."""
    with zipfile.ZipFile(f) as archive:
        record = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n))
        data = archive.read(record)
    names, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("GLOBAL", "INST"):
            names.add(tuple(arg.split(" ", 1)))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.add(tuple(strings[-2:]))
        elif isinstance(arg, str) and "UNICODE" in opcode.name:
            strings.append(arg)
    return {_global_name(m, n)[1] for m, n in names if not _name_allowed(m, n, allowed)}


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
        if not USE_TORCH_SAFE_GLOBALS:
            return _unsafe_globals_in_pickle(f, _restricted_globals(extra))
        with mmengine_safe_globals(extra):
            return set(torch.serialization.get_unsafe_globals_in_checkpoint(f))
    except Exception:  # noqa: BLE001 - legacy format, damaged pickle, ...
        return set()


def _offending_globals(message: str, f: FileOrPath, start: int | None, extra: list) -> set[str]:
    found = set()
    for name in _GLOBAL_RE.findall(message):
        found.add(name if "." in name else f"builtins.{name}")  # torch strips "builtins."
    found.update(re.findall(r"builtins\.getattr\([^)]*\)", message))
    for name in re.findall(r"got <class '([^']+)'>", message):  # NEWOBJ/BUILD refusals
        found.add(name if "." in name else f"builtins.{name}")
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
            if USE_TORCH_SAFE_GLOBALS:
                with mmengine_safe_globals(extra_safe_globals):
                    ckpt = torch.load(f, map_location=map_location, weights_only=True)
            else:  # weights-only all the same: the unpickler runs allowlisted objects only
                module = _restricted_pickle_module(_restricted_globals(extra_safe_globals))
                ckpt = torch.load(
                    f, map_location=map_location, weights_only=False, pickle_module=module
                )
        except _Refused as exc:  # from the restricted unpickler (torch < 2.5)
            names = {exc.name} | _scan_globals(f, start, extra_safe_globals)
            raise UnsafeCheckpointError(name, names, str(exc)) from None
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

    prefix = "open-mmlab://" if filename.startswith("open-mmlab://") else "openmmlab://"
    model_name = filename[len(prefix) :]
    model_name = mc.get_deprecated_model_names().get(model_name, model_name)
    model_url = mc.get_external_models()[model_name]
    if model_url.startswith(("http://", "https://")):
        return load_from_http_safe(model_url, map_location=map_location)
    return safe_load_checkpoint(osp.join(_mmengine_home(), model_url), map_location)


def _mmengine_home() -> str:
    """mmengine's cache folder (as its private ``_get_mmengine_home``)."""
    cache = os.getenv("XDG_CACHE_HOME", osp.join("~", ".cache"))
    return osp.expanduser(os.getenv("MMENGINE_HOME", osp.join(cache, "mmengine")))


def load_from_torchvision_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine loader for ``torchvision://``/``modelzoo://`` model names."""

    model_name = filename.split("://", 1)[1]
    return load_from_http_safe(mc.get_torchvision_models()[model_name], map_location)


def load_from_mmcls_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine loader for ``mmcls://`` model names."""

    ckpt = load_from_http_safe(mc.get_mmcls_models()[filename[8:]], map_location)
    state = ckpt.get("state_dict", ckpt)  # the backbone of an mmcls classifier, as mmengine
    return {"state_dict": {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}}


def load_from_ceph_safe(filename: str, map_location: Any = None, backend: str = "petrel") -> Any:
    """mmengine loader for ``s3://``/``petrel://`` paths."""

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


_MMENGINE_LOADERS = [  # mmengine's own loaders (public names), restored on uninstall
    ("", "load_from_local"),
    (("http://", "https://"), "load_from_http"),
    (("open-mmlab://", "openmmlab://"), "load_from_openmmlab"),
    (("modelzoo://", "torchvision://"), "load_from_torchvision"),
    ("mmcls://", "load_from_mmcls"),
    ((r"(\S+\:)?s3://", r"(\S+\:)?petrel://"), "load_from_ceph"),
]
_installed = False


def install_checkpoint_safety() -> None:
    """Route mmengine's checkpoint schemes through the weights-only allowlisted loaders.

    Registers (``CheckpointLoader.register_scheme(force=True)``, mmengine's public API) the
    local-path, http(s), open-mmlab, torchvision/modelzoo, mmcls and s3/petrel schemes; this
    covers ``mmengine.runner.load_checkpoint``, ``Runner.load_checkpoint``/``resume`` and
    ``init_cfg=dict(type='Pretrained')``, also in mmseg's own tools running our configs.
    ``pavi://`` is left as is (it fails closed under the torch default). Idempotent.
    ``import ann_seg`` calls it unless the environment sets ``ANN_SEG_SAFE_CHECKPOINTS=0``;
    ``uninstall_checkpoint_safety`` restores mmengine's loaders.
    """
    global _installed

    with _LOCK:
        for prefixes, loader in _SCHEMES:
            mc.CheckpointLoader.register_scheme(prefixes=prefixes, loader=loader, force=True)
        _installed = True


def uninstall_checkpoint_safety() -> None:
    """Give mmengine's checkpoint schemes back their own loaders (for users who register
    loaders of their own); ``install_checkpoint_safety`` undoes it. Idempotent."""
    global _installed

    with _LOCK:
        for prefixes, name in _MMENGINE_LOADERS:
            mc.CheckpointLoader.register_scheme(
                prefixes=prefixes, loader=getattr(mc, name), force=True
            )
        _installed = False


def checkpoint_safety_installed() -> bool:
    return _installed


install_mmengine_checkpoint_loader = install_checkpoint_safety  # the 0.1 name
