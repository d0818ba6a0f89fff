"""What ``ann-seg test`` reports beside mmseg's metrics, and how it evaluates and formats
Cityscapes and ADE20K.

* ``ClassTableIoUMetric``: mmseg's ``IoUMetric`` (same per-sample areas, same aAcc/mIoU/mAcc)
  that also accumulates the confusion matrix (rows: ground truth, columns: prediction; kept
  sparse per sample so a distributed run gathers little) and writes, into ``out_dir`` (default:
  the run's log folder, beside mmengine's metrics JSON), ``per_class.md``/``per_class.csv``
  (IoU, accuracy and pixels per class) and ``confusion_matrix.csv``/``confusion_matrix.png``
  (normalised per row, class names on both axes).
* ``OwnedCityscapesMetric``: mmseg's ``CityscapesMetric`` (cityscapesScripts' official
  evaluation on label-id PNGs) writing into a temporary folder it creates itself: mmseg's
  metric deletes its ``output_dir`` when it is garbage-collected, so it is never handed a
  folder ann_seg did not create.
* ``SubmissionMetric``: the test-server format (see ``submission``).
"""

import csv
import io
import os.path as osp
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.logging import MMLogger, print_log
from mmseg.evaluation.metrics import CityscapesMetric, IoUMetric, citys_metric
from mmseg.registry import METRICS

from ann_seg.io import atomic_write_text, markdown_table, pyplot, save_figure

CITYSCAPES_SCORES = (
    "averageScoreClasses",
    "averageScoreInstClasses",
    "averageScoreCategories",
    "averageScoreInstCategories",
)
TABLE_FILES = ("per_class.md", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png")


def sparse_confusion(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int):
    """``(flat indices, counts)`` of the confusion matrix of one sample (ignored pixels and
    labels outside the classes left out)."""
    keep = (label != ignore_index) & (label < num_classes)
    flat = label[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    cells, counts = np.unique(flat, return_counts=True)
    return cells, counts


def dense_confusion(sparse: Sequence[tuple], num_classes: int) -> np.ndarray:
    matrix = np.zeros(num_classes * num_classes, np.int64)
    for cells, counts in sparse:
        np.add.at(matrix, cells, counts)
    return matrix.reshape(num_classes, num_classes)


def per_class_rows(confusion: np.ndarray, classes: Sequence[str]) -> List[dict]:
    """IoU and accuracy (percent; NaN where a class has no pixels) per class."""
    tp = np.diag(confusion).astype(np.float64)
    gt, pred = confusion.sum(1), confusion.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = 100 * tp / (gt + pred - tp)
        acc = 100 * tp / gt
    return [
        {"class": str(name), "IoU": float(iou[i]), "Acc": float(acc[i]), "pixels": int(gt[i])}
        for i, name in enumerate(classes)
    ]


def _fmt(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.2f}"


def confusion_figure(confusion: np.ndarray, classes: Sequence[str]):
    """The matrix normalised per row (each ground-truth class sums to 1), names on both axes;
    cell values printed up to 30 classes, fonts and size grown with the class count."""
    plt = pyplot()
    n = len(classes)
    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    side = max(6.0, 0.16 * n + 2.5)
    font = max(3.0, min(9.0, 360.0 / max(n, 1) / 1.6))
    figure, axes = plt.subplots(figsize=(side + 1.2, side), dpi=150 if n <= 60 else 200)
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    axes.set_xticks(range(n), labels=list(classes), rotation=90, fontsize=font)
    axes.set_yticks(range(n), labels=list(classes), fontsize=font)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title("confusion matrix (each row normalised to 1)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if normalised[i, j] >= 0.005:
                    color = "white" if normalised[i, j] > 0.5 else "black"
                    axes.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center",
                              fontsize=font * 0.8, color=color)  # fmt: skip
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)
    figure.tight_layout()
    return figure


def write_class_tables(out_dir: str, confusion: np.ndarray, classes: Sequence[str]) -> List[str]:
    """The four files of ``TABLE_FILES`` into ``out_dir``, atomically; returns their paths."""
    rows = per_class_rows(confusion, classes)
    paths = [osp.join(out_dir, name) for name in TABLE_FILES]
    table = markdown_table(
        ["class", "IoU", "Acc", "pixels"],
        [(r["class"], _fmt(r["IoU"]), _fmt(r["Acc"]), r["pixels"]) for r in rows],
    )
    atomic_write_text(paths[0], table + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "IoU", "Acc", "pixels"])
    writer.writerows([r["class"], f"{r['IoU']:.4f}", f"{r['Acc']:.4f}", r["pixels"]] for r in rows)
    atomic_write_text(paths[1], buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["ground truth \\ prediction", *classes])
    writer.writerows([name, *map(int, row)] for name, row in zip(classes, confusion))
    atomic_write_text(paths[2], buffer.getvalue())
    figure = confusion_figure(confusion, classes)
    try:
        save_figure(figure, paths[3])
    finally:
        pyplot().close(figure)
    return paths


