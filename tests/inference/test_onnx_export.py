"""tools/export_onnx.py and ann_seg.apis.onnx_export: onnxruntime vs PyTorch within 1e-4."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import load_tool
from _inference_helpers import DEMO_CONFIG

from ann_seg.inference.onnx_export import (
    ExportCheckError,
    SegmentorExportWrapper,
    export_onnx,
    verify_onnx,
)
from ann_seg.layers import PyramidPoolingSampler
from ann_seg.layers.compat import torchscript_onnx_export_kwargs
from ann_seg.mmseg import build_segmentor

ort = pytest.importorskip("onnxruntime")


pytestmark = pytest.mark.usefixtures("single_thread_module")


def test_wrapper_is_mmseg_whole_inference(demo_checkpoint):
    """RGB 0..255 in, upsampled logits out: the data preprocessor + ``EncoderDecoder.inference``
    of mmseg (BGR input, as mmcv loads it)."""
    model = build_segmentor(DEMO_CONFIG, checkpoint=demo_checkpoint)
    wrapper = SegmentorExportWrapper(model).eval()
    rgb = torch.rand(1, 3, 88, 120, generator=torch.Generator().manual_seed(0)) * 255
    data = model.data_preprocessor({"inputs": [rgb[0].flip(0)]}, False)
    meta = dict(ori_shape=(88, 120), img_shape=(88, 120), pad_shape=(88, 120))
    with torch.no_grad():
        expected = model.inference(data["inputs"], [meta])
        torch.testing.assert_close(wrapper(rgb), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dynamic", [False, True])
def test_export_matches_pytorch(tmp_path, demo_checkpoint, dynamic, capsys):
    """88 x 120 input -> 11 x 15 features: pyramid bins 3, 6 and 8 do not divide them. The
    fixed-shape export goes through the tool."""
    out = tmp_path / "sub" / "ann.onnx"
    if dynamic:
        report = export_onnx(DEMO_CONFIG, demo_checkpoint, str(out), shape=(88, 120), dynamic=True)
    else:
        tool = load_tool("export_onnx")
        assert tool.main([DEMO_CONFIG, demo_checkpoint, str(out), "--shape", "88", "120"]) == 0
        report = json.loads(capsys.readouterr().out)
    assert out.is_file() and os.listdir(out.parent) == ["ann.onnx"]
    assert report["exporter"] == "torch.onnx.export(dynamo=False)"
    assert report["atol"] == report["rtol"] == 1e-4
    assert all(c["ok"] and c["max_abs_diff"] < 1e-4 for c in report["checks"])
    expected_shapes = [[1, 3, 88, 120]] + ([[2, 3, 69, 93]] if dynamic else [])
    assert [c["shape"] for c in report["checks"]] == expected_shapes
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "image"
    assert session.get_outputs()[0].name == "logits"
    if dynamic:  # a third size, odd and small (8 x 13 features)
        wrapper = SegmentorExportWrapper(
            build_segmentor(DEMO_CONFIG, checkpoint=demo_checkpoint)
        ).eval()
        checks = verify_onnx(str(out), wrapper, [(1, 61, 99)])
        assert checks[0]["ok"] and checks[0]["max_abs_diff"] < 1e-4
    else:
        with pytest.raises(Exception, match="[Ii]nvalid dimensions"):
            session.run(None, {"image": np.zeros((1, 3, 64, 128), np.float32)})


def test_failed_check_writes_nothing(tmp_path, demo_checkpoint):
    out = tmp_path / "ann.onnx"
    with pytest.raises(ExportCheckError, match="not written"):
        export_onnx(DEMO_CONFIG, demo_checkpoint, str(out), shape=(32, 32), atol=0.0, rtol=0.0)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("spatial", [(64, 128), (11, 15)])
def test_pyramid_pooling_exports_exactly(tmp_path, spatial):
    """The matmul pooling exports to ONNX (no adaptive pooling op) and equals PyTorch's
    adaptive average pooling, also at a size other than the traced one (dynamic axes)."""
    sampler = PyramidPoolingSampler((1, 3, 6, 8))
    x = torch.randn(1, 4, 17, 23)
    out = str(tmp_path / "pool.onnx")
    torch.onnx.export(
        sampler,
        (x,),
        out,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        **torchscript_onnx_export_kwargs(),
        dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
    )
    x = torch.randn(2, 4, *spatial, generator=torch.Generator().manual_seed(0))
    expected = torch.cat([F.adaptive_avg_pool2d(x, b).flatten(2) for b in (1, 3, 6, 8)], 2)
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    actual = session.run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(actual, expected.numpy(), atol=1e-6, rtol=1e-6)
    matrix = sampler.pooling_matrix(spatial, torch.float32, "cpu")
    assert torch.equal(matrix, sampler.traceable_pooling_matrix(spatial, torch.float32, "cpu"))
