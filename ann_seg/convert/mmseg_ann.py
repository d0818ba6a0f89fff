"""Convert mmseg's ANN (``ANNHead``) and NonLocal (``NLHead``) checkpoints to ann_seg's heads
(``ANNSegHead``, ``NLSegHead``) as files; the key mapping and why converted weights give
mmseg's predictions: ``ann_seg.mmseg.keymap``.
"""

import os.path as osp
from typing import Dict, Optional, Tuple

import torch

from ann_seg.io import atomic_write_with
from ann_seg.mmseg import build_segmentor, safe_load_checkpoint
from ann_seg.mmseg.builder import strip_module_prefix
from ann_seg.mmseg.keymap import ANN_MARKER, ConversionError, convert_state_dict

__all__ = [
    "ANN_MARKER",
    "ConversionError",
    "atomic_save",
    "check_against_model",
    "convert_checkpoint",
    "convert_state_dict",
]


def _state_dict_of(checkpoint, source: str) -> Dict[str, torch.Tensor]:
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{source}: not a checkpoint dict (got {type(checkpoint).__name__})")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{source}: no state_dict of tensors found")
    return strip_module_prefix(state)


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
    """Convert ``src`` (an mmseg ANN or NonLocal checkpoint) into ``dst``; with ``config``,
    check that the result loads strictly into that ann_seg config's model. Returns (tensors
    in, tensors out)."""
    checkpoint = safe_load_checkpoint(src, map_location="cpu")
    state = _state_dict_of(checkpoint, src)
    converted = convert_state_dict(state, src)
    if config is not None:
        check_against_model(converted, build_segmentor(config), config)
    meta = dict(checkpoint.get("meta", {}) or {}) if isinstance(checkpoint, dict) else {}
    meta["ann_seg_converted_from"] = osp.basename(src)
    atomic_save({"meta": meta, "state_dict": converted}, dst)
    return len(state), len(converted)
