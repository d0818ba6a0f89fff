"""Inference: folder segmentation (``ann-seg infer``), attention maps, ONNX export.

The folder machinery (``folder``, ``inputs``, ``journal``, ``outdir``) imports no torch, so an
exported model runs without it (``backends``); ``run_inference`` (the PyTorch model,
``pytorch``) is imported on first use.
"""

import importlib

from .fingerprint import ModelChangedError
from .folder import (
    DEFAULT_OUT_DIR,
    DistributedOptions,
    FolderInference,
    LoaderOptions,
    OutputOptions,
    segment_inputs,
)
from .inputs import ImageTask, InferenceInputError, collect_inputs
from .outdir import OutDirBusyError, OutputDirError, OutputStorageError
from .predictor import Prediction, Predictor

_TORCH_NAMES = {
    "run_inference": "pytorch",
    "TorchPredictor": "pytorch",
    "load_predictor": "pytorch",
}


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_TORCH_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "Prediction",
    "Predictor",
    "TorchPredictor",
    "collect_inputs",
    "load_predictor",
    "run_inference",
    "segment_inputs",
]
