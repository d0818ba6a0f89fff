"""The inference precision policy: ``--amp off|auto|on`` to an autocast dtype."""

import contextlib
from typing import Optional

import torch

from ann_seg.layers.compat import native_low_precision_dtype

from .inputs import InferenceInputError

AMP_CHOICES = ("off", "auto", "on")


def resolve_amp(amp: Optional[str], device: str) -> Optional[torch.dtype]:
    """``amp`` ('off'/None, 'auto', 'on') -> the autocast dtype or ``None``. 'auto' uses the
    native low precision of ``device`` (float32 where the hardware has none); 'on' always
    autocasts (bfloat16 on the CPU, float16 on CUDA)."""
    amp = amp or "off"
    if amp not in AMP_CHOICES:
        raise InferenceInputError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "off":
        return None
    if amp == "auto":
        return native_low_precision_dtype(device)
    return torch.float16 if str(device).startswith("cuda") else torch.bfloat16


def dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    """``torch.bfloat16`` -> ``'bfloat16'``; ``None`` stays ``None`` (for JSON summaries)."""
    return str(dtype).replace("torch.", "") if dtype is not None else None


def autocast_context(device: str, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``device`` and ``dtype``; a no-op context for ``dtype=None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(str(device).split(":")[0], dtype=dtype)


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"
