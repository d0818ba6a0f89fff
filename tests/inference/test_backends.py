"""ann_seg.inference.backends: exported models on onnxruntime and OpenVINO against the float32
PyTorch model (``mmseg.apis.inference_model``), the export's metadata, refusals, and a
torch-free import."""

import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import load_tool
from _inference_helpers import DEMO_CONFIG, make_checkpoint
from mmcv.transforms import Resize
from mmseg.apis import inference_model

from ann_seg.inference.backends import (
    METADATA_KEY,
    BackendError,
    bilinear_resize,
    load_backend,
    preprocess,
    read_metadata,
    resized_shape,
)
from ann_seg.inference.fingerprint import checkpoint_digest
from ann_seg.inference.onnx_export import (
    SegmentorExportWrapper,
    compare_backend,
    export_onnx,
    pipeline_resize,
)
from ann_seg.mmseg import build_segmentor

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("single_thread_module")

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# an odd test resize: 61 x 99 -> 50 x 81 (keep_ratio), so resize and un-resize both matter
RESIZE_PIPELINE = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(150, 50), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
ODD_SIZES = [(61, 99), (37, 45), (130, 257)]


def _images(sizes, seed=0):
    """Smooth colour blobs (an eighth of the size, upsampled) plus noise: labels that vary."""
    rng = np.random.default_rng(seed)
    images = []
    for h, w in sizes:
        small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        blobs = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.int16)
        images.append(np.clip(blobs + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8))
    return images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random weights whose labels vary over an image: ``make_checkpoint``'s small BN scales
    leave the BN biases dominant, one class everywhere; here convolutions have He scale, BN
    weights N(0, 0.7), biases N(0, 0.1) (N(0, 1) grows the logits past the export check)."""
    path = str(tmp_path_factory.mktemp("backends") / "demo.pth")
    make_checkpoint(DEMO_CONFIG, path)
    saved = torch.load(path, weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for name, tensor in saved["state_dict"].items():
        if not tensor.dtype.is_floating_point or "running" in name:
            continue
        if tensor.ndim > 1:
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
            tensor.mul_((2.0 / tensor[0].numel()) ** 0.5)
        else:
            scale = 0.7 if name.endswith("weight") else 0.1
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
    torch.save(saved, path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint):
    """The demo model with a keep-ratio test resize, exported with dynamic shapes."""
    options = {"test_pipeline": RESIZE_PIPELINE}
    out = str(tmp_path_factory.mktemp("backends") / "demo.onnx")
    report = export_onnx(
        DEMO_CONFIG, checkpoint, out, shape=(48, 80), dynamic=True, cfg_options=options
    )
    model = build_segmentor(DEMO_CONFIG, cfg_options=options, checkpoint=checkpoint)
    return out, report, model


def _rewrite_metadata(src, dst, edit):
    proto = onnx.load(src)
    props = {p.key: p.value for p in proto.metadata_props}
    del proto.metadata_props[:]
    props = edit(props)
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, dst)
    return dst


# ------------------------------------------------------------------ numpy vs mmcv / torch


@pytest.mark.parametrize(
    "step",
    [
        dict(scale=(150, 50), keep_ratio=True),
        dict(scale=(2048, 1024), keep_ratio=True),
        dict(scale=(77, 33), keep_ratio=False),
        dict(scale=64, keep_ratio=True),
        dict(scale_factor=0.37, keep_ratio=True),
        dict(scale_factor=(1.5, 0.7), keep_ratio=False, interpolation="area"),
    ],
)
def test_preprocess_is_mmcv_resize(step):
    """Shape (mmcv's rescale_size rounding) and pixels equal mmcv's ``Resize`` exactly."""
    resize, unsupported = pipeline_resize([dict(type="Resize", **step)])
    assert not unsupported
    transform = Resize(**step)
    for image in _images([(61, 99), (99, 61), (7, 13)]):
        expected = transform(dict(img=image.copy()))["img"]
        assert resized_shape(*image.shape[:2], resize) == expected.shape[:2]
        actual = preprocess([image], resize)[0]
        assert actual.dtype == np.float32
        np.testing.assert_array_equal(actual, expected[..., ::-1].transpose(2, 0, 1))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(61, 99), (5, 3), (1, 1), (11, 15)])
def test_bilinear_resize_is_torch(size, align_corners):
    x = np.random.default_rng(0).standard_normal((2, 5, 11, 15)).astype(np.float32)
    expected = F.interpolate(
        torch.from_numpy(x), size, mode="bilinear", align_corners=align_corners
    ).numpy()
    np.testing.assert_allclose(bilinear_resize(x, size, align_corners), expected, atol=1e-5)


# ----------------------------------------------------------------------------- metadata


def test_metadata_round_trip(exported, checkpoint):
    out, report, model = exported
    meta = read_metadata(out)
    assert meta == json.loads(json.dumps(report["metadata"]))
    assert meta["classes"] == list(model.dataset_meta["classes"])
    assert meta["palette"] == [list(c) for c in model.dataset_meta["palette"]]
    assert meta["num_classes"] == meta["output"]["channels"] == 5
    assert meta["checkpoint"] == "demo.pth"
    assert meta["checkpoint_digest"] == checkpoint_digest(checkpoint)
    assert meta["test_resize"] == {
        "scale": [150, 50],
        "scale_factor": None,
        "keep_ratio": True,
        "interpolation": "bilinear",
        "backend": "cv2",
    }
    assert meta["unsupported_transforms"] == []
    assert meta["test_cfg"] == {"mode": "whole", "crop_size": None, "stride": None}
    assert meta["normalization"]["bgr_to_rgb"] is True
    np.testing.assert_allclose(meta["normalization"]["mean"], [123.675, 116.28, 103.53])
    assert meta["output"]["align_corners"] is False
    assert meta["export"] == {"shape": [48, 80], "dynamic": True, "opset": 17}
    # each runtime reads the same entry
    predictor = load_backend("onnxruntime", out)
    assert predictor.metadata == meta
    assert predictor.classes == meta["classes"] and predictor.slide is None
    assert predictor.palette == [tuple(c) for c in meta["palette"]]


# --------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_backend_matches_pytorch(exported, kind):
    if kind == "openvino":
        pytest.importorskip("openvino")
    out, _, model = exported
    predictor = load_backend(kind, out, threads=1)
    images = _images(ODD_SIZES)
    for image in images:  # the comparison can fail: several classes, logits that vary
        with torch.no_grad():
            label = inference_model(model, image).pred_sem_seg.data[0].numpy()
        assert np.sort(np.bincount(label.ravel()))[-2] > 0.01 * label.size  # 2 classes
    rows = compare_backend(predictor, model, images)
    for row, size in zip(rows, ODD_SIZES):
        assert row["shape"] == list(size)
        assert row["agreement"] >= 0.999, row
        assert row["logits_max_rel_diff"] < 1e-5, row
    # a batch of two gives what each alone gives
    images = _images([(37, 45), (37, 45)], seed=1)
    batch = predictor.predict(images, want_logits=False)
    for image, prediction in zip(images, batch):
        alone = predictor.predict([image], want_logits=True)[0]
        assert prediction.logits is None and prediction.label.shape == (37, 45)
        assert prediction.label.dtype == np.int64
        np.testing.assert_array_equal(prediction.label, alone.label)
    # tiles: encode_decode on each crop at its own size
    tiles = np.stack(_images([(40, 56)] * 2, seed=2))
    wrapper = SegmentorExportWrapper(model).eval()
    with torch.no_grad():
        rgb = torch.from_numpy(tiles[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32))
        expected = wrapper(rgb).numpy()
    np.testing.assert_allclose(predictor.forward_tiles(tiles), expected, atol=1e-4)


def test_align_corners_and_stretching_resize(tmp_path, checkpoint):
    """A head with align_corners=True and a resize without keep_ratio (80 x 48)."""
    options = {
        "test_pipeline": [
            dict(type="LoadImageFromFile"),
            dict(type="Resize", scale=(80, 48), keep_ratio=False),
            dict(type="PackSegInputs"),
        ],
        "model.decode_head.align_corners": True,
    }
    out = str(tmp_path / "ac.onnx")
    export_onnx(DEMO_CONFIG, checkpoint, out, shape=(48, 80), dynamic=True, cfg_options=options)
    model = build_segmentor(DEMO_CONFIG, cfg_options=options, checkpoint=checkpoint)
    predictor = load_backend("onnxruntime", out, threads=1)
    assert predictor.align_corners
    for row in compare_backend(predictor, model, _images([(61, 99), (130, 57)])):
        assert row["agreement"] >= 0.999 and row["logits_max_rel_diff"] < 1e-5, row


def test_parity_sees_a_wrong_resize(tmp_path, exported):
    """The check fails when the backend's geometry differs: without the test resize (the graph
    then runs at the image's own size) labels disagree."""
    out, _, model = exported

    def no_resize(props):
        meta = json.loads(props[METADATA_KEY])
        meta["test_resize"] = None
        return {METADATA_KEY: json.dumps(meta)}

    wrong = load_backend("onnxruntime", _rewrite_metadata(out, str(tmp_path / "w.onnx"), no_resize))
    rows = compare_backend(wrong, model, _images([(61, 99)]))
    assert rows[0]["agreement"] < 0.99, rows


def test_threads_and_precision(exported):
    out, _, _ = exported
    predictor = load_backend("onnxruntime", out, threads=2)
    assert predictor.runner.session.get_session_options().intra_op_num_threads == 2
    ov = pytest.importorskip("openvino")
    predictor = load_backend("openvino", out, threads=2)
    assert int(predictor.runner.compiled.get_property("INFERENCE_NUM_THREADS")) == 2
    assert predictor.runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert (
        predictor.fingerprint()["parts"]["speed"]
        != load_backend("onnxruntime", out).fingerprint()["parts"]["speed"]
    )


def test_fingerprint(exported):
    out, report, _ = exported
    first = load_backend("onnxruntime", out).fingerprint()
    parts = first["parts"]
    assert parts["checkpoint"] == report["metadata"]["checkpoint_digest"]
    assert parts["config"] == report["metadata"]["fingerprint"]["config"]
    assert first == load_backend("onnxruntime", out).fingerprint()
    assert first["checkpoint"] == "demo.pth" and first["backend"] == "onnxruntime"


# ------------------------------------------------------------------------------- refusals


def _one_line(excinfo, pattern):
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert pattern in message, message


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_refusals(tmp_path, exported, kind):
    if kind == "openvino":
        pytest.importorskip("openvino")
    out, _, _ = exported
    bare = _rewrite_metadata(out, str(tmp_path / "bare.onnx"), lambda p: {})
    with pytest.raises(BackendError) as excinfo:
        load_backend(kind, bare)
    _one_line(excinfo, "exported without metadata: re-export with ann-seg export-onnx")

    def four_classes(props):
        meta = json.loads(props[METADATA_KEY])
        meta.update(classes=meta["classes"][:4], palette=meta["palette"][:4], num_classes=4)
        meta["output"]["channels"] = 4
        return {METADATA_KEY: json.dumps(meta)}

    wrong = _rewrite_metadata(out, str(tmp_path / "wrong.onnx"), four_classes)
    with pytest.raises(BackendError) as excinfo:
        load_backend(kind, wrong)
    _one_line(excinfo, "the metadata names 4 classes")
    assert "outputs 5 channels" in str(excinfo.value)

    png = str(tmp_path / "image.png")
    cv2.imwrite(png, np.zeros((4, 4, 3), np.uint8))
    text = str(tmp_path / "model.onnx")
    with open(text, "w") as f:
        f.write("\x08 not really a model\n")
    for path, pattern in [
        (png, "is not an ONNX model"),
        (text, "cannot"),
        (str(tmp_path / "missing.onnx"), "no such model file"),
    ]:
        with pytest.raises(BackendError) as excinfo:
            load_backend(kind, path)
        _one_line(excinfo, pattern)


def test_refusals_without_a_model(exported, monkeypatch):
    out, _, _ = exported
    with pytest.raises(BackendError) as excinfo:
        load_backend("tensorrt", out)
    _one_line(excinfo, "unknown backend 'tensorrt'")
    with pytest.raises(BackendError) as excinfo:
        load_backend("onnxruntime", out, precision="bf16")
    _one_line(excinfo, "runs fp32")
    for kind in ("onnxruntime", "openvino"):
        monkeypatch.setitem(sys.modules, kind, None)  # import raises ImportError
        with pytest.raises(BackendError) as excinfo:
            load_backend(kind, out)
        _one_line(excinfo, f"pip install {kind}")


def test_refuses_an_unreproduced_pipeline_and_a_fixed_size(tmp_path, exported, checkpoint):
    out, _, _ = exported

    def with_flip(props):
        meta = json.loads(props[METADATA_KEY])
        meta["unsupported_transforms"] = ["RandomFlip"]
        return {METADATA_KEY: json.dumps(meta)}

    with pytest.raises(BackendError) as excinfo:
        load_backend("onnxruntime", _rewrite_metadata(out, str(tmp_path / "f.onnx"), with_flip))
    _one_line(excinfo, "RandomFlip is not reproduced")
    fixed = str(tmp_path / "fixed.onnx")
    export_onnx(DEMO_CONFIG, checkpoint, fixed, shape=(40, 56))
    predictor = load_backend("onnxruntime", fixed)
    assert predictor.predict(_images([(40, 56)]), False)[0].label.shape == (40, 56)
    with pytest.raises(BackendError) as excinfo:
        predictor.predict(_images([(41, 56)]), False)
    _one_line(excinfo, "re-export with ann-seg export-onnx --dynamic")


# ---------------------------------------------------------------------------------- tool


def test_export_tool_checks_images(tmp_path, checkpoint, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_images([(61, 99), (37, 45)])):
        cv2.imwrite(str(folder / f"{i}.png"), image)
    out = str(tmp_path / "m.onnx")
    tool = load_tool("export_onnx")
    args = [
        DEMO_CONFIG,
        checkpoint,
        out,
        "--shape",
        "48",
        "80",
        "--dynamic",
        "--threads",
        "1",
        "--check-images",
        str(folder),
    ]
    assert tool.main(args) == 0
    parity = json.loads(capsys.readouterr().out)["parity"]
    assert parity["backend"] == "onnxruntime"
    assert [row["image"] for row in parity["images"]] == ["0.png", "1.png"]
    assert all(row["agreement"] >= 0.999 for row in parity["images"])
    # an impossible bar fails with exit 1 and the figures still printed
    assert tool.main(args + ["--min-agreement", "1.5"]) == 1
    captured = capsys.readouterr()
    assert "parity" in captured.out and "below --min-agreement 1.5" in captured.err


# ----------------------------------------------------------------------- torch-free import

BLOCKER = """
import importlib.machinery, sys, types
BLOCKED = ("torch", "mmcv", "mmseg", "mmengine")

class NotInstalled(importlib.machinery.PathFinder):
    # the path finder, blind to the blocked packages: as if they were not installed
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return super().find_spec(name, path, target)

sys.meta_path[:] = [NotInstalled if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
"""

RUN = """
import numpy as np, sys
from ann_seg.inference.backends import load_backend
predictor = load_backend({kind!r}, {model!r}, threads=1)
image = np.load({image!r})
label = predictor.predict([image], want_logits=False)[0].label
np.testing.assert_array_equal(label, np.load({label!r}))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not heavy, heavy
print("ok")
"""


def _torch_free(tmp_path, exported, kind):
    out, _, model = exported
    image = _images([(61, 99)], seed=3)[0]
    with torch.no_grad():
        label = inference_model(model, image).pred_sem_seg.data[0].numpy()
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "label.npy", label)
    script = BLOCKER + RUN.format(
        kind=kind, model=out, image=str(tmp_path / "image.npy"), label=str(tmp_path / "label.npy")
    )
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(tmp_path),
    )


@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_backends_run_without_torch(tmp_path, exported, kind):
    """The package as installed, with torch, mmcv, mmseg and mmengine not installed."""
    if kind == "openvino":
        pytest.importorskip("openvino")
    proc = _torch_free(tmp_path, exported, kind)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
