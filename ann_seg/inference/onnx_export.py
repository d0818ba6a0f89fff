"""Export a segmentor to ONNX and check it against PyTorch with onnxruntime
(``ann-seg export-onnx``; details: docs/inference.md).

The graph is ``SegmentorExportWrapper``: ``image`` (B, 3, H, W) float32 RGB 0..255 ->
``logits`` (B, num_classes, H, W) float32, mmseg's whole-image ``encode_decode`` with the
normalisation inside. Slide-mode windowing and the test pipeline's resize are the caller's.
Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The file is written
atomically, only after onnxruntime reproduces the PyTorch logits within ``|ort - torch| <=
atol + rtol * |torch|`` on random images: at the export shape, and for dynamic exports also at
batch 2 and ``(3H/4 + 3, 3W/4 + 3)``.

The file carries one ``metadata_props`` entry, ``ann_seg``: JSON (``export_metadata``) with
what ``ann_seg.inference.backends`` runs around the graph without the config: classes, palette,
the test pipeline's resize, ``test_cfg``, the head's ``align_corners``, the checkpoint's name
and digest. ``compare_backend`` checks an exported model on a backend against the float32
PyTorch model (``mmseg.apis.inference_model``) image by image (``--check-images``).
"""

from __future__ import annotations

import json
import os
import os.path as osp
import warnings
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ann_seg import __version__
from ann_seg.io import IMAGE_EXTENSIONS, atomic_path, read_image
from ann_seg.layers.compat import torchscript_onnx_export_kwargs
from ann_seg.mmseg import build_segmentor

from .backends import (
    FORMAT_VERSION,
    METADATA_KEY,
    NO_OP_TRANSFORMS,
    ExportedPredictor,
    load_backend,
)
from .fingerprint import checkpoint_digest, model_fingerprint
from .inputs import InferenceInputError

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


def _plain(value: Any) -> Any:
    """ConfigDicts, tuples and tensors as JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    return value


def pipeline_resize(pipeline: Sequence[dict]) -> Tuple[Optional[dict], List[str]]:
    """The ``test_pipeline``'s one ``Resize`` (``scale`` as (w, h) or ``scale_factor`` as
    (sx, sy), ``keep_ratio``, ``interpolation``, ``backend``) or None, and the steps the exported
    backends do not reproduce (any other than loading, annotations and packing; a second
    Resize)."""
    resize, unsupported = None, []
    for step in pipeline or []:
        kind = str(step.get("type", "")).split(".")[-1]
        if kind in NO_OP_TRANSFORMS:
            continue
        if kind == "Resize" and resize is None:
            scale, factor = step.get("scale"), step.get("scale_factor")
            if isinstance(scale, int):
                scale = (scale, scale)  # as mmcv's Resize
            if isinstance(factor, (int, float)):
                factor = (factor, factor)
            resize = {
                "scale": _plain(scale),
                "scale_factor": _plain(factor),
                "keep_ratio": bool(step.get("keep_ratio", False)),
                "interpolation": step.get("interpolation", "bilinear"),
                "backend": step.get("backend", "cv2"),
            }
        else:
            unsupported.append(kind)
    return resize, unsupported


def export_metadata(
    model: nn.Module, config, checkpoint: str, shape: Sequence[int], dynamic: bool, opset: int
) -> dict:
    """The ``ann_seg`` metadata entry of an export of ``model`` (built from ``config`` and
    ``checkpoint``): see ``ann_seg.inference.backends``."""
    pre = model.data_preprocessor
    head = model.decode_head
    cfg = model.cfg
    normalize = getattr(pre, "_enable_normalize", False)
    resize, unsupported = pipeline_resize(cfg.get("test_pipeline"))
    meta = dict(getattr(model, "dataset_meta", None) or {})
    digest = checkpoint_digest(checkpoint)
    parts = model_fingerprint(cfg, checkpoint, digest, {}, "cpu", meta)["parts"]
    test_cfg = _plain(getattr(model, "test_cfg", None) or {})
    return {
        "format_version": FORMAT_VERSION,
        "ann_seg_version": __version__,
        "config": config if isinstance(config, str) else getattr(cfg, "filename", None),
        "checkpoint": osp.basename(checkpoint),
        "checkpoint_digest": digest,
        "fingerprint": {k: parts[k] for k in ("config", "test_cfg", "classes")},
        "classes": _plain(meta.get("classes")),
        "palette": _plain(meta.get("palette")),
        "num_classes": int(head.num_classes),
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": "RGB",
            "range": [0, 255],
            "normalized_in_graph": True,
        },
        "normalization": {
            "mean": _plain(pre.mean.flatten()) if normalize else None,
            "std": _plain(pre.std.flatten()) if normalize else None,
            "bgr_to_rgb": bool(getattr(pre, "channel_conversion", False)),
        },
        "test_pad": _plain(getattr(pre, "test_cfg", None)) or None,
        "test_resize": resize,
        "unsupported_transforms": unsupported,
        "test_cfg": {k: test_cfg.get(k) for k in ("mode", "crop_size", "stride")},
        "output": {
            "name": OUTPUT_NAME,
            "semantics": "logits at the graph input's size (upsampled from the head's 1/8)",
            "channels": int(head.out_channels),
            "align_corners": bool(head.align_corners),
            "threshold": _plain(getattr(head, "threshold", None)),
        },
        "export": {"shape": list(shape), "dynamic": dynamic, "opset": opset},
    }


def write_metadata(onnx_file: str, metadata: dict) -> None:
    """Store ``metadata`` as the ``ann_seg`` entry of ``onnx_file``'s ``metadata_props``; the
    output's class dimension becomes ``metadata['output']['channels']``."""
    import onnx  # optional (dev extra)

    proto = onnx.load(onnx_file)
    # the exporter leaves the class dimension symbolic behind the dynamic Resize: make it
    # static, so a runtime (and the backends' class-count check) sees C before running
    channels = proto.graph.output[0].type.tensor_type.shape.dim[1]
    channels.Clear()
    channels.dim_value = int(metadata["output"]["channels"])
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.helper.set_model_props(
        proto, {**{p.key: p.value for p in kept}, METADATA_KEY: json.dumps(metadata)}
    )
    onnx.save(proto, onnx_file)


