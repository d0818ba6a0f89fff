"""mmseg's own ANN model -> checkpoint -> converter -> ann_seg model: identical logits."""

import os.path as osp
import subprocess
import sys

import pytest
import torch
from _helpers import CONFIGS, REPO, randomize_, run_tool
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

from ann_seg.convert import ConversionError, convert_checkpoint
from ann_seg.layers import fuse_for_inference
from ann_seg.mmseg import load_config
from ann_seg.mmseg.checkpoint import CorruptCheckpointError, safe_load_checkpoint

SMALL = {
    "model.pretrained": None,
    "model.backbone.depth": 18,
    "model.backbone.norm_cfg.type": "BN",
    "model.decode_head.norm_cfg.type": "BN",
    "model.auxiliary_head.norm_cfg.type": "BN",
    "model.decode_head.in_channels": [256, 512],
    "model.auxiliary_head.in_channels": 256,
    "model.decode_head.channels": 64,
    "model.auxiliary_head.channels": 32,
}
CASES = {
    "r50_cityscapes_512x1024": (
        "ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py",
        {"model.decode_head.project_channels": 32},
        {"model.decode_head.key_channels": 32},
    ),
    "r101_ade20k_512x512": (
        "ann/ann_r101-d8_4xb4-80k_ade20k-512x512.py",
        {"model.decode_head.project_channels": 48},
        {"model.decode_head.key_channels": 48},
    ),
    "r101_cityscapes_769x769": (
        "ann/ann_r101-d8_4xb2-40k_cityscapes-769x769.py",
        {"model.decode_head.project_channels": 32},
        {"model.decode_head.key_channels": 32},
    ),
}


def build(config, options):
    register_all_modules()
    cfg = load_config(config, dict(SMALL, **options))
    return cfg, MODELS.build(cfg.model)


def save_mmseg_checkpoint(tmp_path, case):
    config, mmseg_options, _ = CASES[case]
    cfg, model = build(f"mmseg::{config}", mmseg_options)
    assert type(model.decode_head).__name__ == "ANNHead"
    randomize_(model, std=0.2, mean_std=0.2)
    src = str(tmp_path / "mmseg_ann.pth")
    torch.save(
        {"meta": {"mmseg_version": "1.2.2", "iter": 40000}, "state_dict": model.state_dict()}, src
    )
    return cfg, model, src


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_logits_match_mmseg(case, tmp_path):
    config, _, ours_options = CASES[case]
    mmseg_cfg, mmseg_model, src = save_mmseg_checkpoint(tmp_path, case)
    dst = str(tmp_path / "ann_seg.pth")
    convert_checkpoint(src, dst)
    cfg, model = build(osp.join(CONFIGS, config), ours_options)
    assert type(model.decode_head).__name__ == "ANNSegHead"
    model.load_state_dict(safe_load_checkpoint(dst)["state_dict"], strict=True)
    model.eval()
    assert cfg.model.decode_head.align_corners == mmseg_cfg.model.decode_head.align_corners
    gen = torch.Generator().manual_seed(1)
    for h, w in [(64, 64), (67, 93), (33, 129), (17, 9)]:
        images = torch.randn(2, 3, h, w, generator=gen)
        with torch.no_grad():
            expected = mmseg_model(images, mode="tensor")
            got = model(images, mode="tensor")
        assert got.shape == expected.shape
        rel = (got - expected).norm() / expected.norm()
        assert rel < 1e-5, f"{case} at {h}x{w}: relative error {rel:.2e}"
        assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.999

    # the fast inference path (tools/infer.py --fuse) against mmseg's model, same weights

    fuse_for_inference(model, channels_last=True)
    for h, w in [(64, 64), (67, 93)]:
        images = torch.randn(2, 3, h, w, generator=gen)
        with torch.no_grad():
            expected = mmseg_model(images, mode="tensor")
            got = model(images.contiguous(memory_format=torch.channels_last), mode="tensor")
        rel = (got - expected).norm() / expected.norm()
        assert rel < 1e-4, f"{case} folded at {h}x{w}: relative error {rel:.2e}"


def test_cli_converts_and_checks_config(tmp_path):
    _, _, src = save_mmseg_checkpoint(tmp_path, "r50_cityscapes_512x1024")
    dst = tmp_path / "out" / "ann_seg.pth"
    # the full-size config does not fit the small checkpoint: refused, nothing written
    full = osp.join(CONFIGS, "ann", "ann_r50-d8_4xb2-40k_cityscapes-512x1024.py")
    proc = subprocess.run(
        [
            sys.executable,
            osp.join(REPO, "tools", "convert_mmseg_ann.py"),
            src,
            str(dst),
            "--config",
            full,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "do not fit" in proc.stderr and "shape mismatches" in proc.stderr
    assert not dst.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    proc = run_tool(
        [osp.join(REPO, "tools", "convert_mmseg_ann.py"), src, str(dst)], cwd=str(tmp_path)
    )
    assert "converted" in proc.stdout and dst.exists()


def test_refuses_other_models_and_broken_files(tmp_path):
    _, psp = build(
        "mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
        {
            "model.decode_head.in_channels": 512,
            "model.decode_head.channels": 32,
            "model.decode_head.pool_scales": (1, 2),
        },
    )
    src = str(tmp_path / "psp.pth")
    torch.save({"state_dict": psp.state_dict()}, src)
    dst = tmp_path / "out.pth"
    with pytest.raises(ConversionError, match="not an mmseg ANN or NonLocal model"):
        convert_checkpoint(src, str(dst))
    assert not dst.exists()

    _, _, good = save_mmseg_checkpoint(tmp_path, "r50_cityscapes_512x1024")
    truncated = tmp_path / "truncated.pth"
    data = open(good, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated.pth"):
        convert_checkpoint(str(truncated), str(dst))
    assert not dst.exists()

    # an existing good output is never replaced by a failed run
    dst.write_bytes(b"previous good file")
    with pytest.raises(ConversionError):
        convert_checkpoint(src, str(dst))
    assert dst.read_bytes() == b"previous good file"
