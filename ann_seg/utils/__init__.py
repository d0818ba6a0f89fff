"""Deprecated (0.1 layout), kept for one release: use ``ann_seg.mmseg.checkpoint``."""

from ann_seg.mmseg.checkpoint import (  # noqa: F401
    CorruptCheckpointError,
    UnsafeCheckpointError,
    get_checkpoint_safe_globals,
    install_mmengine_checkpoint_loader,
    mmengine_safe_globals,
    safe_load_checkpoint,
)
