"""Fast inference modes (tools/infer.py --fuse/--amp, tools/benchmark_inference.py): they
compute what float32 computes, and the comparison reports it."""

import glob
import json
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from _inference_helpers import DEMO_CONFIG, load_tool
from mmseg.apis import inference_model

from ann_seg import cli, inference
from ann_seg.benchmark import inference_modes
from ann_seg.inference.folder import LABEL_DIR
from ann_seg.io import read_label_png
from ann_seg.layers.compat import native_low_precision_dtype
from ann_seg.mmseg.synthetic import render_long_range_sample, synthetic_metainfo

pytestmark = pytest.mark.usefixtures("single_thread_module")


def make_calibrated_checkpoint(path, images_rgb):
    """The demo network with default-initialised convs, random attention output and
    classifier weights, and BN statistics measured on ``images_rgb``: untrained, but its
    label maps vary within an image (random BN statistics give one class everywhere)."""
    from mmseg.apis import init_model

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


def test_infer_fuse_and_amp_keep_the_predictions(demo, tmp_path):
    checkpoint, images = demo
    runs = {}
    for name, options in {
        "plain": {},
        "fuse": dict(fuse=True),
        "fuse_bf16": dict(fuse=True, amp="on"),
    }.items():
        out = str(tmp_path / name)
        summary = inference.run_inference(
            DEMO_CONFIG, checkpoint, images, out, progress=False, save_logits="npy", **options
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
    assert runs["plain"][0]["inference_mode"] == {"fuse": False, "autocast": None}
    assert runs["fuse_bf16"][0]["inference_mode"] == {"fuse": True, "autocast": "bfloat16"}
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


def test_amp_auto_follows_the_hardware(demo, tmp_path, capsys):
    checkpoint, images = demo
    summary = inference.run_inference(
        DEMO_CONFIG, checkpoint, images, str(tmp_path), progress=False, amp="auto"
    )
    native = native_low_precision_dtype("cpu")
    expected = str(native).replace("torch.", "") if native else None
    assert summary["inference_mode"]["autocast"] == expected
    if native is None:
        assert "no native low precision" in capsys.readouterr().err
    assert inference.resolve_amp("on", "cpu") == torch.bfloat16
    assert inference.resolve_amp("off", "cpu") is None
    with pytest.raises(inference.InferenceInputError, match="amp must be one of"):
        inference.resolve_amp("fast", "cpu")


def test_compare_inference_modes(demo):
    checkpoint, images = demo
    result = inference_modes.compare_inference_modes(
        DEMO_CONFIG, checkpoint, images, modes=["fuse", "bf16", "fuse"], warmup=1, progress=False
    )
    rows = {row["mode"]: row for row in result["rows"]}
    assert list(rows) == ["float32", "fuse", "bf16"]  # the reference first, duplicates dropped
    meta = result["meta"]
    assert meta["images"] == 3 and meta["pixels"] == 2 * 64 * 128 + 48 * 80
    assert [f["name"] for f in meta["failures"]] == ["zz_broken.png"]
    ref = rows["float32"]
    assert ref["pixel_agreement"] == ref["speedup"] == 1.0 and ref["logit_rel_l2_max"] == 0
    # the bf16 row against labels computed here, independently of the comparison's code
    labels = {}
    for name, dtype in (("float32", None), ("bf16", torch.bfloat16)):
        model = inference.load_segmentor(DEMO_CONFIG, checkpoint, "cpu")
        labels[name] = []
        for path in sorted(glob.glob(osp.join(images, "sample_*.png"))):
            with torch.no_grad(), inference.autocast_context("cpu", dtype):
                prediction = inference_model(model, cv2.imread(path))
            labels[name].append(prediction.pred_sem_seg.data[0].numpy())
    equal = sum(int((a == b).sum()) for a, b in zip(labels["float32"], labels["bf16"]))
    assert rows["bf16"]["pixel_agreement"] == pytest.approx(equal / meta["pixels"], abs=1e-4)
    assert rows["fuse"]["fuse"] and rows["fuse"]["autocast"] is None
    assert rows["fuse"]["pixel_agreement"] > 0.999 and rows["fuse"]["logit_rel_l2_max"] < 1e-4
    assert rows["bf16"]["autocast"] == "bfloat16"
    assert 0 < rows["bf16"]["logit_rel_l2_max"] < 0.1
    assert (
        0.9 < rows["bf16"]["pixel_agreement"] < 1.0 or rows["bf16"]["worst_image_agreement"] > 0.9
    )
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
        modes=["float32", "fuse"],
        warmup=0,
        max_images=1,
        progress=False,
    )
    fuse = result["rows"][1]
    assert result["meta"]["images"] == 1 and fuse["logit_rel_l2_max"] < 1e-4
    with pytest.raises(ValueError, match="unknown inference mode"):
        inference_modes.check_modes(["float32", "int8"])


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
    assert "| float32 |" in captured.out and "| fuse |" in captured.out
    assert "skipped zz_broken.png" in captured.err
    data = json.loads(out.read_text())
    assert [r["mode"] for r in data["rows"]] == ["float32", "fuse"]
    assert cli.run(tool.main, [DEMO_CONFIG, checkpoint, str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
