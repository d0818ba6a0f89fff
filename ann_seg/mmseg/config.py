"""Config files: the packaged ones, ``mmseg::`` names, and loading them as mmseg's tools do.

The configs ship inside the package, at ``ann_seg/.mim/configs`` (mmseg's ``.mim``
convention; the repository's ``configs/`` links there). Refer to one by a path, or by
``ann_seg::<folder>/<file>.py`` in our tools and in ``load_config``; from a config of your own
(run by our tools, which import ann_seg first) ``_base_ = ['ann_seg::ann/<file>.py']`` works as
``mmseg::`` does.
"""

import ast
import difflib
import os.path as osp
import re
from typing import Any, Iterator, Optional, Sequence, Union

import mmengine.config.config as mmengine_config_module
import mmengine.registry as mmengine_registry
import mmseg.registry as mmseg_registry
from mmengine.config import Config
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.hub import get_config
from mmengine.registry import Registry
from mmengine.utils import import_modules_from_strings

ConfigLike = Union[str, Config]
PACKAGE_SCOPE = "ann_seg"
CONFIG_ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), ".mim", "configs")

# ``_base_ = ['ann_seg::...']``: mmengine resolves scopes listed in MODULE2PACKAGE through the
# installed package's ``.mim/configs``; its package lookup (pkg_resources' location) misses
# editable installs, so for this package it is answered with the imported package's folder
MODULE2PACKAGE.setdefault(PACKAGE_SCOPE, PACKAGE_SCOPE)
_mmengine_installed_path = mmengine_config_module.get_installed_path


def _installed_path(package: str) -> str:
    if package == PACKAGE_SCOPE:
        return osp.dirname(osp.dirname(osp.abspath(__file__)))
    return _mmengine_installed_path(package)


mmengine_config_module.get_installed_path = _installed_path


class ConfigError(ValueError):
    """A config file or a ``--cfg-options`` key is wrong; the message names the file, line or
    key."""


class UserOptions(dict):
    """``--cfg-options`` typed on a command line: ``load_config`` checks that every key
    exists in the config (``+key`` adds one on purpose). Plain dicts (library callers) are
    merged as mmengine merges them."""


def packaged_config(name: str) -> str:
    """Path of a packaged config: ``'demo/x.py'`` or ``'ann_seg::demo/x.py'``."""
    if name.startswith(PACKAGE_SCOPE + "::"):
        name = name.split("::", 1)[1]
    path = osp.join(CONFIG_ROOT, name)
    if not osp.isfile(path):
        raise FileNotFoundError(f"no packaged config {name!r} under {CONFIG_ROOT}")
    return path


def config_name(config: ConfigLike) -> str:
    """``work_dirs`` name of a config: its file name without the extension."""
    if isinstance(config, Config):
        return osp.splitext(osp.basename(config.filename or "config"))[0]
    return osp.splitext(osp.basename(config.split("::", 1)[-1]))[0]


def read_config(config: ConfigLike) -> Config:
    """A copy of ``config``: a path, ``ann_seg::...``, ``mmseg::...`` or a ``Config``."""
    if isinstance(config, Config):
        return config.copy()
    if config.startswith(PACKAGE_SCOPE + "::"):
        return Config.fromfile(packaged_config(config))
    if "::" in config:
        return get_config(config)
    if not osp.isfile(config):
        raise FileNotFoundError(f"config file not found: {config}")
    try:
        cfg = Config.fromfile(config)  # imports the config's custom_imports
        # ``_base_ = ['ann_seg::...']`` tags the inherited dicts ``_scope_='ann_seg'``, which names
        # no registry: ann_seg registers in mmseg's, so those dicts build in mmseg's scope
        _replace_values(cfg._cfg_dict, "_scope_", PACKAGE_SCOPE, "mmseg")
        return cfg
    except SyntaxError as error:  # mmengine parses without the file name ("<unknown>")
        raise ConfigError(_syntax_error_location(config, error)) from None
    except ImportError as error:
        raise ConfigError(_import_failure(config, error)) from None


_FAILED_IMPORT = re.compile(r"^Failed to import (\S+)$")


