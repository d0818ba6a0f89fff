"""Weights-only loading of mmengine checkpoints with an explicit allowlist, and checked weights.

torch's defaults plus what mmengine Runner checkpoints hold (numpy arrays, scalars and plain
dtypes, ``HistoryBuffer``, ``getattr`` of ``_GETATTR_ALLOWED``): on torch >= 2.5 through
``torch.load(weights_only=True)`` and ``safe_globals``, else (or to name what torch refused) a
restricted unpickler that resolves, calls, instantiates and builds allowlisted objects only.
Zip checkpoints are checked against their CRC-32s first (torch does not), weights for NaN/Inf
after. ``install_checkpoint_safety`` makes mmengine's own scheme loaders load this way.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import contextlib
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
import zlib
from collections import Counter, OrderedDict
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler
from mmengine.runner import checkpoint as mc
from torch import _weights_only_unpickler

from ann_seg.layers.compat import HAS_SAFE_GLOBALS

_LOCK = threading.RLock()  # our loads, and the process-wide state they change, one at a time
USE_TORCH_SAFE_GLOBALS = HAS_SAFE_GLOBALS  # else the restricted unpickler (tests switch it)
_CORRUPT_ERRORS = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, IndexError)
_CORRUPT_ERRORS += (struct.error, UnicodeDecodeError, OverflowError, zlib.error)
_DATA_PKL = re.compile(r"[^/]+/data\.pkl").fullmatch  # the pickle in torch's zip format
_ONE_CYCLE = object()  # stands for OneCycleParamScheduler: attributes only, never instantiated
_GETATTR_ALLOWED = {
    HistoryBuffer: (HistoryBuffer, frozenset({"min", "max", "current", "mean"})),
    _ONE_CYCLE: (OneCycleParamScheduler, frozenset({"_annealing_cos", "_annealing_linear"})),
}


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint was refused because it pickles objects outside the allowlist."""

    def __init__(self, filename: str, offending: Iterable[str], detail: str = ""):
        self.filename, self.offending = filename, sorted(set(offending))
        super().__init__(
            f"Refused to load checkpoint {filename!r}: it contains pickled objects outside the "
            f"allowlist for weights-only loading ({', '.join(self.offending)}). "
            + (f"Refused: {detail}. " if detail else "")
            + "Nothing from it was executed. Only load checkpoints from sources you trust."
        )


class CorruptCheckpointError(RuntimeError):
    """A checkpoint is truncated, corrupt, not a torch checkpoint, or has non-finite weights."""

    def __init__(self, filename: str, detail: str, problem: str = ""):
        self.filename = filename
        problem = problem or "is truncated, corrupt or not a file written by torch.save"
        super().__init__(f"Checkpoint {filename!r} {problem}: {detail}")


class _Refused(Exception):
    """``name`` was refused before it ran. Not an ``UnpicklingError``: torch passes it on."""

    def __init__(self, name: str, what: str = "global"):
        super().__init__(f"{what} {name} is not allowed")
        self.name = name


def _restricted_getattr(obj: Any, name: str) -> Any:
    target, names = _GETATTR_ALLOWED.get(obj, (0, ())) if type(obj).__hash__ else (0, ())
    if isinstance(name, str) and name in names:
        return getattr(target, name)
    owner = getattr(obj, "__qualname__", type(obj).__qualname__)
    raise _Refused(f"builtins.getattr({owner}, {name!r})", "attribute lookup")


def get_checkpoint_safe_globals() -> list:
    """The allowlist, as entries for ``torch.serialization.safe_globals``."""
    rebuild = [np.ndarray((0,)).__reduce__()[0], np.float64(0).__reduce__()[0]]
    entries: list = [np.ndarray, np.dtype, HistoryBuffer, (_restricted_getattr, "builtins.getattr")]
    entries.append((_ONE_CYCLE, f"{OneCycleParamScheduler.__module__}.OneCycleParamScheduler"))
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x, 2.x
        entries += [(f, f"{core}.multiarray.{f.__name__}") for f in rebuild]
    # dtype instances are rebuilt via BUILD, which checks their concrete class: plain ones only
    dtypes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSU"} - {np.dtype}
    return entries + sorted(dtypes, key=lambda t: t.__qualname__)


