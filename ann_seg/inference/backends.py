"""Exported models on onnxruntime or OpenVINO, without torch, mmcv, mmseg or the config:
``load_backend(kind, model.onnx)`` -> a predictor for the folder loop (``ann-seg infer
--backend``).

``ann-seg export-onnx`` writes the graph ``image`` (B, 3, H, W) float32 RGB 0..255 ->
``logits`` (B, C, H, W) float32 at the input size (normalisation inside), and one metadata
entry ``ann_seg`` (JSON, ``METADATA_KEY``) with what runs around it: classes and palette, the
test pipeline's resize, ``test_cfg``, the head's ``align_corners``, the checkpoint's digest.
Around the graph this module does in numpy what mmseg's whole-image inference does around
``encode_decode`` (``mmseg.apis.inference_model``):

* the test pipeline's ``Resize`` as mmcv's: ``rescale_size``/``_scale_size`` rounding
  (``int(x * s + 0.5)``), ``cv2.resize`` on the BGR uint8 image with the same interpolation;
* BGR -> RGB, NCHW float32 (the graph normalises and converts to what the network expects);
* the logits resized back to the image size bilinearly as ``postprocess_result``
  (``F.interpolate`` with the head's ``align_corners``), then argmax over C (sigmoid and the
  head's threshold for one output channel).

Other test-pipeline steps than loading, annotations, packing and one ``Resize`` are recorded
by the export and refused here. This module imports only numpy and OpenCV at module level:
onnxruntime and OpenVINO are optional extras, imported where used.
"""

import json
import os
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .fingerprint import digest_of, file_digest
from .folder import (
    DEFAULT_OUT_DIR,
    DistributedOptions,
    LoaderOptions,
    OutputOptions,
    segment_inputs,
)
from .predictor import Prediction, SlideWindow, nonfinite_problem, slide_window

METADATA_KEY = "ann_seg"
FORMAT_VERSION = 1
BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# test_pipeline steps without effect on an image array in inference
NO_OP_TRANSFORMS = (
    "LoadImageFromFile",
    "LoadImageFromNDArray",
    "LoadAnnotations",
    "LoadImageOrSkip",
    "LoadAnnotationsOrSkip",
    "PackSegInputs",
)
CV2_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
NO_METADATA = "exported without metadata: re-export with ann-seg export-onnx"


class BackendError(ValueError):
    """An exported model that cannot be run: not ONNX, no or bad metadata, runtime missing."""


# ------------------------------------------------------------------ mmcv's resize, in numpy


def _scale_size(size: Tuple[int, int], scale: Sequence[float]) -> Tuple[int, int]:
    """mmcv's ``_scale_size``: (w, h) scaled by (sx, sy), rounded half up."""
    w, h = size
    return int(w * float(scale[0]) + 0.5), int(h * float(scale[1]) + 0.5)


def resized_shape(height: int, width: int, resize: Optional[dict]) -> Tuple[int, int]:
    """(h, w) after the test pipeline's ``Resize`` (``resize``: the metadata's ``test_resize``:
    ``scale`` (w, h) or ``scale_factor`` (sx, sy), ``keep_ratio``), as mmcv's ``Resize`` and
    ``rescale_size`` compute it; (height, width) without one."""
    if not resize:
        return height, width
    scale = resize.get("scale")
    if scale is None:  # Resize(scale_factor=...): the target size comes from the factor
        scale = _scale_size((width, height), resize["scale_factor"])
    if resize.get("keep_ratio"):
        factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
        new_w, new_h = _scale_size((width, height), (factor, factor))
    else:
        new_w, new_h = scale
    return int(new_h), int(new_w)


