"""Inference: folder segmentation (``ann-seg infer``), attention maps, ONNX export."""

from .folder import (
    DEFAULT_OUT_DIR,
    DistributedOptions,
    FolderInference,
    LoaderOptions,
    OutputOptions,
    run_inference,
)
from .inputs import ImageTask, InferenceInputError, collect_inputs

__all__ = [
    "DEFAULT_OUT_DIR",
    "DistributedOptions",
    "FolderInference",
    "ImageTask",
    "InferenceInputError",
    "LoaderOptions",
    "OutputOptions",
    "collect_inputs",
    "run_inference",
]
