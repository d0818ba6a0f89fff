"""Fast inference modes (ann-seg infer --fast/--fuse/--precision, benchmark-inference): they
compute what float32 computes, and the comparison reports it."""

import contextlib
import glob
import json
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from _helpers import load_tool
from _inference_helpers import DEMO_CONFIG
from mmseg.apis import inference_model, init_model

from ann_seg import inference
from ann_seg.benchmark import inference_modes
from ann_seg.inference.folder import LABEL_DIR
from ann_seg.io import read_label_png
from ann_seg.layers.compat import native_low_precision_dtype
from ann_seg.mmseg import build_segmentor
from ann_seg.mmseg.speed import SpeedPolicy
from ann_seg.mmseg.synthetic import render_long_range_sample, synthetic_metainfo
from ann_seg.tools import cli

pytestmark = pytest.mark.usefixtures("single_thread_module")
FAST = SpeedPolicy.fast("infer")


def make_calibrated_checkpoint(path, images_rgb):
    """The demo network with default-initialised convs, random attention output and
    classifier weights, and BN statistics measured on ``images_rgb``: untrained, but its
    label maps vary within an image (random BN statistics give one class everywhere)."""
    torch.manual_seed(0)
    model = init_model(DEMO_CONFIG, None, "cpu")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "out_proj" in name or "conv_seg" in name:
                param.normal_(0, 0.1)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration pass
        model.train()
        inputs = [torch.from_numpy(im).permute(2, 0, 1)[[2, 1, 0]] for im in images_rgb]
        feats = model.extract_feat(model.data_preprocessor({"inputs": inputs})["inputs"])
        model.decode_head(feats)
    meta = synthetic_metainfo(4)
    torch.save(
        {
            "meta": {"dataset_meta": {"classes": meta["classes"], "palette": meta["palette"]}},
            "state_dict": model.state_dict(),
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(checkpoint, image folder): the demo network (see ``make_calibrated_checkpoint``),
    three synthetic images and one broken file."""
    root = tmp_path_factory.mktemp("modes")
    images = root / "images"
    images.mkdir()
    for index, size in enumerate([(64, 128), (64, 128), (48, 80)]):
        sample = render_long_range_sample(3, "val", index, size=size)
        cv2.imwrite(str(images / f"sample_{index}.png"), sample.image[..., ::-1])
    calibration = [render_long_range_sample(4, "val", i, size=(64, 128)).image for i in range(3)]
    checkpoint = make_calibrated_checkpoint(str(root / "demo.pth"), calibration)
    (images / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return checkpoint, str(images)


def read_labels(out_dir):
    folder = osp.join(out_dir, LABEL_DIR)
    return {
        name: read_label_png(osp.join(folder, f"sample_{i}.png.png"))
        for i, name in enumerate(["a", "b", "c"])
    }


def test_infer_fuse_and_low_precision_keep_the_predictions(demo, tmp_path):
    checkpoint, images = demo
    runs = {}
    for name, options in {
        "plain": {},
        "fuse": dict(speed=SpeedPolicy(fuse=True)),
        "fuse_bf16": dict(speed=SpeedPolicy(fuse=True, precision="bf16")),
    }.items():
        out = str(tmp_path / name)
        summary = inference.run_inference(
            DEMO_CONFIG,
            checkpoint,
            images,
            out,
            progress=False,
            outputs=inference.OutputOptions(save_logits="npy"),
            **options,
        )
        assert summary["counts"] == {
            "images": 4,
            "processed": 3,
            "skipped": 0,
            "failed": 1,
            "pending": 0,
        }
        runs[name] = (
            summary,
            read_labels(out),
            np.load(osp.join(out, "logits", "sample_0.png.npy")),
        )
    assert runs["plain"][0]["speed"]["name"] == "fp32"
    assert runs["fuse_bf16"][0]["speed"]["name"] == "bf16+cl+fuse"
    assert runs["fuse_bf16"][0]["speed"]["requested"]["precision"] == "bf16"
    assert runs["fuse_bf16"][2].dtype == np.float16  # logits stored as float16, computed fp32
    plain_labels, plain_logits = runs["plain"][1], runs["plain"][2].astype(np.float32)
    assert len(np.unique(plain_labels["a"])) > 1  # a check on a constant map would be void
    for name in ("fuse", "fuse_bf16"):
        labels, logits = runs[name][1], runs[name][2].astype(np.float32)
        agreement = np.mean([(labels[k] == plain_labels[k]).mean() for k in labels])
        rel = np.linalg.norm(logits - plain_logits) / np.linalg.norm(plain_logits)
        if name == "fuse":  # exact folding: float32 rounding (logits stored as float16)
            assert agreement > 0.999 and rel < 1e-3, (agreement, rel)
        else:
            assert agreement > 0.9 and rel < 0.1, (agreement, rel)


def test_fast_follows_the_hardware(demo, tmp_path, capsys):
    checkpoint, images = demo
    summary = inference.run_inference(
        DEMO_CONFIG, checkpoint, images, str(tmp_path), progress=False, speed=FAST
    )
    native = native_low_precision_dtype("cpu")
    expected = {None: "fp32", torch.bfloat16: "bf16"}[native]
    assert summary["speed"]["precision"] == expected
    assert summary["speed"]["requested"]["precision"] == "auto"
    if native is None:
        assert "no native low precision" in capsys.readouterr().err


def test_compare_inference_modes(demo):
    checkpoint, images = demo
    result = inference_modes.compare_inference_modes(
        DEMO_CONFIG, checkpoint, images, modes=["fuse", "amp", "fuse"], warmup=1, progress=False
    )
    rows = {row["mode"]: row for row in result["rows"]}
    assert list(rows) == ["fp32", "fuse", "amp"]  # the reference first, duplicates dropped
    meta = result["meta"]
    assert meta["images"] == 3 and meta["pixels"] == 2 * 64 * 128 + 48 * 80
    assert [f["name"] for f in meta["failures"]] == ["zz_broken.png"]
    ref = rows["fp32"]
    assert ref["pixel_agreement"] == ref["speedup"] == 1.0 and ref["logit_rel_l2_max"] == 0
    # the amp row (bfloat16 autocast) against labels computed here, independently of the
    # comparison's code
    labels = {}
    for name, dtype in (("fp32", None), ("amp", torch.bfloat16)):
        model = build_segmentor(DEMO_CONFIG, checkpoint=checkpoint)
        labels[name] = []
        for path in sorted(glob.glob(osp.join(images, "sample_*.png"))):
            context = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
            with torch.no_grad(), context:
                prediction = inference_model(model, cv2.imread(path))
            labels[name].append(prediction.pred_sem_seg.data[0].numpy())
    equal = sum(int((a == b).sum()) for a, b in zip(labels["fp32"], labels["amp"]))
    if native_low_precision_dtype("cpu") is not None:  # auto: bf16 here, else fp32
        assert rows["amp"]["pixel_agreement"] == pytest.approx(equal / meta["pixels"], abs=1e-4)
        assert rows["amp"]["speed"]["name"] == "bf16+amp"
        assert 0 < rows["amp"]["logit_rel_l2_max"] < 0.1
    assert rows["fuse"]["speed"]["name"] == "fp32+fuse"
    assert rows["fuse"]["pixel_agreement"] > 0.999 and rows["fuse"]["logit_rel_l2_max"] < 1e-4
    assert rows["amp"]["pixel_agreement"] > 0.9 or rows["amp"]["worst_image_agreement"] > 0.9
    for row in rows.values():
        lat = row["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["max"]
        assert row["speedup"] == pytest.approx(ref["latency_ms"]["median"] / lat["median"])
    table = inference_modes.modes_table(result)
    assert table.count("\n") == 4 and "| fuse |" in table


def test_random_weights_and_bad_modes(demo):
    _, images = demo
    result = inference_modes.compare_inference_modes(
        DEMO_CONFIG,
        inference_modes.RANDOM_WEIGHTS,
        images,
        modes=["fp32", "fuse"],
        warmup=0,
        max_images=1,
        progress=False,
    )
    fuse = result["rows"][1]
    assert result["meta"]["images"] == 1 and fuse["logit_rel_l2_max"] < 1e-4
    with pytest.raises(ValueError, match="inference mode 'int8'.*unknown suffix"):
        inference_modes.check_modes(["fp32", "int8"])


def test_cli(demo, tmp_path, capsys):
    checkpoint, images = demo
    tool = load_tool("benchmark_inference")
    out = tmp_path / "modes.json"
    assert (
        tool.main(
            [
                DEMO_CONFIG,
                checkpoint,
                images,
                "--modes",
                "fuse",
                "--warmup",
                "0",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "| fp32 |" in captured.out and "| fuse |" in captured.out
    assert "skipped zz_broken.png" in captured.err
    data = json.loads(out.read_text())
    assert [r["mode"] for r in data["rows"]] == ["fp32", "fuse"]
    assert cli.run(tool.main, [DEMO_CONFIG, checkpoint, str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
