"""Deprecated (0.1 layout), kept for one release: use ``ann_seg.layers.fold``."""

from ann_seg.layers.fold import (  # noqa: F401
    fold_attention_blocks,
    fold_batch_norms,
    fold_conv_bn,
    fuse_for_inference,
)
