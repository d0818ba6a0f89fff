"""Export a segmentor to ONNX and check it against PyTorch with onnxruntime
(``ann-seg export-onnx``; details: docs/inference.md).

The graph is ``SegmentorExportWrapper``: ``image`` (B, 3, H, W) float32 RGB 0..255 ->
``logits`` (B, num_classes, H, W) float32, mmseg's whole-image ``encode_decode`` with the
normalisation inside. Slide-mode windowing and the test pipeline's resize are the caller's.
Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The file is written
atomically, only after onnxruntime reproduces the PyTorch logits within ``|ort - torch| <=
atol + rtol * |torch|`` on random images: at the export shape, and for dynamic exports also at
batch 2 and ``(3H/4 + 3, 3W/4 + 3)``.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ann_seg.io import atomic_path
from ann_seg.layers.compat import torchscript_onnx_export_kwargs
from ann_seg.mmseg import build_segmentor

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class ExportCheckError(RuntimeError):
    """onnxruntime's output differs from PyTorch's beyond the tolerance."""


class SegmentorExportWrapper(nn.Module):
    """``image`` (B, 3, H, W) RGB 0..255 -> ``logits`` (B, C, H, W): normalise as the data
    preprocessor, ``EncoderDecoder`` in ``mode='tensor'``, bilinear upsampling to (H, W)."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        pre = segmentor.data_preprocessor
        self.segmentor = segmentor
        # mmcv loads BGR; with bgr_to_rgb/rgb_to_bgr the network sees RGB, otherwise BGR
        self.to_bgr = not getattr(pre, "channel_conversion", False)
        normalize = getattr(pre, "_enable_normalize", False)
        mean = pre.mean.view(1, -1, 1, 1).clone() if normalize else torch.zeros(1, 3, 1, 1)
        std = pre.std.view(1, -1, 1, 1).clone() if normalize else torch.ones(1, 3, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.align_corners = bool(segmentor.decode_head.align_corners)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.flip(1) if self.to_bgr else image
        logits = self.segmentor((x - self.mean) / self.std, mode="tensor")
        return F.interpolate(
            logits, size=image.shape[2:], mode="bilinear", align_corners=self.align_corners
        )


def default_export_shape(model: nn.Module) -> Tuple[int, int]:
    """The slide-mode crop, else the data preprocessor's ``size``, else 512 x 1024."""
    test_cfg = getattr(model, "test_cfg", None) or {}
    if test_cfg.get("mode") == "slide" and test_cfg.get("crop_size"):
        return tuple(int(v) for v in test_cfg["crop_size"])
    size = getattr(model.data_preprocessor, "size", None)
    return tuple(int(v) for v in size) if size else (512, 1024)


def _random_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 255


def verify_onnx(
    onnx_file: str,
    wrapper: nn.Module,
    shapes: Sequence[Tuple[int, int, int]],
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> List[dict]:
    """Run ``onnx_file`` with onnxruntime and ``wrapper`` with PyTorch on random images of each
    ``(batch, height, width)``; returns one dict per shape (``max_abs_diff``,
    ``max_rel_diff`` = max abs diff / max |torch|, ``ok``)."""
    import onnxruntime as ort  # optional (dev extra)

    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    checks = []
    for seed, (batch, height, width) in enumerate(shapes):
        image = _random_images(batch, height, width, seed)
        with torch.no_grad():
            expected = wrapper(image).numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: image.numpy()})[0]
        same_shape = actual.shape == expected.shape
        diff = float(np.abs(actual - expected).max()) if same_shape else float("inf")
        checks.append(
            {
                "shape": [batch, 3, height, width],
                "max_abs_diff": diff,
                "max_rel_diff": diff / max(float(np.abs(expected).max()), 1e-12),
                "ok": same_shape and bool(np.allclose(actual, expected, rtol=rtol, atol=atol)),
            }
        )
    return checks


def export_onnx(
    config,
    checkpoint: str,
    out_file: str,
    shape: Optional[Sequence[int]] = None,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    cfg_options: Optional[dict] = None,
) -> dict:
    """Export ``config``/``checkpoint`` to ``out_file`` (see the module docstring), check it
    with onnxruntime and return a report (shapes, tolerances, per-shape differences).

    Raises:
        ExportCheckError: onnxruntime disagrees with PyTorch; nothing is written.
    """
    import onnx  # optional (dev extra)

    model = build_segmentor(config, cfg_options=cfg_options, checkpoint=checkpoint)
    wrapper = SegmentorExportWrapper(model).eval()
    height, width = (int(v) for v in (shape or default_export_shape(model)))
    if height < 8 or width < 8:
        raise ValueError(f"export shape must be at least 8 x 8, got {height} x {width}")
    dims = {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {INPUT_NAME: dims, OUTPUT_NAME: dims} if dynamic else None
    shapes = [(1, height, width)]
    if dynamic:
        shapes.append((2, max(8, height * 3 // 4 + 3), max(8, width * 3 // 4 + 3)))
    with atomic_path(out_file) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape-check asserts
            torch.onnx.export(
                wrapper,
                (_random_images(1, height, width, 0),),
                tmp,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                **torchscript_onnx_export_kwargs(),
            )
        onnx.checker.check_model(tmp)
        checks = verify_onnx(tmp, wrapper, shapes, atol, rtol)
        report = {
            "onnx": out_file,
            "exporter": "torch.onnx.export(dynamo=False)",
            "opset": opset,
            "input": f"{INPUT_NAME}: float32 (B, 3, H, W) RGB 0..255",
            "output": f"{OUTPUT_NAME}: float32 (B, {model.decode_head.num_classes}, H, W)",
            "shape": [height, width],
            "dynamic": dynamic,
            "atol": atol,
            "rtol": rtol,
            "checks": checks,
        }
        if not all(check["ok"] for check in checks):
            raise ExportCheckError(
                f"onnxruntime output differs from PyTorch beyond atol={atol}, "
                f"rtol={rtol}: {checks}; {out_file} not written"
            )
    return report
