"""Turn mmseg's ``norm_cfg``/``act_cfg`` into the callables the plain-PyTorch blocks take."""

from typing import Callable, Optional, Sequence

import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer


def norm_layer_from_cfg(norm_cfg: Optional[dict]) -> Optional[Callable[[int], nn.Module]]:
    """mmcv's ``norm_cfg`` as a block's ``norm_layer``: ``None`` stays ``None`` (no norm)."""
    if norm_cfg is None:
        return None
    return lambda channels: build_norm_layer(norm_cfg, channels)[1]


def act_layer_from_cfg(act_cfg: Optional[dict]) -> Optional[Callable[[], nn.Module]]:
    if act_cfg is None:
        return None
    return lambda: build_activation_layer(act_cfg)


def check_in_channels(head: str, in_channels, in_index, count: int = 2) -> Sequence[int]:
    """Validate a multi-input head's ``in_channels``/``in_index`` when the model is built."""
    if not isinstance(in_channels, (list, tuple)) or len(in_channels) != count:
        raise ValueError(
            f"{head}: in_channels must list {count} ints (e.g. [1024, 2048] for "
            f"ResNet stages 4 and 5), got {in_channels!r}"
        )
    if not isinstance(in_index, (list, tuple)) or len(in_index) != count:
        raise ValueError(
            f"{head}: in_index must list {count} backbone output indices "
            f"(e.g. [2, 3]), got {in_index!r}"
        )
    for value in in_channels:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(
                f"{head}: in_channels entries must be positive ints, got {in_channels!r}"
            )
    return in_channels


def check_single_in_channels(head: str, in_channels) -> int:
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels <= 0:
        raise ValueError(f"{head}: in_channels must be a positive int, got {in_channels!r}")
    return in_channels
