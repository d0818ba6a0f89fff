"""Inference: folder segmentation (``ann-seg infer``), attention maps, ONNX export."""

from .fingerprint import ModelChangedError
from .folder import (
    DEFAULT_OUT_DIR,
    DistributedOptions,
    FolderInference,
    LoaderOptions,
    OutputOptions,
    run_inference,
)
from .inputs import ImageTask, InferenceInputError, collect_inputs
from .outdir import OutDirBusyError, OutputDirError, OutputStorageError

__all__ = [
    "DEFAULT_OUT_DIR",
    "DistributedOptions",
    "FolderInference",
    "ImageTask",
    "InferenceInputError",
    "LoaderOptions",
    "ModelChangedError",
    "OutDirBusyError",
    "OutputDirError",
    "OutputOptions",
    "OutputStorageError",
    "collect_inputs",
    "run_inference",
]