@contextlib.contextmanager
def mmengine_safe_globals(extra_safe_globals: Iterable = ()) -> Iterator[None]:
    """The allowlist in ``torch.load(weights_only=True)`` for the duration (torch >= 2.5).
    torch's allowlist is process-wide; entries the caller had allowed already stay."""
    if not HAS_SAFE_GLOBALS:
        raise RuntimeError(f"needs torch >= 2.5 (safe_globals); torch {torch.__version__} has none")
    with _LOCK:
        present = set(torch.serialization.get_safe_globals())
        new = get_checkpoint_safe_globals() + list(extra_safe_globals)
        with torch.serialization.safe_globals([g for g in new if g not in present]):
            yield


def _global_name(module: str, name: str) -> str:
    """``module.name`` after pickle's Python 2 renames and torch's ``torch.tensor`` one."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{'torch._tensor' if module == 'torch.tensor' else module}.{name}"


def _describe(obj: Any) -> str:
    """``module.qualname`` of a class or function, else of the object's type."""
    if not isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        obj = type(obj)
    return f"{obj.__module__}.{obj.__qualname__}"


def _checked(opcode: bytes, depth: int, what: str) -> Callable:
    """The unpickler's ``opcode``, run if the object ``depth`` down (BUILD: its type) is allowed."""
    run = pickle._Unpickler.dispatch[opcode[0]]

    def load(self: _RestrictedUnpickler) -> None:
        target = type(self.stack[-depth]) if opcode == pickle.BUILD else self.stack[-depth]
        if id(target) not in (self.build_ids if opcode == pickle.BUILD else self.ids):
            raise _Refused(_describe(target), what)
        run(self)

    return load


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcodes can be replaced) limited to ``allowed``, as torch's
    weights-only one: ``find_class`` never imports; REDUCE/INST/OBJ call, NEWOBJ instantiates and
    BUILD sets the state of allowed objects only (BUILD also of tensors and ``OrderedDict``)."""

    # allowed ("module.name" -> object), ids and build_ids: set per load
    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.REDUCE[0]] = _checked(pickle.REDUCE, 2, "calling")
    dispatch[pickle.NEWOBJ[0]] = _checked(pickle.NEWOBJ, 2, "instantiating")
    dispatch[pickle.NEWOBJ_EX[0]] = _checked(pickle.NEWOBJ_EX, 3, "instantiating")
    dispatch[pickle.BUILD[0]] = _checked(pickle.BUILD, 2, "setting the state of")

    def find_class(self, module: str, name: str) -> Any:
        full = _global_name(module, name)
        if full not in self.allowed:
            raise _Refused(full)
        return self.allowed[full]

    def _instantiate(self, klass: Any, args: list) -> None:  # INST, OBJ
        if id(klass) not in self.ids:
            raise _Refused(_describe(klass), "instantiating")
        super()._instantiate(klass, args)


def _restricted_pickle_module(extra_safe_globals: Iterable = ()) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` allowing, by ``"module.name"``, the allowlist,
    ``extra_safe_globals`` and torch's weights-only defaults (as of torch 2.13)."""
    allowed: dict[str, Any] = {"collections.Counter": Counter, "builtins.set": set}
    allowed.update({"builtins.complex": complex, "builtins.bytearray": bytearray})
    allowed.update({"_codecs.encode": codecs.encode, "torch.device": torch.device})
    dtypes = [t for t in vars(torch).values() if isinstance(t, (torch.dtype, torch.qscheme))]
    allowed.update({str(t): t for t in dtypes})
    utils = {n: getattr(torch._utils, n) for n in dir(torch._utils) if n.startswith("_rebuild_")}
    allowed.update({f"torch._utils.{n}": f for n, f in utils.items() if "xla" not in n})
    for entry in get_checkpoint_safe_globals() + list(extra_safe_globals):
        obj, name = entry if isinstance(entry, tuple) else (entry, _describe(entry))
        allowed[name] = obj
    allowed.update(_weights_only_unpickler._get_allowed_globals())
    ns = {"allowed": allowed, "ids": frozenset(map(id, allowed.values()))}
    classes = [v for v in allowed.values() if isinstance(v, type)]
    ns["build_ids"] = frozenset(map(id, classes + [torch.Tensor, torch.nn.Parameter, OrderedDict]))
    module = types.ModuleType(f"{__name__}.restricted_pickle")
    module.Unpickler = type("Unpickler", (_RestrictedUnpickler,), ns)
    module.load = lambda file, **kwargs: module.Unpickler(file, **kwargs).load()
    module.UnpicklingError = pickle.UnpicklingError
    return module


