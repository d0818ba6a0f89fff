"""The one segmentor builder, packaged configs and the checkpoint-safety switch."""

import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.registry import MODELS as ENGINE_MODELS
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import CheckpointLoader

import ann_seg
from ann_seg.mmseg import (
    ModelLoadError,
    build_segmentor,
    install_checkpoint_safety,
    load_config,
    packaged_config,
    uninstall_checkpoint_safety,
)
from ann_seg.mmseg.checkpoint import checkpoint_safety_installed, load_from_local_safe
from ann_seg.mmseg.config import CONFIG_ROOT, replace_sync_bn

DEMO = "ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py"
FCN = "ann_seg::compare/fcn_r18-d8_1xb8-800it_synthetic-64x128.py"


def test_configs_ship_inside_the_package():
    assert CONFIG_ROOT.startswith(osp.dirname(ann_seg.__file__))
    path = packaged_config(DEMO)
    assert osp.isfile(path) and path == packaged_config(DEMO.split("::")[1])
    with pytest.raises(FileNotFoundError, match="no packaged config 'demo/nope.py'"):
        packaged_config("demo/nope.py")


def test_a_user_config_inherits_a_packaged_one(tmp_path):
    own = tmp_path / "my_ann.py"
    own.write_text(
        "_base_ = ['ann_seg::ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py']\n"
        "model = dict(decode_head=dict(num_classes=7))\n"
    )
    cfg = load_config(str(own))
    assert cfg.model.decode_head.type == "ANNSegHead" and cfg.model.decode_head.num_classes == 7
    assert cfg.work_dir == osp.join("./work_dirs", "my_ann")
    # the Runner builds through mmengine's root registry: the inherited dicts must name mmseg's
    # scope (mmengine tags them 'ann_seg', which is no registry)
    init_default_scope("mmseg")
    cfg.model.backbone.depth = 18
    cfg.model.decode_head.in_channels = [256, 512]
    cfg.model.auxiliary_head.in_channels = 256
    replace_sync_bn(cfg._cfg_dict)
    model = ENGINE_MODELS.build(cfg.model)
    assert type(model.decode_head).__name__ == "ANNSegHead"


def test_build_is_single_process_and_downloads_nothing():
    model = build_segmentor(
        "ann_seg::ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py",
        cfg_options={
            "model.backbone.depth": 18,
            "model.backbone.init_cfg": dict(
                type="Pretrained", checkpoint="https://example.invalid/r18.pth"
            ),
        },
    )
    norms = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
    assert "SyncBatchNorm" not in norms and "BatchNorm2d" in norms
    assert model.cfg.model.pretrained is None and model.cfg.model.backbone.init_cfg is None
    assert not model.training and model.dataset_meta["source"] == "config"
    assert len(model.dataset_meta["classes"]) == 19


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    fcn = build_segmentor(FCN)
    path = str(tmp_path / "fcn.pth")
    torch.save({"state_dict": fcn.state_dict(), "meta": {}}, path)
    with pytest.raises(ModelLoadError) as info:
        build_segmentor(DEMO, checkpoint=path)
    message = str(info.value)
    assert "does not match" in message and "missing keys" in message
    assert "decode_head." in message
    ann = build_segmentor(DEMO)
    own = str(tmp_path / "ann.pth")
    state = {f"module.{k}": v for k, v in ann.state_dict().items()}  # a DDP checkpoint
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": list("abcde")}}}, own)
    loaded = build_segmentor(DEMO, checkpoint=own)
    assert loaded.dataset_meta["classes"] == list("abcde")
    for key, value in ann.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_safety_is_idempotent_and_can_be_uninstalled():
    assert checkpoint_safety_installed()
    install_checkpoint_safety()
    install_checkpoint_safety()
    assert CheckpointLoader._get_checkpoint_loader("x.pth") is load_from_local_safe
    try:
        uninstall_checkpoint_safety()
        assert not checkpoint_safety_installed()
        assert CheckpointLoader._get_checkpoint_loader("x.pth").__module__.startswith("mmengine")
    finally:
        install_checkpoint_safety()
    assert CheckpointLoader._get_checkpoint_loader("x.pth") is load_from_local_safe


def test_the_environment_opts_out_of_checkpoint_safety():
    code = (
        "import ann_seg\n"
        "from mmengine.runner.checkpoint import CheckpointLoader\n"
        "print(CheckpointLoader._get_checkpoint_loader('x.pth').__module__)\n"
    )
    for value, expected in (("0", "mmengine.runner.checkpoint"), ("1", "ann_seg.mmseg.checkpoint")):
        env = dict(os.environ, ANN_SEG_SAFE_CHECKPOINTS=value)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert proc.stdout.strip() == expected, proc.stderr[-2000:]
