"""Inference: folder segmentation (``tools/infer.py``), attention maps, ONNX export."""

from .folder import (
    DEFAULT_OUT_DIR,
    FolderInference,
    OutputOptions,
    load_segmentor,
    prepare_for_inference,
    run_inference,
)
from .inputs import ImageTask, InferenceInputError, collect_inputs
from .precision import AMP_CHOICES, autocast_context, default_device, dtype_name, resolve_amp

__all__ = [
    "AMP_CHOICES",
    "DEFAULT_OUT_DIR",
    "FolderInference",
    "ImageTask",
    "InferenceInputError",
    "OutputOptions",
    "autocast_context",
    "collect_inputs",
    "default_device",
    "dtype_name",
    "load_segmentor",
    "prepare_for_inference",
    "resolve_amp",
    "run_inference",
]
