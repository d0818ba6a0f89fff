"""mmseg's published ANN and NonLocal models by name: the index, the download, the conversion.

A checkpoint argument anywhere in ann_seg (``ann-seg infer/test/benchmark-inference``,
``build_segmentor(checkpoint=...)``) may be

* a name from the index (``model_zoo.json``, shipped in the package: mmseg's Cityscapes and
  ADE20K entries of ``configs/ann`` and ``configs/nonlocal_net`` with the ann_seg config that
  reproduces each, its URL and mmseg's reported mIoU, memory and fps), in mmseg's 0.x form
  (``ann_r101-d8_769x769_40k_cityscapes``) or its 1.x config name
  (``ann_r101-d8_4xb2-40k_cityscapes-769x769``);
* an http(s) URL of an mmseg ANN/NonLocal checkpoint;
* a local checkpoint: ann_seg's own, or mmseg's.

URLs are downloaded once into torch's hub cache (``$TORCH_HOME/hub/checkpoints``, where
mmengine's and torch's own loaders put them) with a progress bar; a file name carrying a hash
prefix (``-<sha256 prefix>.pth``, as mmseg publishes) is checked on download and on every
cache hit. A download only enters the cache once it has passed every check (hash, weights-only
load, an ANN or NonLocal model): a refused or interrupted download leaves nothing behind.
mmseg-layout state dicts (downloaded or local) are converted in memory (``keymap``).
"""

import contextlib
import difflib
import hashlib
import json
import os
import os.path as osp
import re
import sys
import urllib.error
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlparse

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from .checkpoint import CorruptCheckpointError, safe_load_checkpoint
from .keymap import ConversionError, checkpoint_layout, convert_state_dict, decode_head_modules

INDEX_FILE = osp.join(osp.dirname(osp.abspath(__file__)), "model_zoo.json")
INDEX_ENV = "ANN_SEG_MODEL_INDEX"  # another index file of the same format (a mirror, tests)
MMSEG_HOST = "download.openmmlab.com"
# mmseg's model folders on MMSEG_HOST that ann_seg's heads load
MMSEG_FOLDERS = {"ann": "ann", "nonlocal_net": "nonlocal"}
# torch.hub's rule for the hash prefix in a file name (load_state_dict_from_url)
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")


class ModelZooError(RuntimeError):
    """A published model cannot be had: unknown name, unreachable, refused or corrupt."""


@dataclass(frozen=True)
class PublishedModel:
    """One entry of the index (mmseg's reported figures; ``None`` where mmseg gives none)."""

    name: str
    mmseg_name: str
    family: str
    dataset: str
    backbone: str
    crop_size: str
    iterations: int
    mIoU: float
    mIoU_ms_flip: Optional[float]
    memory_gb: Optional[float]
    fps: Optional[float]
    config: str
    url: str

    @property
    def num_classes(self) -> int:
        return {"cityscapes": 19, "ade20k": 150}[self.dataset]


_INDEX: Dict[str, List[PublishedModel]] = {}


def index_file() -> str:
    return os.environ.get(INDEX_ENV) or INDEX_FILE


def published_models() -> List[PublishedModel]:
    """Every entry of the index (``$ANN_SEG_MODEL_INDEX`` or the packaged one), in order."""
    path = index_file()
    if path not in _INDEX:
        with open(path, encoding="utf-8") as f:
            _INDEX[path] = [PublishedModel(**m) for m in json.load(f)["models"]]
    return list(_INDEX[path])


def find_published(name: str) -> Optional[PublishedModel]:
    """The entry named ``name`` (mmseg 0.x name, 1.x config name, or its URL), else None."""
    for model in published_models():
        if name in (model.name, model.mmseg_name, model.url):
            return model
    return None


def is_url(checkpoint: str) -> bool:
    return checkpoint.startswith(("http://", "https://"))


def cache_dir() -> str:
    """torch's hub checkpoint cache (``$TORCH_HOME/hub/checkpoints``), mmengine's too."""
    return osp.join(torch.hub.get_dir(), "checkpoints")


def hash_prefix(url: str) -> Optional[str]:
    """The sha256 prefix a file name carries (``name-<hex>.pth``), as torch.hub reads it."""
    match = HASH_REGEX.search(osp.basename(urlparse(url).path))
    return match.group(1) if match and match.group(1) else None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_mmseg_url(url: str) -> None:
    """Refuse, before any download, mmseg model-zoo URLs of other architectures."""
    parsed = urlparse(url)
    parts = parsed.path.strip("/").split("/")
    if parsed.hostname == MMSEG_HOST and "mmsegmentation" in parts:
        folder = parts[parts.index("mmsegmentation") + 2 : -2]
        if folder and folder[0] not in MMSEG_FOLDERS:
            raise ModelZooError(
                f"{url} is an mmseg {folder[0]} model: ann_seg loads mmseg's ANN and NonLocal "
                "models only (ann-seg models lists them)"
            )


