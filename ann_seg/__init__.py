"""ann_seg: asymmetric non-local networks and the non-local block family for mmseg 1.x.

Importing ``ann_seg`` registers its heads and data sets in mmseg's registries (configs name it
in ``custom_imports``) and makes mmengine load checkpoints weights-only with an allowlist.
``ann_seg.models.blocks`` needs only PyTorch.
"""
from importlib.util import find_spec

__version__ = '0.1.0'

if find_spec('mmengine') is not None:
    from .utils.checkpoint import install_mmengine_checkpoint_loader

    install_mmengine_checkpoint_loader()

if find_spec('mmseg') is not None:
    from . import models  # noqa: F401  (registers the heads)
    from .datasets import long_range  # noqa: F401  (registers LongRangeSyntheticDataset)
