"""Deprecated (0.1 layout), kept for one release: use ``ann_seg.layers`` (blocks, folding) and
``ann_seg.mmseg.heads``."""

import warnings

from ann_seg.mmseg import heads  # noqa: F401

from . import blocks  # noqa: F401

warnings.warn(
    "ann_seg.models is deprecated: use ann_seg.layers and ann_seg.mmseg.heads",
    DeprecationWarning,
    stacklevel=2,
)