def _state_of(checkpoint, source: str) -> Dict[str, torch.Tensor]:
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelZooError(f"{source} holds no state_dict")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def _check_family(state: dict, source: str) -> str:
    found = checkpoint_layout(state)
    if found is None:
        raise ModelZooError(
            f"{source} is not an ANN or NonLocal model (decode_head modules: "
            f"{decode_head_modules(state) or 'none'}); ann-seg models lists the ones that load"
        )
    return found[0]


def download(url: str, progress: Optional[bool] = None) -> Tuple[str, dict]:
    """``(cached path, loaded checkpoint)`` of ``url``: from the cache, or downloaded into it
    after the hash, weights-only and architecture checks. Raises ``ModelZooError``."""
    _check_mmseg_url(url)
    name = osp.basename(urlparse(url).path)
    if not name:
        raise ModelZooError(f"{url} names no file")
    prefix = hash_prefix(url)
    cached = osp.join(cache_dir(), name)
    if osp.isfile(cached):
        if prefix is None or _sha256(cached).startswith(prefix):
            try:
                return cached, safe_load_checkpoint(cached, map_location="cpu")
            except CorruptCheckpointError:
                pass  # damaged since it was cached: fetch it again
        os.remove(cached)
    os.makedirs(cache_dir(), exist_ok=True)
    staging = osp.join(cache_dir(), f".{name}.{os.getpid()}.download")
    progress = sys.stderr.isatty() if progress is None else progress
    try:
        try:
            torch.hub.download_url_to_file(url, staging, prefix, progress=progress)
        except urllib.error.HTTPError as error:
            detail = f"HTTP {error.code} {error.reason}"
            raise ModelZooError(f"cannot download {url}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ModelZooError(f"cannot download {url}: {reason} (not reachable)") from None
        except RuntimeError as error:
            if "invalid hash value" not in str(error):
                raise
            raise ModelZooError(
                f"download of {url} is corrupt or not the published file: its sha256 does "
                f"not start with {prefix}, the prefix in its name; nothing was kept"
            ) from None
        try:
            checkpoint = safe_load_checkpoint(staging, map_location="cpu")
        except CorruptCheckpointError as error:
            detail = str(error).split(": ", 1)[-1].splitlines()[0]
            raise ModelZooError(
                f"download of {url} is not a readable checkpoint ({detail}); nothing was kept"
            ) from None
        _check_family(_state_of(checkpoint, url), url)
        os.replace(staging, cached)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(staging)
    return cached, checkpoint


def resolve_source(checkpoint: str) -> Tuple[str, Optional[PublishedModel]]:
    """``(what to load, index entry)``: an index name becomes its URL; a URL, a local file
    and mmengine's other schemes stay. Raises ``ModelZooError`` for an unknown name."""
    checkpoint = os.fspath(checkpoint)
    entry = find_published(checkpoint)
    if entry is not None and not osp.isfile(checkpoint):
        return entry.url, entry
    if is_url(checkpoint) or osp.isfile(checkpoint) or "://" in checkpoint:
        return checkpoint, entry
    names = [n for m in published_models() for n in (m.name, m.mmseg_name)]
    close = difflib.get_close_matches(checkpoint, names, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else " (ann-seg models lists them)"
    raise ModelZooError(
        f"checkpoint {checkpoint!r} is neither a file, a URL nor a published model name{hint}"
    )


def load_checkpoint(
    checkpoint: str, progress: Optional[bool] = None
) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state dict in ann_seg's layout, meta)`` of a checkpoint, a URL or a published name;
    weights-only loading throughout. Raises ``ModelZooError`` (or the checkpoint module's
    ``CorruptCheckpointError``/``UnsafeCheckpointError`` for a local file)."""
    source, entry = resolve_source(checkpoint)
    if is_url(source):
        _, loaded = download(source, progress)
    elif osp.isfile(source):
        loaded = safe_load_checkpoint(source, map_location="cpu")
    else:  # open-mmlab://, s3://...: mmengine's schemes (weights-only where ann_seg set them)
        loaded = CheckpointLoader.load_checkpoint(source, map_location="cpu")
    state = _state_of(loaded, checkpoint)
    if is_url(source):
        _check_family(state, checkpoint)
    found = checkpoint_layout(state)
    if found is not None and found[1] == "mmseg":
        try:
            state = convert_state_dict(state, checkpoint)
        except ConversionError as error:
            raise ModelZooError(str(error)) from None
    meta = loaded.get("meta") if isinstance(loaded, dict) else None
    return state, dict(meta or {})


def describe_family(state: Dict[str, torch.Tensor]) -> Optional[str]:
    found = checkpoint_layout(state)
    return None if found is None else {"ann": "ANN", "nonlocal": "NonLocal"}[found[0]]
