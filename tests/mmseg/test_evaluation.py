"""ann-seg test's per-class table and confusion matrix against numpy on the label files, and
the official Cityscapes evaluation against our mIoU, on the generated Cityscapes layout."""

import csv
import gc
import glob
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from _helpers import CONFIGS, randomize_, small_run_options

from ann_seg.mmseg import build_segmentor, runner
from ann_seg.mmseg.evaluation import OwnedCityscapesMetric, write_class_tables

pytestmark = pytest.mark.usefixtures("single_thread_module")
CONFIG = osp.join(CONFIGS, "ann", "ann_r50-d8_4xb2-40k_cityscapes-512x1024.py")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Seeded random weights whose predictions spread over several classes."""
    model = build_segmentor(CONFIG, cfg_options=small_run_options("unused"))
    randomize_(model, seed=3, std=0.3)
    path = str(tmp_path_factory.mktemp("ckpt") / "random.pth")
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


def read(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def test_tables_and_official_cityscapes_agree_with_numpy(cityscapes_root, checkpoint, tmp_path):
    options = small_run_options(cityscapes_root)
    work, out = tmp_path / "work", tmp_path / "pred"
    metrics = runner.test(
        CONFIG, checkpoint, work_dir=str(work), out=str(out), cfg_options=options,
        verbose=False, metric="cityscapes",
    )  # fmt: skip
    # the confusion matrix from the label files alone: predictions (--out) vs ground truth
    confusion = np.zeros((19, 19), np.int64)
    labels = sorted(glob.glob(f"{cityscapes_root}/gtFine/val/*/*_gtFine_labelTrainIds.png"))
    assert len(labels) == 4
    for label_path in labels:
        name = osp.basename(label_path).replace("_gtFine_labelTrainIds", "_leftImg8bit")
        pred, label = read(str(out / name)), read(label_path)
        keep = label != 255
        np.add.at(confusion, (label[keep], pred[keep]), 1)
    assert len(np.unique(confusion.sum(0).nonzero())) >= 2  # several classes predicted
    (run_dir,) = [d for d in glob.glob(f"{work}/*") if osp.isdir(d)]
    with open(osp.join(run_dir, "confusion_matrix.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0][1:4] == ["road", "sidewalk", "building"] and rows[14][0] == "car"
    np.testing.assert_array_equal(np.array([r[1:] for r in rows[1:]], np.int64), confusion)
    tp = np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = 100 * tp / (confusion.sum(0) + confusion.sum(1) - tp)
        acc = 100 * tp / confusion.sum(1)
    with open(osp.join(run_dir, "per_class.csv")) as f:
        table = list(csv.DictReader(f))
    assert [r["class"] for r in table][-1] == "bicycle" and len(table) == 19
    np.testing.assert_allclose([float(r["IoU"]) for r in table], iou, atol=1e-4)
    np.testing.assert_allclose([float(r["Acc"]) for r in table], acc, atol=1e-4)
    assert [int(r["pixels"]) for r in table] == confusion.sum(1).tolist()
    markdown = open(osp.join(run_dir, "per_class.md")).read()
    assert markdown.startswith("| class | IoU | Acc | pixels |") and "| - | 0 |" in markdown
    figure = read(osp.join(run_dir, "confusion_matrix.png"))
    assert figure is not None and min(figure.shape[:2]) > 600
    # mmseg's mIoU (rounded to 2 decimals) = the table's = cityscapesScripts' on label ids
    assert abs(metrics["mIoU"] - np.nanmean(iou)) < 0.006
    official = metrics["cityscapes/averageScoreClasses"]
    assert abs(official - np.nanmean(iou)) < 1e-3, (official, np.nanmean(iou))
    assert not glob.glob(f"{tmp_path}/**/ann_seg_cityscapes_eval_*", recursive=True)


def test_cityscapes_metric_owns_its_folder():
    with pytest.raises(ValueError, match="creates its own"):
        OwnedCityscapesMetric(output_dir="/tmp/somebody_elses_folder")
    metric = OwnedCityscapesMetric()
    folder = metric.owned_dir
    assert osp.isdir(folder) and osp.basename(folder).startswith("ann_seg_cityscapes_eval_")
    del metric
    gc.collect()
    assert not osp.exists(folder)


def test_confusion_figure_is_readable_at_150_classes(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"class name {i}" for i in range(150)]
    confusion = rng.integers(0, 50, (150, 150)) + np.diag(rng.integers(500, 1000, 150))
    paths = write_class_tables(str(tmp_path), confusion, classes)
    assert [osp.basename(p) for p in paths] == [
        "per_class.md", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png",
    ]  # fmt: skip
    figure = read(paths[3])
    # 150 names on each axis need room: at least ~12 pixels per row
    assert min(figure.shape[:2]) >= 150 * 12
    assert os.path.getsize(paths[2]) > 150 * 150
