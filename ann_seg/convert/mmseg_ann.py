"""Convert mmseg's ANN checkpoints (``ANNHead``) to ann_seg's ``ANNSegHead`` layout.

The backbone and auxiliary head are kept; in the decode head mmseg's
``stages.0.{key,query,value,out}_project`` become ``attention.{key,query,value,out}_proj`` and
the ``bottleneck`` ConvModules ``fuse`` (``conv``/``bn`` -> ``conv``/``norm``); APNB's shared
query/key projection, held twice by mmseg, is kept once. ``query_scales`` other than ``(1,)``
have no counterpart and are refused. Why converted weights give mmseg's predictions:
docs/training.md, "mmseg's published ANN checkpoints".
"""

import os.path as osp
import re
from typing import Dict, Optional, Tuple

import torch

from ann_seg.io import atomic_write_with
from ann_seg.mmseg import build_segmentor, safe_load_checkpoint
from ann_seg.mmseg.builder import strip_module_prefix

ANN_MARKER = "decode_head.fusion.stages.0.key_project.conv.weight"

_BLOCK = r"^decode_head\.(fusion|context)\."
_RULES = [
    (_BLOCK + r"stages\.0\.(key|query)_project\.conv\.", r"decode_head.\1.attention.\2_proj.conv."),
    (_BLOCK + r"stages\.0\.(key|query)_project\.bn\.", r"decode_head.\1.attention.\2_proj.norm."),
    (_BLOCK + r"stages\.0\.value_project\.", r"decode_head.\1.attention.value_proj."),
    (_BLOCK + r"stages\.0\.out_project\.", r"decode_head.\1.attention.out_proj."),
    (_BLOCK + r"bottleneck\.conv\.", r"decode_head.\1.fuse.conv."),
    (_BLOCK + r"bottleneck\.bn\.", r"decode_head.\1.fuse.norm."),
]


class ConversionError(ValueError):
    """The source is not a convertible mmseg ANN checkpoint, or does not fit the target."""


def _state_dict_of(checkpoint, source: str) -> Dict[str, torch.Tensor]:
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{source}: not a checkpoint dict (got {type(checkpoint).__name__})")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{source}: no state_dict of tensors found")
    return strip_module_prefix(state)


def convert_state_dict(
    state: Dict[str, torch.Tensor], source: str = "checkpoint"
) -> Dict[str, torch.Tensor]:
    """Map an mmseg ``EncoderDecoder`` + ``ANNHead`` state dict to ann_seg's keys."""
    if ANN_MARKER not in state:
        heads = sorted({k.split(".")[1] for k in state if k.startswith("decode_head.")})
        raise ConversionError(
            f"{source} is not an mmseg ANN model: {ANN_MARKER!r} is missing (decode_head "
            f"modules found: {heads or 'none'}). Only checkpoints of mmseg's configs/ann "
            "models (ANNHead) convert."
        )
    extra_scales = sorted(
        {m.group(0) for k in state for m in [re.search(r"stages\.[1-9]\d*", k)] if m}
    )
    if extra_scales:
        raise ConversionError(
            f"{source}: ANNHead with several query_scales ({extra_scales}) has "
            "no ann_seg counterpart; only query_scales=(1,) converts"
        )
    converted = {}
    for key, value in state.items():
        new_key = key
        for pattern, replacement in _RULES:
            new_key, hits = re.subn(pattern, replacement, new_key)
            if hits:
                break
        if new_key.startswith("decode_head.context.attention.query_proj."):
            twin = key.replace("query_project", "key_project")
            if twin not in state or not torch.equal(state[twin], value):
                raise ConversionError(
                    f"{source}: APNB query and key projections differ "
                    f"({key}); mmseg shares them, so this is not an ANNHead"
                )
            continue
        if (
            new_key.startswith("decode_head.")
            and new_key == key
            and not key.startswith(("decode_head.bottleneck.", "decode_head.conv_seg."))
        ):
            raise ConversionError(f"{source}: unexpected decode_head key {key!r}")
        converted[new_key] = value
    return converted


def check_against_model(
    state: Dict[str, torch.Tensor], model: torch.nn.Module, config: str
) -> None:
    """Every target parameter/buffer present with the same shape, nothing left over."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {tuple(target[k].shape)}"
        for k in sorted(set(state) & set(target))
        if state[k].shape != target[k].shape
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatches:\n  " + "\n  ".join(mismatched[:20]))
    if missing:
        problems.append(f"missing in the checkpoint ({len(missing)}): {missing[:10]}")
    if unexpected:
        problems.append(f"not in the config's model ({len(unexpected)}): {unexpected[:10]}")
    if problems:
        raise ConversionError(f"the converted weights do not fit {config}:\n" + "\n".join(problems))


def atomic_save(obj, dst: str) -> None:
    """``torch.save`` to ``dst`` atomically: never a partial ``dst``."""
    atomic_write_with(dst, lambda f: torch.save(obj, f))


def convert_checkpoint(src: str, dst: str, config: Optional[str] = None) -> Tuple[int, int]:
    """Convert ``src`` (an mmseg ANN checkpoint) into ``dst``; with ``config``, check that the
    result loads strictly into that ann_seg config's model. Returns (tensors in, tensors out)."""
    checkpoint = safe_load_checkpoint(src, map_location="cpu")
    state = _state_dict_of(checkpoint, src)
    converted = convert_state_dict(state, src)
    if config is not None:
        check_against_model(converted, build_segmentor(config), config)
    meta = dict(checkpoint.get("meta", {}) or {}) if isinstance(checkpoint, dict) else {}
    meta["ann_seg_converted_from"] = osp.basename(src)
    atomic_save({"meta": meta, "state_dict": converted}, dst)
    return len(state), len(converted)