def _unsafe_globals(file: BinaryIO, allowed: dict[str, Any]) -> set[str]:
    """The globals a zip checkpoint's pickle names outside ``allowed`` (statically; best effort)."""
    with contextlib.suppress(Exception), zipfile.ZipFile(file) as archive:
        data = archive.read(next(n for n in archive.namelist() if _DATA_PKL(n)))
        ops = pickletools.genops(data)  # GLOBAL/INST: what torch.save writes
        names = {
            _global_name(*a.split(" ", 1)) for op, a, _ in ops if op.name in ("GLOBAL", "INST")
        }
        return {n for n in names if n not in allowed and not n.endswith("Storage")}
    return set()


def _check_file(file: BinaryIO, name: str) -> None:
    """Each entry of a zip checkpoint is read once, checked against its CRC-32 by zipfile."""
    head, entry = file.read(4), None
    if head.startswith(b"\x80"):  # PROTO: a pickle, torch's legacy format
        return
    if head != b"PK\x03\x04":
        raise CorruptCheckpointError(name, "neither a zip archive nor a pickle")
    try:
        with zipfile.ZipFile(file) as archive:
            if any(n.endswith("/constants.pkl") for n in archive.namelist()):
                raise UnsafeCheckpointError(name, ["TorchScript code (use torch.jit.load)"])
            if not any(_DATA_PKL(n) for n in archive.namelist()):
                raise CorruptCheckpointError(name, "a zip archive without data.pkl")
            for info in archive.infolist():
                entry = info.filename
                if info.CRC or not info.file_size:  # CRC 0: saved without (set_crc32_options)
                    with archive.open(info) as data:
                        while data.read(1 << 20):
                            pass
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        where = f"entry {entry!r}" if entry else "zip archive"
        raise CorruptCheckpointError(name, f"{where}: {exc}") from None


