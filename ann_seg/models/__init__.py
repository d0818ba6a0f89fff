"""Models: plain-PyTorch blocks, and (when mmseg is installed) mmseg heads on them."""
from importlib.util import find_spec

from . import blocks  # noqa: F401

if find_spec('mmseg') is not None:
    from . import heads  # noqa: F401  (registers the heads in mmseg's MODELS)
