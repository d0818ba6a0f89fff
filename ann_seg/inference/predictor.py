"""What the folder loop asks of a model: the predictor interface, shared by the PyTorch model
(``pytorch.TorchPredictor``) and exported ONNX models (``backends``). Imports no torch."""

from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np

# ((crop_h, crop_w), (stride_h, stride_w)) of a sliding window
SlideWindow = Tuple[Tuple[int, int], Tuple[int, int]]


@dataclass
class Prediction:
    """One image's result: ``label`` (H, W) integer class ids at the input's size; ``logits``
    (C, H, W) float32 at the input's size when asked for; ``problem``: why the label must not
    be written (non-finite logits), else ``None``."""

    label: np.ndarray
    logits: Optional[np.ndarray] = None
    problem: Optional[str] = None


class Predictor(Protocol):
    """A model behind the folder loop. ``classes`` and ``palette`` (RGB per class) name the
    outputs; ``slide``: the sliding window of the model's test mode, or ``None`` (whole)."""

    classes: Sequence[str]
    palette: List[Tuple[int, int, int]]
    slide: Optional[SlideWindow]

    def predict(self, images: List[np.ndarray], want_logits: bool) -> List[Prediction]:
        """Images: BGR uint8 (H, W, 3), all of one size (a batch)."""

    def forward_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) BGR uint8 crops -> (N, C, h, w) float32 logits (one window each)."""

    def fingerprint(self) -> dict:
        """What identifies the model in the journal (``fingerprint``)."""

    def describe(self) -> dict:
        """The summary's fields about the model (config, checkpoint, device, speed...)."""


def nonfinite_problem(logits: np.ndarray) -> Optional[str]:
    """Why ``logits`` must not become a label map (NaN or infinity: an overflow, broken
    weights), or ``None``."""
    finite = np.isfinite(logits)
    if finite.all():
        return None
    bad = finite.size - int(finite.sum())
    return f"non-finite logits: {bad} of {finite.size} values are NaN or infinite"


def slide_window(test_cfg) -> Optional[SlideWindow]:
    """``((crop_h, crop_w), (stride_h, stride_w))`` of a ``mode='slide'`` test_cfg, else None."""
    if not test_cfg or test_cfg.get("mode") != "slide":
        return None
    crop, stride = test_cfg["crop_size"], test_cfg["stride"]
    return (int(crop[0]), int(crop[1])), (int(stride[0]), int(stride[1]))
