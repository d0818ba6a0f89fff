"""Utilities of ann_seg."""

from .checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    get_checkpoint_safe_globals,
    install_mmengine_checkpoint_loader,
    mmengine_safe_globals,
    safe_load_checkpoint,
)

__all__ = [
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "get_checkpoint_safe_globals",
    "install_mmengine_checkpoint_loader",
    "mmengine_safe_globals",
    "safe_load_checkpoint",
]