def _log_dir() -> Optional[str]:
    log_file = getattr(MMLogger.get_current_instance(), "log_file", None)
    return osp.dirname(log_file) if log_file else None


@METRICS.register_module()
class ClassTableIoUMetric(IoUMetric):
    """``IoUMetric`` plus the per-class table and the confusion matrix (module docstring).

    Args:
        out_dir: folder of the tables (default: the run's log folder).
        **kwargs: ``IoUMetric``'s arguments.
    """

    def __init__(self, out_dir: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.out_dir = out_dir
        self.written: List[str] = []

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        start = len(self.results)
        super().process(data_batch, data_samples)
        if self.format_only:
            return
        num_classes = len(self.dataset_meta["classes"])
        for offset, sample in enumerate(data_samples):
            pred = sample["pred_sem_seg"]["data"].squeeze().cpu().numpy()
            label = sample["gt_sem_seg"]["data"].squeeze().cpu().numpy()
            sparse = sparse_confusion(pred, label, num_classes, self.ignore_index)
            self.results[start + offset] = (*self.results[start + offset], sparse)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = super().compute_metrics([r[:4] for r in results])
        if self.format_only or not results:
            return metrics
        classes = list(self.dataset_meta["classes"])
        confusion = dense_confusion([r[4] for r in results], len(classes))
        out_dir = self.out_dir or _log_dir()
        if out_dir:
            self.written = write_class_tables(out_dir, confusion, classes)
            print_log(
                f"per-class table and confusion matrix: {out_dir}/{{{','.join(TABLE_FILES)}}}",
                logger="current",
            )
        return metrics


@METRICS.register_module()
class OwnedCityscapesMetric(CityscapesMetric):
    """mmseg's ``CityscapesMetric`` on a temporary folder it creates (and removes) itself;
    ``output_dir`` is not taken. Needs cityscapesScripts (``ann_seg[cityscapes]``) and the
    ground truth's ``*_gtFine_labelIds.png`` and ``*_gtFine_instanceIds.png``."""

    def __init__(self, **kwargs):
        if kwargs.pop("output_dir", None) is not None:
            raise ValueError("OwnedCityscapesMetric creates its own output folder")
        kwargs.pop("keep_results", None)
        kwargs.pop("format_only", None)
        self.owned_dir = tempfile.mkdtemp(prefix="ann_seg_cityscapes_eval_")
        super().__init__(output_dir=self.owned_dir, keep_results=False, **kwargs)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """cityscapesScripts' scores in percent: ``averageScoreClasses`` (the class mIoU the
        benchmark ranks by; mmseg's metric returns only the category scores), the instance
        iIoU and the category scores."""
        cs_eval = citys_metric.CSEval
        cs_eval.args.evalInstLevelScore = True
        cs_eval.args.evalPixelAccuracy = True
        cs_eval.args.predictionPath = osp.abspath(self.output_dir)
        cs_eval.args.JSONOutput = False
        cs_eval.args.quiet = True  # its per-image progress and tables
        predictions, ground_truth = zip(*results)
        scores = cs_eval.evaluateImgLists(list(predictions), list(ground_truth), cs_eval.args)
        keys = CITYSCAPES_SCORES
        return {f"cityscapes/{k}": 100 * float(scores[k]) for k in keys}


METRICS_CHOICES = ("iou", "cityscapes")


def configure_test_evaluator(cfg, metric: str = "iou", tables: bool = True) -> None:
    """``cfg.test_evaluator`` as ``ann-seg test`` runs it: mmseg's ``IoUMetric`` becomes
    ``ClassTableIoUMetric`` (``tables``); ``metric='cityscapes'`` adds the official Cityscapes
    evaluation (``OwnedCityscapesMetric``) on the same predictions."""
    if metric not in METRICS_CHOICES:
        raise ValueError(f"metric must be one of {METRICS_CHOICES}, got {metric!r}")
    evaluators = cfg.test_evaluator
    evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
    evaluators = [dict(e) for e in evaluators]
    for evaluator in evaluators:
        if tables and evaluator.get("type") in ("IoUMetric", "mmseg.IoUMetric"):
            evaluator["type"] = "ClassTableIoUMetric"
    if metric == "cityscapes":
        if citys_metric.CSEval is None:
            raise ImportError(
                "--metric cityscapes needs cityscapesScripts: pip install 'ann_seg[cityscapes]'"
            )
        evaluators.append(dict(type="OwnedCityscapesMetric"))
    cfg.test_evaluator = evaluators[0] if len(evaluators) == 1 else evaluators
