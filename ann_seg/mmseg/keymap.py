"""mmseg's ANN and NonLocal state dicts in ann_seg's key layout (in memory, no files).

``convert_state_dict`` recognises the decode head by its keys and renames it; the backbone and
the auxiliary head are shared with mmseg and kept as they are. ``ann_seg.convert`` writes the
result to a file; the builder uses it to load mmseg's published checkpoints directly.

ANN (``ANNHead`` -> ``ANNSegHead``): mmseg's ``SelfAttentionBlock``
(``stages.0.{key,query,value,out}_project``) becomes ``attention.{key,query,value,out}_proj``,
the blocks' ``bottleneck`` ConvModules become ``fuse`` (``conv``/``bn`` -> ``conv``/``norm``).
mmseg's APNB shares one projection for query and key (its state dict holds it twice);
ann_seg's ``share='query_key'`` holds it once. Why converted weights still give mmseg's
predictions:

- dropout: mmseg applies ``Dropout2d(0.1)`` after AFNB and again before the classifier; ann_seg
  (as the authors' release) drops out after each block's fusion. Dropout is the identity in eval.
- projection sharing: both share query/key in APNB and nothing in AFNB by default.
- ``align_corners`` and ``test_cfg`` are config values: use the ann_seg config matching the mmseg
  one (same names); 769x769 Cityscapes configs set ``align_corners=True`` in both.
- pyramid pooling: ann_seg pools by a matmul with the adaptive-pooling matrix, which equals
  ``nn.AdaptiveAvgPool2d`` up to float rounding; values are projected after pooling (an exact
  reordering of an affine map and an average).
- ``query_scales`` other than ``(1,)`` (a max-pooled query pyramid) have no ann_seg counterpart
  and are refused.

NonLocal (``NLHead`` -> ``NLSegHead``): mmcv's ``NonLocal2d`` ConvModules
``nl_block.{g,theta,phi}.conv`` become the plain convs ``block.{g,theta,phi}``,
``nl_block.conv_out.{conv,bn}`` become ``block.out_proj``/``block.out_norm``; the head's convs
(``convs``, ``conv_cat``, ``conv_seg``) keep their names. Same computation (embedded Gaussian,
logits scaled by ``1/sqrt(C')``, ``z = W_z y + x``); ``sub_sample`` blocks (a max-pooled
``phi``/``g``, floor mode in mmcv, ceil in ann_seg) are refused.
"""

import re
from typing import Dict, List, Optional, Tuple

import torch

ANN_MARKER = "decode_head.fusion.stages.0.key_project.conv.weight"
NONLOCAL_MARKER = "decode_head.nl_block.g.conv.weight"
# ann_seg's own layouts (already converted, or trained here)
ANN_SEG_MARKERS = {
    "ann": "decode_head.fusion.attention.key_proj.conv.weight",
    "nonlocal": "decode_head.block.g.weight",
}

_BLOCK = r"^decode_head\.(fusion|context)\."
_ANN_RULES = [
    (_BLOCK + r"stages\.0\.(key|query)_project\.conv\.", r"decode_head.\1.attention.\2_proj.conv."),
    (_BLOCK + r"stages\.0\.(key|query)_project\.bn\.", r"decode_head.\1.attention.\2_proj.norm."),
    (_BLOCK + r"stages\.0\.value_project\.", r"decode_head.\1.attention.value_proj."),
    (_BLOCK + r"stages\.0\.out_project\.", r"decode_head.\1.attention.out_proj."),
    (_BLOCK + r"bottleneck\.conv\.", r"decode_head.\1.fuse.conv."),
    (_BLOCK + r"bottleneck\.bn\.", r"decode_head.\1.fuse.norm."),
]
_NL = r"^decode_head\.nl_block\."
_NONLOCAL_RULES = [
    (_NL + r"(g|theta|phi)\.conv\.", r"decode_head.block.\1."),
    (_NL + r"conv_out\.conv\.", r"decode_head.block.out_proj."),
    (_NL + r"conv_out\.bn\.", r"decode_head.block.out_norm."),
    (_NL + r"concat_project\.conv\.", r"decode_head.block.concat_project."),
]
_HEAD_KEEP = {
    "ann": ("decode_head.bottleneck.", "decode_head.conv_seg."),
    "nonlocal": ("decode_head.convs.", "decode_head.conv_cat.", "decode_head.conv_seg."),
}


class ConversionError(ValueError):
    """The source is not a convertible mmseg ANN/NonLocal checkpoint, or does not fit."""


def decode_head_modules(state: Dict[str, torch.Tensor]) -> List[str]:
    return sorted({k.split(".")[1] for k in state if k.startswith("decode_head.")})


def checkpoint_layout(state: Dict[str, torch.Tensor]) -> Optional[Tuple[str, str]]:
    """``(family, layout)``: family ``'ann'`` or ``'nonlocal'``, layout ``'mmseg'`` or
    ``'ann_seg'``; ``None`` for any other model."""
    if ANN_MARKER in state:
        return "ann", "mmseg"
    if NONLOCAL_MARKER in state:
        return "nonlocal", "mmseg"
    for family, marker in ANN_SEG_MARKERS.items():
        if marker in state:
            return family, "ann_seg"
    return None


def _rename(state, rules, family: str, source: str) -> Dict[str, torch.Tensor]:
    converted = {}
    for key, value in state.items():
        new_key = key
        for pattern, replacement in rules:
            new_key, hits = re.subn(pattern, replacement, new_key)
            if hits:
                break
        if family == "ann" and new_key.startswith("decode_head.context.attention.query_proj."):
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
            and not key.startswith(_HEAD_KEEP[family])
        ):
            raise ConversionError(f"{source}: unexpected decode_head key {key!r}")
        converted[new_key] = value
    return converted


def convert_state_dict(
    state: Dict[str, torch.Tensor], source: str = "checkpoint"
) -> Dict[str, torch.Tensor]:
    """Map an mmseg ``EncoderDecoder`` state dict with an ``ANNHead`` or ``NLHead`` to
    ann_seg's keys (``ANNSegHead``/``NLSegHead``). Raises ``ConversionError``."""
    found = checkpoint_layout(state)
    if found is None or found[1] != "mmseg":
        what = "an ann_seg checkpoint already" if found else "another model"
        raise ConversionError(
            f"{source} is not an mmseg ANN or NonLocal model ({what}: decode_head modules "
            f"{decode_head_modules(state) or 'none'}); only checkpoints of mmseg's configs/ann "
            "(ANNHead) and configs/nonlocal_net (NLHead) models convert"
        )
    family = found[0]
    if family == "ann":
        extra_scales = sorted(
            {m.group(0) for k in state for m in [re.search(r"stages\.[1-9]\d*", k)] if m}
        )
        if extra_scales:
            raise ConversionError(
                f"{source}: ANNHead with several query_scales ({extra_scales}) has "
                "no ann_seg counterpart; only query_scales=(1,) converts"
            )
        return _rename(state, _ANN_RULES, family, source)
    if any(re.match(_NL + r"(g|phi)\.\d", k) for k in state):
        raise ConversionError(
            f"{source}: NonLocal block with sub_sample=True (mmcv max-pools in floor mode, "
            "ann_seg in ceil mode) does not convert"
        )
    return _rename(state, _NONLOCAL_RULES, family, source)
