"""Every config builds its model (pretrained=None) and runs a forward pass at a small size;
bad head arguments fail at build time with a message naming the argument."""

import glob
import os.path as osp

import pytest
import torch
from _helpers import CONFIGS
from mmengine.config import Config

from ann_seg.mmseg import ModelLoadError, build_segmentor

ALL_CONFIGS = sorted(
    p for p in glob.glob(osp.join(CONFIGS, "**", "*.py"), recursive=True) if "_base_" not in p
)


def build(cfg_or_path, **overrides):
    """``(cfg, model)`` through the one segmentor builder (SyncBN -> BN, no download)."""
    model = build_segmentor(cfg_or_path, cfg_options=overrides)
    return model.cfg, model


def test_config_list_complete():
    names = {osp.basename(p) for p in ALL_CONFIGS}
    for depth in (50, 101):
        for it in ("40k", "80k"):
            assert f"ann_r{depth}-d8_4xb2-{it}_cityscapes-512x1024.py" in names
            assert f"ann_r{depth}-d8_4xb2-{it}_cityscapes-769x769.py" in names
        for it in ("80k", "160k"):
            assert f"ann_r{depth}-d8_4xb4-{it}_ade20k-512x512.py" in names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: osp.relpath(p, CONFIGS))
def test_config_builds_and_runs(path):
    cfg = Config.fromfile(path)
    assert "ann_seg" in cfg.custom_imports["imports"]
    if cfg.train_dataloader.dataset.type != "LongRangeSyntheticDataset":
        # real data sets keep the real pretrained backbone reference
        assert str(cfg.model.pretrained).startswith("open-mmlab://resnet")
    cfg, model = build(cfg)
    assert not any("SyncBatchNorm" in type(m).__name__ for m in model.modules())
    model.eval()
    heads = cfg.model.decode_head  # a list for mmseg's cascades (OCRNet)
    num_classes = (heads[-1] if isinstance(heads, list) else heads).num_classes
    meta = dict(img_shape=(67, 83), pad_shape=(67, 83), ori_shape=(67, 83))
    with torch.no_grad():
        features = model.extract_feat(torch.randn(1, 3, 67, 83))
        logits = model.encode_decode(torch.randn(1, 3, 67, 83), [meta])
    assert features[-1].shape[-2:] == (9, 11)  # output stride 8
    assert logits.shape == (1, num_classes, 67, 83)
    assert torch.isfinite(logits).all()


DEMO = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")


@pytest.mark.parametrize(
    "key,value,named",
    [
        ("model.decode_head.in_channels", 512, "in_channels"),
        ("model.decode_head.in_channels", [256], "in_channels"),
        ("model.decode_head.in_channels", [256, 0], "in_channels"),
        ("model.decode_head.in_index", 3, "in_index"),
        ("model.decode_head.pool_sizes", (), "pool_sizes"),
        ("model.decode_head.pool_sizes", (1, 0), "pool size"),
        ("model.decode_head.key_channels", 0, "key_channels"),
        ("model.decode_head.value_channels", -4, "value_channels"),
        ("model.decode_head.share", "both", "share"),
        ("model.decode_head.afnb_share", "query_key", "share"),
        ("model.decode_head.fusion", "mul", "fusion"),
        ("model.decode_head.block_dropout", 1.5, "dropout"),
        ("model.decode_head.attention_backend", "cuda", "backend"),
    ],
)
def test_bad_head_values_fail_at_build(key, value, named):
    with pytest.raises(ModelLoadError) as info:
        build(DEMO, **{key: value})
    # the head's own ValueError, its message kept (mmengine's registry adds the class name)
    assert isinstance(info.value.__cause__, ValueError), repr(info.value.__cause__)
    assert named in str(info.value.__cause__), str(info.value)


def test_wrong_in_channels_for_backbone_named_at_forward():
    _, model = build(DEMO, **{"model.decode_head.in_channels": [256, 256]})
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.randn(1, 3, 32, 32), mode="tensor")
