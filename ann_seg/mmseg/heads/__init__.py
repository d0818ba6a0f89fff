"""mmseg decode heads built on the blocks, registered in mmseg's ``MODELS``."""

from .ann_head import ANNSegHead, APNBSegHead
from .non_local_heads import CGNLSegHead, NLSegHead

__all__ = ["ANNSegHead", "APNBSegHead", "CGNLSegHead", "NLSegHead"]
