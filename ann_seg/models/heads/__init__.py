"""mmseg decode heads built on the blocks, registered in mmseg's ``MODELS``."""
from .ann_head import ANNSegHead
from .non_local_heads import CGNLSegHead, NLSegHead

__all__ = ['ANNSegHead', 'CGNLSegHead', 'NLSegHead']
