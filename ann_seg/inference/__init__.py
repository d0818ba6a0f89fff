"""Inference: folder segmentation (``ann-seg infer``), attention maps, ONNX export."""

from .folder import (
    DEFAULT_OUT_DIR,
    FolderInference,
    OutputOptions,
    run_inference,
)
from .inputs import ImageTask, InferenceInputError, collect_inputs

__all__ = [
    "DEFAULT_OUT_DIR",
    "FolderInference",
    "ImageTask",
    "InferenceInputError",
    "OutputOptions",
    "collect_inputs",
    "run_inference",
]
