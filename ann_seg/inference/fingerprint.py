"""What makes a folder inference's outputs, as digests: a re-run skips an image only when the
model that would segment it now is the one that made its outputs.

``model_fingerprint`` has one digest per part and ``digest`` over all of them:

* ``config``: the model's config after ``--cfg-options`` without ``test_cfg`` (``model``:
  backbone, heads, data preprocessor), the ``test_pipeline``, ``default_scope`` and
  ``custom_imports``; the rest of the config (data roots, schedules, hooks) makes no label;
* ``test_cfg``: the test-time options (``mode='slide'``, crop, stride: ``--slide``);
* ``checkpoint``: the checkpoint file's content (BLAKE2b, read once per run in 1 MiB
  chunks), or its name when it is not a local file (a URL);
* ``speed``: the resolved speed record (precision, channels-last, folding, ...) and the
  device type (``cpu``, ``cuda``), not the index;
* ``classes``: class names and palette (the label maps' palette).

The journal's run entry holds the fingerprint (and the summary shows it), every image entry
its ``digest``.
"""

import hashlib
import json
import os.path as osp
from typing import Any, Dict, Optional

from .inputs import InferenceInputError

PARTS = ("config", "test_cfg", "checkpoint", "speed", "classes", "model")  # model: exported
_CHUNK = 1 << 20
_SPEED_KEYS = ("name", "precision", "native_low_precision", "channels_last")


class ModelChangedError(InferenceInputError):
    """The output folder holds outputs of another model and the run was told to refuse."""


def file_digest(path: str) -> str:
    """BLAKE2b (128 bits, hex) of the file at ``path``, read in chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_digest(checkpoint: str) -> str:
    """``file_digest`` of a local checkpoint; ``name:<checkpoint>`` for anything else."""
    return file_digest(checkpoint) if osp.isfile(checkpoint) else f"name:{checkpoint}"


def digest_of(value: Any) -> str:
    """BLAKE2b (64 bits, hex) of ``value`` as sorted, compact JSON."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def _plain(value: Any) -> Any:
    """ConfigDicts and tuples as JSON-able dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def model_fingerprint(
    cfg, checkpoint: str, checkpoint_hash: str, speed: dict, device: str, meta: dict
) -> dict:
    """``{"digest", "checkpoint", "parts": {part: digest}}`` of a model built from ``cfg``
    (after cfg-options) with the checkpoint whose ``checkpoint_digest`` is ``checkpoint_hash``,
    running as the resolved ``speed`` record says on ``device``, with ``meta``'s classes and
    palette."""
    model = _plain(cfg.get("model", {}))
    test_cfg = model.pop("test_cfg", None)
    config = {
        "model": model,
        "test_pipeline": _plain(cfg.get("test_pipeline")),
        "default_scope": cfg.get("default_scope"),
        "custom_imports": _plain(cfg.get("custom_imports")),
    }
    speed = {k: speed.get(k) for k in _SPEED_KEYS}
    speed["device"] = str(device).split(":")[0]
    parts = {
        "config": digest_of(config),
        "test_cfg": digest_of(test_cfg),
        "checkpoint": checkpoint_hash,
        "speed": digest_of(speed),
        "classes": digest_of(_plain([meta.get("classes"), meta.get("palette")])),
    }
    return {"digest": digest_of(parts), "checkpoint": str(checkpoint), "parts": parts}


def describe_change(old: Optional[dict], new: dict) -> str:
    """How the model ``new`` differs from ``old``: ``changed: checkpoint a.pth -> b.pth,
    test_cfg`` (the parts that differ), or that ``old`` is unknown."""
    if not old:
        return "no fingerprint recorded: an older ann_seg"
    old_parts: Dict[str, str] = old.get("parts") or {}
    changed = []
    for part in PARTS:
        if old_parts.get(part) != new["parts"].get(part):
            if part == "checkpoint":
                part += f" {old.get('checkpoint')} -> {new['checkpoint']}"
            changed.append(part)
    return "changed: " + (", ".join(changed) or "the fingerprint")