def _import_failure(name: str, error: ImportError) -> str:
    """One line for a ``custom_imports`` entry that does not import: mmengine chains three
    errors (the module's own, "Failed to import <module>", the list and ``sys.path``)."""
    module, root, seen = None, error, set()
    while root is not None and id(root) not in seen:
        seen.add(id(root))
        found = _FAILED_IMPORT.match(str(root))
        module = found.group(1) if found else module
        if root.__cause__ is None and root.__context__ is None:
            break
        root = root.__cause__ or root.__context__
    detail = f"{type(root).__name__}: {root}" if root is not error else str(error).splitlines()[0]
    what = f"cannot import {module!r}" if module else "an import failed"
    return f"{name}: custom_imports: {what} ({detail})"


def import_custom_modules(cfg: Config) -> None:
    """Import ``cfg.custom_imports`` (a config built in code: ``Config.fromfile`` imports a
    file's); raises ``ConfigError`` naming the module that does not import."""
    if not cfg.get("custom_imports"):
        return
    try:
        import_modules_from_strings(**cfg.custom_imports)
    except ImportError as error:
        raise ConfigError(_import_failure(cfg.filename or "the config", error)) from None


def _syntax_error_location(path: str, error: SyntaxError) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            ast.parse(f.read(), filename=path)
    except SyntaxError as own:
        return f"{path}, line {own.lineno}: {own.msg}: {(own.text or '').strip()}"
    return (
        f"{path}: a base config it inherits has a syntax error at line {error.lineno}: "
        f"{error.msg}: {(error.text or '').strip()}"
    )


def _children(node: Any) -> list:
    if isinstance(node, dict):
        return list(node.keys())
    if isinstance(node, (list, tuple)):
        return [str(i) for i in range(len(node))]
    return []


def check_options(cfg: Config, options: dict) -> dict:
    """``options`` with ``+`` prefixes removed, after checking that every other key exists in
    ``cfg``; raises ``ConfigError`` naming the key and the closest existing one."""
    checked = {}
    for key, value in options.items():
        if key.startswith("+"):
            checked[key[1:]] = value
            continue
        node, path = cfg._cfg_dict, []
        for part in key.split("."):
            names = _children(node)
            if part not in names:
                where = ".".join(path) or "the top level"
                close = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
                if close:
                    hint = f"; did you mean {'.'.join(path + close)}?"
                else:
                    hint = f" (keys there: {', '.join(names[:12]) or 'none'})."
                raise ConfigError(
                    f"--cfg-options {key}: {cfg.filename or 'the config'} has no key {part!r} "
                    f"under {where}{hint} Use +{key}=... to add a new key on purpose."
                )
            node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
            path.append(part)
        _check_option_value(cfg, key, node, value)
        checked[key] = value
    return checked


def _check_option_value(cfg: Config, key: str, current: Any, value: Any) -> None:
    """A number or True/False in the config takes a number or True/False (``DictAction`` turns
    ``abc`` into a string, which mmengine would take and fail on later)."""
    if not isinstance(current, (bool, int, float)) or not isinstance(value, str):
        return
    kind = "True or False" if isinstance(current, bool) else "a number"
    raise ConfigError(
        f"--cfg-options {key}={value}: {cfg.filename or 'the config'} has {current!r} there; "
        f"give {kind}"
    )


# ------------------------------------------------------------------ checks after loading

TEST_MODES = ("whole", "slide")


def _registries() -> list:
    found = [getattr(mmseg_registry, name) for name in mmseg_registry.__all__]
    found += [v for v in vars(mmengine_registry).values() if isinstance(v, Registry)]
    return list({id(r): r for r in found}.values())


def _registered(name: str, registries: list) -> bool:
    for registry in registries:
        try:
            if registry.get(name) is not None:
                return True
        except Exception:  # noqa: BLE001 - a scope whose package fails to import: not found
            continue
    return False