def _check_finite(ckpt: Any, name: str) -> Any:
    """``ckpt`` if its weights (``state_dict``, ``ema_state_dict``, else itself) are finite."""
    d = ckpt if isinstance(ckpt, dict) else {}
    states = [d[k] for k in ("state_dict", "ema_state_dict") if isinstance(d.get(k), dict)] or [d]
    tensors = [(k, v) for s in states for k, v in s.items() if torch.is_tensor(v)]
    tensors = [(k, v) for k, v in tensors if v.layout == torch.strided and not v.is_meta]
    bad = [k for k, v in tensors if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CorruptCheckpointError(name, listed, f"has NaN or Inf in {len(bad)} weight tensor(s)")
    return ckpt


@contextlib.contextmanager
def _history_buffer_guard(name: str, extra: list) -> Iterator[None]:
    """``HistoryBuffer.__setstate__`` updates a class-level dict: anything but HistoryBuffer's
    own statistics methods (or trusted ``extra`` globals) set there is undone and refused."""
    stats, old = HistoryBuffer._statistics_methods, dict(HistoryBuffer._statistics_methods)
    want = {**{k: getattr(HistoryBuffer, k) for k in _GETATTR_ALLOWED[HistoryBuffer][1]}, **old}
    ok = {id(g[0] if isinstance(g, tuple) else g) for g in extra}
    try:
        yield
    finally:
        bad = sorted(k for k, v in stats.items() if v is not want.get(k) and id(v) not in ok)
        for k in bad:
            del stats[k]
        stats.update({k: old[k] for k in bad if k in old})
    if bad:
        raise UnsafeCheckpointError(name, [f"HistoryBuffer.statistics_methods[{k!r}]" for k in bad])


def _load(f: Any, map_location: Any, name: str, extra_safe_globals: Iterable = ()) -> Any:
    extra = list(extra_safe_globals)
    restricted = _restricted_pickle_module(extra)
    # a file object is copied: the checks read it from the start, and it may be loaded twice
    opened = open(f, "rb") if isinstance(f, (str, os.PathLike)) else io.BytesIO(f.read())
    with opened as file, _LOCK:
        _check_file(file, name)
        try:
            with _history_buffer_guard(name, extra):
                if USE_TORCH_SAFE_GLOBALS:  # else, or where torch refuses, the restricted one
                    with contextlib.suppress(pickle.UnpicklingError), mmengine_safe_globals(extra):
                        file.seek(0)
                        ckpt = torch.serialization.load(file, map_location, weights_only=True)
                        return _check_finite(ckpt, name)
                file.seek(0)
                ckpt = torch.serialization.load(file, map_location, restricted, weights_only=False)
            if USE_TORCH_SAFE_GLOBALS:  # torch refused what the restricted unpickler allows
                raise _Refused("torch.load(weights_only=True)", "an object refused by")
        except _Refused as exc:
            found = _unsafe_globals(file, restricted.Unpickler.allowed)
            raise UnsafeCheckpointError(name, {exc.name} | found, str(exc)) from None
        except _CORRUPT_ERRORS as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else "unexpected end of file"
            raise CorruptCheckpointError(name, detail) from None
    return _check_finite(ckpt, name)


def safe_load_checkpoint(
    path_or_file: Any, map_location: Any = "cpu", *, extra_safe_globals: Iterable = ()
) -> Any:
    """Load a path or binary file written by ``torch.save`` weights-only with the allowlist
    (and ``extra_safe_globals``, in ``safe_globals`` form), checked. Raises FileNotFoundError,
    UnsafeCheckpointError (objects outside the allowlist; none ran) or CorruptCheckpointError
    (truncated, an entry failing its CRC-32, not a torch checkpoint, NaN/Inf weights)."""
    name = str(getattr(path_or_file, "name", None) or f"<{type(path_or_file).__name__} object>")
    if isinstance(path_or_file, (str, os.PathLike)):
        path_or_file = name = osp.expanduser(os.fspath(path_or_file))
        if not osp.isfile(path_or_file):
            raise FileNotFoundError(f"Checkpoint {path_or_file!r} can not be found.")
    return _load(path_or_file, map_location, name, extra_safe_globals)


def _wrap_mmengine_loader(name: str) -> Callable:
    """mmengine's loader ``name``, its ``torch.load`` (direct or in ``torch.hub``) being
    :func:`_load`: ``torch.load`` is swapped process-wide while it runs, under the lock."""
    original = getattr(mc, name)

    def loader(filename: str, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        def load(f: Any, map_location: Any = None, *_: Any, **__: Any) -> Any:
            path = os.fspath(f) if isinstance(f, (str, os.PathLike)) else None
            cached = path not in (None, osp.expanduser(filename))
            return _load(f, map_location, f"{filename} (cached at {path})" if cached else filename)

        with _LOCK:
            saved, torch.load = torch.load, load
            try:
                return original(filename, map_location, *args, **kwargs)
            finally:
                torch.load = saved

    loader.__name__ = loader.__qualname__ = f"{name}_safe"  # mmengine logs __name__[10:]
    return loader


_SCHEMES = {  # mmengine's loaders (pavi:// is left as is) and their prefixes
    "load_from_local": "",
    "load_from_http": ("http://", "https://"),
    "load_from_openmmlab": ("open-mmlab://", "openmmlab://"),
    "load_from_torchvision": ("modelzoo://", "torchvision://"),
    "load_from_mmcls": "mmcls://",
    "load_from_ceph": (r"(\S+\:)?s3://", r"(\S+\:)?petrel://"),
}
_SAFE_LOADERS = {name: _wrap_mmengine_loader(name) for name in _SCHEMES}
load_from_local_safe = _SAFE_LOADERS["load_from_local"]
load_from_http_safe = _SAFE_LOADERS["load_from_http"]


def install_checkpoint_safety(safe: bool = True) -> None:
    """Register the safe loaders for mmengine's schemes (``safe=False``: mmengine's own)."""
    for name, prefixes in _SCHEMES.items():
        loader = _SAFE_LOADERS[name] if safe else getattr(mc, name)
        mc.CheckpointLoader.register_scheme(prefixes, loader, force=True)


def uninstall_checkpoint_safety() -> None:
    install_checkpoint_safety(safe=False)


def checkpoint_safety_installed() -> bool:
    return mc.CheckpointLoader._schemes.get("") is load_from_local_safe


install_mmengine_checkpoint_loader = install_checkpoint_safety  # the 0.1 name
