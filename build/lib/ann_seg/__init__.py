"""ann_seg: asymmetric non-local networks and the non-local block family for mmseg 1.x.

``import ann_seg`` (configs name it in ``custom_imports``) does two things when mmseg is
installed, and nothing else:

* registers the heads and the data set in mmseg's registries (``ann_seg.mmseg``);
* installs checkpoint safety (``ann_seg.mmseg.checkpoint.install_checkpoint_safety``):
  mmengine's checkpoint loaders load weights-only with an explicit allowlist, which is what
  lets mmengine resume its own checkpoints under torch >= 2.6. Opt out with
  ``ANN_SEG_SAFE_CHECKPOINTS=0`` in the environment, or call ``uninstall_checkpoint_safety()``.

``ann_seg.layers`` imports only PyTorch and works where mmseg is not installed.
"""

import os
from importlib.util import find_spec

__version__ = "0.2.0"

if find_spec("mmseg") is not None and find_spec("mmcv") is not None:
    from . import mmseg as _adapter  # registers the heads and the data set

    if os.environ.get("ANN_SEG_SAFE_CHECKPOINTS", "1") != "0":
        _adapter.install_checkpoint_safety()