def preprocess(images: Sequence[np.ndarray], resize: Optional[dict]) -> np.ndarray:
    """BGR uint8 (H, W, 3) images of one size -> the graph's input (N, 3, h, w) float32 RGB
    0..255 at the resized size (``cv2.resize`` as mmcv's ``imresize``)."""
    height, width = images[0].shape[:2]
    new_h, new_w = resized_shape(height, width, resize)
    batch = np.empty((len(images), 3, new_h, new_w), np.float32)
    interpolation = CV2_INTERPOLATION[(resize or {}).get("interpolation", "bilinear")]
    for i, image in enumerate(images):
        if (new_h, new_w) != (height, width):
            image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        batch[i] = image[..., ::-1].transpose(2, 0, 1)
    return batch


def _source_index(out_size: int, in_size: int, align_corners: bool):
    """PyTorch's bilinear source indices and weights along one axis (upsample_bilinear2d)."""
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * np.float32(scale)
    else:
        src = np.maximum((dst + 0.5) * np.float32(in_size / out_size) - 0.5, 0)
    low = np.minimum(src.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (src - low).astype(np.float32)


def bilinear_resize(x: np.ndarray, size: Tuple[int, int], align_corners: bool) -> np.ndarray:
    """(..., h, w) float32 -> (..., H, W) as ``F.interpolate(mode='bilinear')`` (separable; by
    hand: cv2.resize has no align_corners and takes at most 512 channels)."""
    (out_h, out_w), (in_h, in_w) = size, x.shape[-2:]
    if (out_h, out_w) == (in_h, in_w):
        return x
    low, high, weight = _source_index(out_h, in_h, align_corners)
    weight = weight[:, None]
    x = x[..., low, :] * (1 - weight) + x[..., high, :] * weight
    low, high, weight = _source_index(out_w, in_w, align_corners)
    return x[..., low] * (1 - weight) + x[..., high] * weight


# ------------------------------------------------------------------------------- metadata


def parse_metadata(text: Optional[str], model_path: str) -> dict:
    """The ``ann_seg`` metadata entry's JSON, checked for the keys this module reads."""
    if not text:
        raise BackendError(f"{model_path}: {NO_METADATA}")
    try:
        meta = json.loads(text)
    except ValueError as error:
        raise BackendError(f"{model_path}: unreadable ann_seg metadata ({error})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BackendError(
            f"{model_path}: ann_seg metadata format {version!r} (this ann_seg reads up to "
            f"{FORMAT_VERSION}): re-export with this ann_seg's ann-seg export-onnx"
        )
    missing = [
        k for k in ("classes", "palette", "num_classes", "test_cfg", "output") if k not in meta
    ]
    if missing:
        raise BackendError(f"{model_path}: ann_seg metadata lacks {', '.join(missing)}")
    return meta


def read_metadata(model_path: str) -> dict:
    """The ``ann_seg`` metadata of an exported file, read with whichever of onnx,
    onnxruntime and OpenVINO is installed."""
    _check_onnx_file(model_path)
    try:
        import onnx  # noqa: PLC0415 - optional: reads the metadata without a session
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            proto = onnx.load(model_path, load_external_data=False)
        except Exception as error:  # noqa: BLE001 - any parse failure: not ONNX
            raise BackendError(f"{model_path} is not an ONNX model: {_first_line(error)}") from None
        props = {p.key: p.value for p in proto.metadata_props}
        return parse_metadata(props.get(METADATA_KEY), model_path)
    for kind in BACKENDS:
        try:
            runner = RUNNERS[kind](model_path, 1, "fp32")
        except BackendError as error:
            if "pip install" in str(error):
                continue
            raise
        return parse_metadata(runner.metadata, model_path)
    raise BackendError(
        "reading ann_seg metadata needs onnx, onnxruntime or openvino: pip install onnx"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


def _check_onnx_file(model_path: str) -> None:
    """A readable file whose first byte is an ONNX ModelProto's (``ir_version``: field 1,
    varint, serialised first)."""
    if not osp.isfile(model_path):
        raise BackendError(f"{model_path}: no such model file")
    with open(model_path, "rb") as f:
        head = f.read(1)
    if head != b"\x08":
        raise BackendError(f"{model_path} is not an ONNX model (exported backends run .onnx files)")


# -------------------------------------------------------------------------------- runtimes


def _missing(kind: str) -> BackendError:
    package = PACKAGES[kind]
    return BackendError(f"the {kind} backend needs {package}: pip install {package}")


class OnnxRuntimeRunner:
    """An onnxruntime CPU session: ``metadata`` (the ann_seg JSON text or None),
    ``input_shape``/``output_shape`` (ints or None where dynamic), ``__call__``."""

    def __init__(self, model_path: str, threads: Optional[int], precision: str):
        try:
            import onnxruntime as ort  # noqa: PLC0415 - optional extra
        except ImportError:
            raise _missing("onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (one per core)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                model_path, options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # noqa: BLE001 - onnxruntime's own exception types
            raise BackendError(
                f"{model_path}: onnxruntime cannot load it: {_first_line(error)}"
            ) from None
        self.metadata = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = [
            d if isinstance(d, int) else None for d in self.session.get_inputs()[0].shape
        ]
        self.output_shape = [
            d if isinstance(d, int) else None for d in self.session.get_outputs()[0].shape
        ]
        self.precision = precision

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class OpenVinoRunner:
    """An OpenVINO model compiled for the CPU (``INFERENCE_PRECISION_HINT`` f32 by default:
    the CPU plugin's own default is bf16 on CPUs that have it)."""

    def __init__(self, model_path: str, threads: Optional[int], precision: str):
        try:
            import openvino as ov  # noqa: PLC0415 - optional extra
        except ImportError:
            raise _missing("openvino") from None
        core = ov.Core()
        try:
            model = core.read_model(model_path)
        except Exception as error:  # noqa: BLE001 - OpenVINO's own exception types
            raise BackendError(
                f"{model_path}: OpenVINO cannot read it: {_first_line(error)}"
            ) from None
        path = ["framework", METADATA_KEY]  # where the ONNX frontend puts metadata_props
        self.metadata = model.get_rt_info(path).astype(str) if model.has_rt_info(path) else None
        self.input_shape = _ov_shape(model.inputs[0].get_partial_shape())
        self.output_shape = _ov_shape(model.outputs[0].get_partial_shape())
        config = {
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch})
        return np.array(self.request.get_output_tensor(0).data, np.float32)  # a copy


def _ov_shape(shape) -> List[Optional[int]]:
    return [d.get_length() if d.is_static else None for d in shape]


RUNNERS: Dict[str, Callable[..., Any]] = {
    "onnxruntime": OnnxRuntimeRunner,
    "openvino": OpenVinoRunner,
}


# ------------------------------------------------------------------------------ predictor


class ExportedPredictor:
    """The predictor of an exported model (the folder loop's interface): ``classes``,
    ``palette``, ``slide``, ``predict``, ``forward_tiles``, ``fingerprint``; ``metadata``
    holds the export's record."""

    def __init__(self, kind: str, model_path: str, runner: Any, metadata: dict):
        self.kind, self.model_path, self.runner, self.metadata = kind, model_path, runner, metadata
        self.classes: List[str] = list(metadata["classes"])
        self.palette: List[Tuple[int, int, int]] = [
            tuple(int(v) for v in c) for c in metadata["palette"]
        ]
        self.num_classes = int(metadata["num_classes"])
        self.channels = int(metadata["output"].get("channels") or self.num_classes)
        test_cfg = metadata["test_cfg"] or {}
        self.slide = slide_window(test_cfg)
        self.resize = metadata.get("test_resize")
        self.align_corners = bool(metadata["output"].get("align_corners", False))
        self.threshold = float(metadata["output"].get("threshold") or 0.3)
        self._fingerprint: Optional[dict] = None
        self._channels_seen = False
        self._check()

    def _check_channels(self, channels: Optional[int]) -> None:
        if channels != self.channels or len(self.classes) != self.num_classes:
            raise BackendError(
                f"{self.model_path}: the metadata names {len(self.classes)} classes (num_classes "
                f"{self.num_classes}, {self.channels} output channels) but the model outputs "
                f"{channels} channels"
            )

    def _check(self) -> None:
        where, meta = self.model_path, self.metadata
        shape = self.runner.output_shape
        if len(shape) != 4:
            raise BackendError(f"{where}: the model's output has shape {shape}, not (B, C, H, W)")
        if shape[1] is not None:  # else checked on the first output
            self._check_channels(shape[1])
        if len(self.palette) != len(self.classes):
            raise BackendError(
                f"{where}: the metadata has {len(self.palette)} palette colours for "
                f"{len(self.classes)} classes"
            )
        unsupported = meta.get("unsupported_transforms") or []
        if unsupported:
            raise BackendError(
                f"{where}: the test pipeline's {', '.join(unsupported)} is not reproduced by "
                "the exported backends (supported: one Resize)"
            )
        resize = self.resize or {}
        if resize and (
            resize.get("backend", "cv2") != "cv2"
            or resize.get("interpolation", "bilinear") not in CV2_INTERPOLATION
        ):
            raise BackendError(
                f"{where}: the test Resize {resize} is not reproduced (cv2 backend only)"
            )
        if meta.get("test_pad"):
            raise BackendError(
                f"{where}: the data preprocessor pads test images ({meta['test_pad']}): "
                "not reproduced"
            )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """The graph on ``batch`` (N, 3, h, w) in chunks of its static batch size, if any."""
        fixed_batch = self.runner.input_shape[0]
        fixed_hw = self.runner.input_shape[2:]
        if any(f is not None and f != s for f, s in zip(fixed_hw, batch.shape[2:])):
            raise BackendError(
                f"{self.model_path} was exported for {fixed_hw[0]} x {fixed_hw[1]} inputs, got "
                f"{batch.shape[2]} x {batch.shape[3]}: re-export with ann-seg export-onnx --dynamic"
            )
        if fixed_batch is None or fixed_batch == len(batch):
            logits = self.runner(np.ascontiguousarray(batch))
        else:
            chunks = range(0, len(batch), fixed_batch)
            logits = np.concatenate([self.runner(batch[i : i + fixed_batch]) for i in chunks])
        if not self._channels_seen:
            self._check_channels(logits.shape[1] if logits.ndim == 4 else None)
            self._channels_seen = True
        return logits

    def forward_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) BGR uint8 crops -> (N, C, h, w) float32 logits (``encode_decode``)."""
        batch = np.ascontiguousarray(tiles[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
        return self._run(batch)

    def predict(self, images: List[np.ndarray], want_logits: bool) -> List[Prediction]:
        """Whole-image inference of same-size BGR uint8 (H, W, 3) ``images``: the test resize,
        the graph, logits resized back to (H, W), argmax."""
        if not images:
            return []
        height, width = images[0].shape[:2]
        logits = self._run(preprocess(images, self.resize))
        predictions = []
        for item in logits:
            problem = nonfinite_problem(item)
            item = bilinear_resize(item, (height, width), self.align_corners)
            if self.channels > 1:
                label = item.argmax(axis=0)
            else:  # one channel: sigmoid and the head's threshold, as postprocess_result
                item = 1 / (1 + np.exp(-item))
                label = (item[0] > self.threshold).astype(np.int64)
            label = label.astype(np.int64, copy=False)
            predictions.append(Prediction(label, item if want_logits else None, problem))
        return predictions

    def describe(self) -> dict:
        """The summary's fields about the model."""
        meta = self.metadata
        return {
            "config": meta.get("config"),
            "checkpoint": meta.get("checkpoint"),
            "backend": self.kind,
            "model": osp.abspath(self.model_path),
            "device": "cpu",
            "speed": {"name": f"{self.kind}-{self.runner.precision}"},
            "test_cfg": meta.get("test_cfg"),
            "classes": self.classes,
            "palette": self.palette,
            "palette_source": "the exported model's metadata",
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> dict:
        """``model_fingerprint``'s shape: the export's config, test_cfg and classes digests
        (those of the PyTorch model), the checkpoint digest, ``speed`` naming the backend and
        precision, and ``model``: the exported file's digest."""
        if self._fingerprint is None:
            meta = self.metadata
            torch_parts = meta.get("fingerprint") or {}
            speed = {
                "name": f"{self.kind}-{self.runner.precision}",
                "precision": self.runner.precision,
                "device": "cpu",
            }
            parts = {
                "config": torch_parts.get("config"),
                "test_cfg": torch_parts.get("test_cfg", digest_of(meta["test_cfg"])),
                "checkpoint": meta.get("checkpoint_digest"),
                "speed": digest_of(speed),
                "classes": torch_parts.get("classes"),
                "model": file_digest(self.model_path),
            }
            self._fingerprint = {
                "digest": digest_of(parts),
                "checkpoint": meta.get("checkpoint"),
                "backend": self.kind,
                "model": osp.abspath(self.model_path),
                "parts": parts,
            }
        return self._fingerprint


def load_backend(
    kind: str, model_path: str, threads: Optional[int] = None, precision: str = "fp32"
) -> ExportedPredictor:
    """The predictor of the exported ``model_path`` on ``kind`` (``'onnxruntime'`` or
    ``'openvino'``, CPU) with ``threads`` intra-op threads (None: the runtime's default) in
    ``precision`` (fp32; OpenVINO also bf16). Raises ``BackendError`` (one line)."""
    if kind not in BACKENDS:
        raise BackendError(f"unknown backend {kind!r}: choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS[kind]:
        raise BackendError(
            f"the {kind} backend runs {', '.join(PRECISIONS[kind])}, not {precision!r}"
        )
    if threads is not None and threads < 1:
        raise BackendError(f"threads must be >= 1, got {threads}")
    _check_onnx_file(model_path)
    runner = RUNNERS[kind](os.fspath(model_path), threads, precision)
    return ExportedPredictor(kind, model_path, runner, parse_metadata(runner.metadata, model_path))


def run_exported(
    kind: str,
    model_path: str,
    input_path: str,
    out_dir: str = DEFAULT_OUT_DIR,
    *,
    outputs: Optional[OutputOptions] = None,
    loader: Optional[LoaderOptions] = None,
    distributed: Optional[DistributedOptions] = None,
    threads: Optional[int] = None,
    precision: str = "fp32",
    slide: Union[None, bool, SlideWindow] = None,
    progress: bool = True,
) -> dict:
    """``pytorch.run_inference`` for an exported model: the same folder machinery
    (``folder.segment_inputs``: journal, resume, failures, videos, sharding, slide mode) with
    ``load_backend(kind, model_path, threads, precision)``. ``slide``: ``True`` for the
    exported test_cfg's window (or, in whole mode, its crop with stride 2/3), a window
    ``((crop_h, crop_w), (stride_h, stride_w))``, or ``None``: as exported. Raises
    ``BackendError`` for the model, else as ``segment_inputs``."""

    def load(info) -> ExportedPredictor:
        predictor = load_backend(kind, model_path, threads, precision)
        if slide is True and predictor.slide is None:
            crop = (predictor.metadata.get("test_cfg") or {}).get("crop_size")
            if not crop:
                raise BackendError(f"{model_path}: no crop size exported; give one: --slide HxW")
            predictor.slide = (tuple(crop), tuple(max(1, c * 2 // 3) for c in crop))
        elif slide not in (None, True):
            predictor.slide = slide
        return predictor

    return segment_inputs(
        load,
        input_path,
        out_dir,
        outputs=outputs,
        loader=loader,
        distributed=distributed,
        progress=progress,
    )
