"""End to end through mmengine's Runner: train, checkpoint, resume, test; our tools and mmseg's."""

import os.path as osp
import re
import subprocess
import sys

import mmseg
import numpy as np
import pytest
import torch
from _helpers import CONFIGS, REPO, as_cli, run_tool, small_run_options
from mmseg.apis import inference_model
from mmseg.registry import DATASETS
from PIL import Image

from ann_seg.mmseg import build_segmentor, runner
from ann_seg.mmseg.checkpoint import safe_load_checkpoint

pytestmark = pytest.mark.slow

CITYSCAPES_CFG = osp.join(CONFIGS, "ann", "ann_r50-d8_4xb2-40k_cityscapes-512x1024.py")
ADE20K_CFG = osp.join(CONFIGS, "ann", "ann_r50-d8_4xb4-80k_ade20k-512x512.py")


def mmseg_tool(name):
    path = osp.join(osp.dirname(mmseg.__file__), ".mim", "tools", name)
    assert osp.isfile(path), f"mmseg ships no {path}"
    return path


def miou_from_log(text):
    found = re.findall(r"mIoU: ([0-9.]+|nan)", text)
    assert found, f"no mIoU printed:\n{text[-3000:]}"
    return float(found[-1])


def independent_miou(config, options, checkpoint):
    """mIoU of ``checkpoint`` on the config's test set, computed here with numpy: the model
    from our builder, each image through ``inference_model``, the ground truth read from
    disk, intersection and union summed over the set per class (classes never seen: NaN,
    left out, as mmseg's ``IoUMetric``)."""
    model = build_segmentor(config, cfg_options=options, checkpoint=checkpoint)
    dataset = DATASETS.build(model.cfg.test_dataloader.dataset)
    classes = model.decode_head.num_classes
    intersect, union = np.zeros(classes), np.zeros(classes)
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        pred = inference_model(model, info["img_path"]).pred_sem_seg.data[0].numpy()
        gt = np.array(Image.open(info["seg_map_path"])).astype(np.int64)
        if info["reduce_zero_label"]:
            gt = np.where(gt == 0, 255, gt - 1)
        valid = gt != 255
        for c in range(classes):
            p, g = (pred == c) & valid, (gt == c) & valid
            intersect[c] += (p & g).sum()
            union[c] += (p | g).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmean(intersect / union) * 100)


def saved_iteration(path):
    return safe_load_checkpoint(path)["meta"]["iter"]


@pytest.mark.parametrize("layout,tool_kind", [("cityscapes", "ann_seg"), ("ade20k", "mmseg")])
def test_train_resume_test(layout, tool_kind, tmp_path, request):
    """Both layouts and both tools (ours, and mmseg's own shipped tools/train.py, test.py)."""
    data_root = request.getfixturevalue(f"{layout}_root")
    config = CITYSCAPES_CFG if layout == "cityscapes" else ADE20K_CFG
    train_py = (
        osp.join(REPO, "tools", "train.py") if tool_kind == "ann_seg" else mmseg_tool("train.py")
    )
    test_py = (
        osp.join(REPO, "tools", "test.py") if tool_kind == "ann_seg" else mmseg_tool("test.py")
    )
    work_dir = str(tmp_path / "work")

    first = small_run_options(data_root, max_iters=2, layout=layout)
    run_tool(
        [train_py, config, "--work-dir", work_dir, "--cfg-options", *as_cli(first)],
        cwd=str(tmp_path),
    )
    assert saved_iteration(osp.join(work_dir, "iter_2.pth")) == 2

    # stop at 2, then --resume continues from the saved iteration to 4
    second = small_run_options(data_root, max_iters=4, layout=layout)
    proc = run_tool(
        [train_py, config, "--work-dir", work_dir, "--resume", "--cfg-options", *as_cli(second)],
        cwd=str(tmp_path),
    )
    log = proc.stdout + proc.stderr
    assert re.search(r"resumed epoch: \d+, iter: 2", log), log[-3000:]
    assert "Iter(train) [3/4]" in log and "Iter(train) [1/4]" not in log
    assert saved_iteration(osp.join(work_dir, "iter_4.pth")) == 4

    proc = run_tool(
        [
            test_py,
            config,
            osp.join(work_dir, "iter_4.pth"),
            "--work-dir",
            str(tmp_path / "test"),
            "--cfg-options",
            *as_cli(second),
        ],
        cwd=str(tmp_path),
    )
    miou = miou_from_log(proc.stdout + proc.stderr)
    expected = independent_miou(config, second, osp.join(work_dir, "iter_4.pth"))
    assert miou == pytest.approx(expected, abs=0.011), (miou, expected)


def test_api_train_then_test_writes_predictions(cityscapes_root, tmp_path):
    options = small_run_options(cityscapes_root, max_iters=2)
    work_dir = str(tmp_path / "work")
    model = runner.train(CITYSCAPES_CFG, work_dir=work_dir, cfg_options=options)
    assert isinstance(model, torch.nn.Module)
    metrics = runner.test(
        CITYSCAPES_CFG,
        osp.join(work_dir, "iter_2.pth"),
        work_dir=work_dir,
        out=str(tmp_path / "pred"),
        cfg_options=options,
    )
    assert "mIoU" in metrics
    written = sorted(p.name for p in (tmp_path / "pred").rglob("*.png"))
    assert len(written) == 4, written


def test_torchrun_two_processes_gloo(cityscapes_root, tmp_path):
    """Two CPU processes through torchrun (tools/dist_train.sh) train with DDP over gloo."""
    options = small_run_options(cityscapes_root, max_iters=2)
    options["train_dataloader.batch_size"] = 1
    env = dict(
        __import__("os").environ,
        PYTHON=sys.executable,
        PORT="29611",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.run(
        [
            "bash",
            osp.join(REPO, "tools", "dist_train.sh"),
            CITYSCAPES_CFG,
            "2",
            "--work-dir",
            str(tmp_path / "work"),
            "--verbose",  # the environment report on the console, as mmseg's tool prints it
            "--cfg-options",
            *as_cli(options),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert (
        "Distributed launcher: pytorch" in log or "'world_size': 2" in log or "World size: 2" in log
    ), log[-3000:]
    assert saved_iteration(str(tmp_path / "work" / "iter_2.pth")) == 2
