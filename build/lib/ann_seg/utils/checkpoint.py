"""Deprecated (0.1 layout), kept for one release: use ``ann_seg.mmseg.checkpoint``."""

from ann_seg.mmseg.checkpoint import *  # noqa: F401,F403
