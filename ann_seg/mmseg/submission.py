"""Test-server submissions (``ann-seg test --format-only OUT``): one PNG per test image, named
and valued as the benchmark servers expect, each written atomically, and ``OUT.zip`` to upload.

* Cityscapes: ``<city>_<seq>_<frame>_leftImg8bit.png`` holding label ids (7 road ... 33
  bicycle; train ids through Cityscapes' table), the name of the image it segments.
* ADE20K (scene parsing): ``ADE_test_<n>.png`` holding class + 1 (1..150): the annotations'
  own convention, undone by ``reduce_zero_label`` in training.
* any other data set: the predicted class ids as they are.

A long test split resumes: images whose PNG exists are left out of the run (the data set's
``indices``), so a killed run continues where it stopped; the zip is rebuilt from all PNGs.
"""

import os
import os.path as osp
import zipfile
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
from mmengine.config import Config
from mmengine.evaluator import BaseMetric
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, METRICS

from ann_seg.io import atomic_path, atomic_write_bytes

from .cityscapes import train_id_to_id_lut

LAYOUTS = ("cityscapes", "ade20k", "raw")


def layout_of(dataset_cfg) -> str:
    """Submission format of a data set config: by its type (and ``reduce_zero_label``)."""
    kind = str(dataset_cfg.get("type", ""))
    if kind.endswith("CityscapesDataset"):
        return "cityscapes"
    if kind.endswith("ADE20KDataset") or dataset_cfg.get("reduce_zero_label"):
        return "ade20k"
    return "raw"


def submission_name(img_path: str) -> str:
    """The PNG's name: the image's name with ``.png`` (Cityscapes keeps ``_leftImg8bit``)."""
    return osp.splitext(osp.basename(img_path))[0] + ".png"


def encode_submission(pred: np.ndarray, layout: str) -> bytes:
    """A prediction (class ids, H x W) as the server's PNG."""
    if layout == "cityscapes":
        values = train_id_to_id_lut()[pred.astype(np.uint8)]
    elif layout == "ade20k":
        values = pred.astype(np.uint8) + np.uint8(1)
    else:
        values = pred.astype(np.uint8)
    ok, png = cv2.imencode(".png", values)
    if not ok:
        raise RuntimeError("cv2 failed to encode a submission PNG")
    return png.tobytes()


@METRICS.register_module()
class SubmissionMetric(BaseMetric):
    """Writes every prediction into ``out_dir`` in ``layout``'s format (module docstring);
    computes no metric."""

    def __init__(self, out_dir: str, layout: str = "raw", **kwargs):
        super().__init__(**kwargs)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.out_dir, self.layout = out_dir, layout

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze(0).cpu().numpy()
            name = submission_name(sample["img_path"])
            atomic_write_bytes(osp.join(self.out_dir, name), encode_submission(pred, self.layout))
            self.results.append(name)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        return {}


def list_test_images(cfg: Config) -> List[str]:
    """Image paths of the config's test set, in its order (no pipeline run)."""
    init_default_scope(cfg.get("default_scope", "mmseg"))
    dataset_cfg = dict(cfg.test_dataloader.dataset)
    dataset_cfg.pop("indices", None)
    dataset = DATASETS.build(dict(dataset_cfg, pipeline=[]))
    dataset.full_init()
    return [dataset.get_data_info(i)["img_path"] for i in range(len(dataset))]


def plan_submission(cfg: Config, out_dir: str) -> dict:
    """Point ``cfg``'s test evaluator at ``out_dir`` and its test set at the images without a
    PNG there. Returns ``layout``, ``total``, ``done`` and ``todo`` (counts)."""
    paths = list_test_images(cfg)
    names = [submission_name(p) for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"--format-only: two test images share a name under {out_dir}")
    todo = [i for i, n in enumerate(names) if not osp.isfile(osp.join(out_dir, n))]
    layout = layout_of(cfg.test_dataloader.dataset)
    cfg.test_dataloader.dataset.indices = todo
    cfg.test_evaluator = dict(type="SubmissionMetric", out_dir=out_dir, layout=layout)
    os.makedirs(out_dir, exist_ok=True)
    return {
        "layout": layout,
        "total": len(paths),
        "done": len(paths) - len(todo),
        "todo": len(todo),
        "names": names,
    }


def zip_submission(out_dir: str, names: Sequence[str], zip_path: Optional[str] = None) -> str:
    """``out_dir``'s PNGs (``names``) flat in ``<out_dir>.zip``, written atomically."""
    zip_path = zip_path or osp.normpath(out_dir) + ".zip"
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(names):
            z.write(osp.join(out_dir, name), arcname=name)
    return zip_path