def compare_backend(
    predictor: ExportedPredictor, model: nn.Module, images: Sequence[np.ndarray]
) -> List[dict]:
    """Per BGR uint8 image: the backend's labels and logits against the float32 PyTorch
    ``model``'s (``mmseg.apis.inference_model``): ``agreement`` (fraction of equal pixels),
    ``logits_max_abs_diff``, ``logits_max_rel_diff`` (over max |PyTorch logit|) and the
    image's ``shape``."""
    from mmseg.apis import inference_model  # mmseg's public API; the export needs none of it

    rows = []
    for image in images:
        with torch.no_grad():
            result = inference_model(model, image)
        expected_label = result.pred_sem_seg.data[0].numpy()
        expected_logits = result.seg_logits.data.float().numpy()
        actual = predictor.predict([image], want_logits=True)[0]
        diff = float(np.abs(actual.logits - expected_logits).max())
        rows.append(
            {
                "shape": list(image.shape[:2]),
                "agreement": float((actual.label == expected_label).mean()),
                "logits_max_abs_diff": diff,
                "logits_max_rel_diff": diff / max(float(np.abs(expected_logits).max()), 1e-12),
            }
        )
    return rows


def check_images(
    onnx_file: str,
    config,
    checkpoint: str,
    image_dir: str,
    backend: str = "onnxruntime",
    threads: Optional[int] = None,
    cfg_options: Optional[dict] = None,
) -> List[dict]:
    """``compare_backend`` of ``onnx_file`` on ``backend`` against ``config``/``checkpoint`` in
    float32 PyTorch on the images directly in ``image_dir``; one row per image (``image``:
    its file name)."""
    names = sorted(
        n for n in os.listdir(image_dir) if osp.splitext(n)[1].lower() in IMAGE_EXTENSIONS
    )
    if not names:
        raise InferenceInputError(f"--check-images: no images in {image_dir}")
    model = build_segmentor(config, cfg_options=cfg_options, checkpoint=checkpoint)
    predictor = load_backend(backend, onnx_file, threads)
    rows = []
    for name in names:
        image, _ = read_image(osp.join(image_dir, name))
        rows.append({"image": name, **compare_backend(predictor, model, [image])[0]})
    return rows


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
        metadata = export_metadata(model, config, checkpoint, (height, width), dynamic, opset)
        write_metadata(tmp, metadata)
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
            "metadata": metadata,
        }
        if not all(check["ok"] for check in checks):
            raise ExportCheckError(
                f"onnxruntime output differs from PyTorch beyond atol={atol}, "
                f"rtol={rtol}: {checks}; {out_file} not written"
            )
    return report