def _types(node: Any, path: str) -> Iterator[tuple]:
    """``(key path, type name)`` of every ``type`` given by name in ``node``'s tree."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield (f"{path}.type" if path else "type", node["type"])
        for key, value in node.items():
            if key != "type":
                yield from _types(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _types(value, f"{path}.{index}")


def check_config(cfg: Config) -> None:
    """Refuse, before anything is built, what mmengine and mmseg would refuse only in the
    middle of the work (a traceback), or on every image: a ``type`` that no registry of mmseg
    or mmengine holds, and a ``model.test_cfg.mode`` other than ``whole``/``slide`` (or
    ``slide`` without ``crop_size`` and ``stride``). Raises ``ConfigError`` naming the file,
    the key and the value."""
    name = cfg.filename or "the config"
    registries = _registries()
    for path, type_name in _types(cfg._cfg_dict, ""):
        if _registered(type_name, registries):
            continue
        names = sorted({key for r in registries for key in r._module_dict})
        close = difflib.get_close_matches(type_name.split(".")[-1], names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{name}: {path}={type_name!r} is not a registered type (mmseg, mmengine or a "
            f"module of custom_imports){hint}"
        )
    model = cfg.get("model")
    test_cfg = model.get("test_cfg") if isinstance(model, dict) else None
    if not isinstance(test_cfg, dict):
        return
    mode = test_cfg.get("mode", "whole")
    if mode not in TEST_MODES:
        close = difflib.get_close_matches(str(mode), TEST_MODES, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{name}: model.test_cfg.mode={mode!r}: the allowed values are 'whole' and "
            f"'slide'{hint}"
        )
    if mode == "slide":
        for key in ("crop_size", "stride"):
            size = test_cfg.get(key)
            pair = size if isinstance(size, (list, tuple)) else None
            if not pair or len(pair) != 2 or not all(_positive_int(v) for v in pair):
                raise ConfigError(
                    f"{name}: model.test_cfg.mode='slide' needs model.test_cfg.{key}=(H,W) "
                    f"in pixels, got {size!r}"
                )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def load_config(
    config: ConfigLike, cfg_options: Optional[dict] = None, work_dir: Optional[str] = None
) -> Config:
    """Read a config, merge ``cfg_options`` and set ``work_dir`` (default
    ``./work_dirs/<config name>``), as mmseg's tools do; then import its ``custom_imports`` and
    check it (``check_config``). Raises ``ConfigError`` for what is wrong in the file or the
    options, naming the key."""
    cfg = read_config(config)
    if isinstance(cfg_options, UserOptions):
        cfg_options = check_options(cfg, cfg_options)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    import_custom_modules(cfg)  # a Config given in code: its types registered before the check
    check_config(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", config_name(config))
    return cfg


def _size(text: str) -> tuple:
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--slide: sizes are H or HxW in pixels, got {text!r}")
    return (int(parts[0]), int(parts[-1]))


def slide_options(config: ConfigLike, window: Sequence[str] = ()) -> dict:
    """``--slide [CROP [STRIDE]]`` as cfg-options: mmseg's sliding-window test mode with crop
    CROP (default: the config's ``crop_size``) and stride STRIDE (default 2/3 of the crop, as
    mmseg's 769x769 Cityscapes configs: stride 513)."""
    if len(window) > 2:
        raise ConfigError(f"--slide takes at most CROP and STRIDE, got {list(window)}")
    if window:
        crop = _size(window[0])
    else:
        crop = read_config(config).get("crop_size", None)
        if crop is None:
            raise ConfigError(f"--slide: {config} has no crop_size; give one: --slide 512x1024")
        crop = (int(crop[0]), int(crop[1]))
    stride = _size(window[1]) if len(window) > 1 else tuple(max(1, c * 2 // 3) for c in crop)
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise ConfigError(f"--slide: stride {stride} is larger than the crop {crop}")
    return {"+model.test_cfg": dict(mode="slide", crop_size=crop, stride=stride)}


def _replace_values(node, key: str, old, new) -> None:
    """Every ``key: old`` in the config tree (dicts, lists, tuples) becomes ``key: new``."""
    if isinstance(node, dict):
        if node.get(key) == old:
            node[key] = new
        for value in node.values():
            _replace_values(value, key, old, new)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_values(value, key, old, new)


def replace_sync_bn(node) -> None:
    """SyncBN has no single-process (CPU) implementation: use plain BN in the config tree."""
    _replace_values(node, "type", "SyncBN", "BN")
