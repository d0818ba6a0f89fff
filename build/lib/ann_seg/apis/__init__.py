"""Deprecated (0.1 layout), kept for one release: use ``ann_seg.mmseg.runner`` (train, test)
and ``ann_seg.inference`` (run_inference)."""

from ann_seg.inference import run_inference  # noqa: F401
from ann_seg.mmseg.config import load_config  # noqa: F401
from ann_seg.mmseg.runner import enable_amp, setup_launcher, test, train  # noqa: F401
