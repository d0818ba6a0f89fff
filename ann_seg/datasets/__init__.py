"""Deprecated (0.1 layout), kept for one release: use ``ann_seg.mmseg.synthetic`` (the
generator) and ``ann_seg.mmseg.datasets`` (the mmseg data set class)."""

from ann_seg.mmseg.synthetic import *  # noqa: F401,F403
