"""Checks of a Cityscapes or ADE20K folder in its published layout, beside ``data_check`` (which
scans a config's data sets through mmseg): what goes wrong while downloading and preparing them.

* missing halves: an image without its label (gtFine or annotations not unzipped) or a label
  without its image;
* unmatched pairs: a label whose image lies in another split or city;
* label values outside the classes: Cityscapes label ids (7 road ... 33 bicycle) in a train-id
  file, ADE20K annotations already reduced (0-based, 255 = other) where ann_seg's configs expect
  the original ones (``reduce_zero_label=True``: 0 = other, 1..150 the classes), or values past
  the last class.

Each problem is one ``{"file", "problem", "fix"}`` dict: one line in the report.
"""

import os
import os.path as osp
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

import cv2
import numpy as np

from ann_seg.io import Progress

from .cityscapes import IGNORE, LABEL_IDS, LABELS, NUM_TRAIN_IDS, id_to_train_id_lut

ADE20K_CLASSES = 150
ADE20K_SPLITS = {"training": "training", "validation": "validation"}
CITYSCAPES_SPLITS = ("train", "val", "test")
CS_IMAGE, CS_TRAIN_IDS, CS_POLYGONS = (
    "_leftImg8bit.png",
    "_gtFine_labelTrainIds.png",
    "_gtFine_polygons.json",
)
LABEL_NAMES = {label_id: name for label_id, name, _ in LABELS}


def _scan(folder: str, suffix: str) -> Dict[str, str]:
    """``relative path without suffix`` -> path of every ``*suffix`` file under ``folder``."""
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            if name.endswith(suffix) and not name.startswith("."):
                path = osp.join(directory, name)
                found[osp.relpath(path, folder)[: -len(suffix)]] = path
    return found


def _problem(root: str, path: str, problem: str, fix: str) -> dict:
    return {"file": osp.relpath(path, root), "problem": problem, "fix": fix}


def _pair_problems(
    root: str,
    images: Dict[str, str],
    labels: Dict[str, str],
    what: dict,
    unconverted=(),
    by_name: Optional[Dict[str, str]] = None,
) -> List[dict]:
    """Images without labels and labels without images (or with the image elsewhere:
    ``by_name``, image name -> path over every split)."""
    problems = []
    by_name = by_name or {osp.basename(key): path for key, path in images.items()}
    for key in sorted(set(images) - set(labels)):
        if key in unconverted:
            problems.append(_problem(root, images[key], what["unconverted"], what["convert_fix"]))
        else:
            problems.append(_problem(root, images[key], what["no_label"], what["label_fix"]))
    for key in sorted(set(labels) - set(images)):
        elsewhere = by_name.get(osp.basename(key))
        if elsewhere is not None:
            problems.append(
                _problem(
                    root,
                    labels[key],
                    f"unmatched pair: its image is {osp.relpath(elsewhere, root)} (another "
                    "split or folder)",
                    "move the label (or the image) so that both sit in the same split and city",
                )
            )
        else:
            problems.append(_problem(root, labels[key], what["no_image"], what["image_fix"]))
    return problems


def _values(path: str) -> Optional[np.ndarray]:
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    return None if label is None else np.unique(label)


def _map(function, paths: List[str], workers: int, progress: bool) -> list:
    """``function`` of every path in ``workers`` threads (OpenCV decodes without the GIL)."""
    with Progress(len(paths), enabled=progress) as bar, ThreadPoolExecutor(max(1, workers)) as ex:
        results = []
        for result in ex.map(function, paths):
            results.append(result)
            bar.update()
    return results


_REBUILD = "rebuild the train ids from the polygons: ann-seg prepare-data cityscapes ROOT --force"


def _cityscapes_label_problem(path: str) -> Optional[tuple]:
    """``(problem, fix)`` of one ``*_gtFine_labelTrainIds.png``: unreadable, values outside the
    train ids, or label ids (it differs from its ``*_gtFine_labelIds.png`` through Cityscapes'
    id -> train id table)."""
    train_ids = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if train_ids is None or train_ids.ndim != 2:
        return "unreadable or not a single-channel label map", _REBUILD
    values = [int(v) for v in np.unique(train_ids)]
    ids_path = path[: -len(CS_TRAIN_IDS)] + "_gtFine_labelIds.png"
    label_ids = cv2.imread(ids_path, cv2.IMREAD_UNCHANGED) if osp.isfile(ids_path) else None
    outside = [v for v in values if v >= NUM_TRAIN_IDS and v != IGNORE]
    looks_like_ids = set(values) <= LABEL_IDS and bool(outside)
    if label_ids is not None and label_ids.shape == train_ids.shape:
        expected = id_to_train_id_lut()[label_ids]
        if np.array_equal(train_ids, label_ids) and not np.array_equal(train_ids, expected):
            looks_like_ids = True
        elif not looks_like_ids and not np.array_equal(train_ids, expected):
            wrong = int((train_ids != expected).sum())
            return f"differs from its *_gtFine_labelIds.png in {wrong} pixels", _REBUILD
    if looks_like_ids:
        shown = ", ".join(f"{v} ({LABEL_NAMES.get(v, '?')})" for v in values[:4])
        return f"holds Cityscapes label ids ({shown}), not train ids 0..18", _REBUILD
    if outside:
        return f"values {outside[:6]} outside the train ids 0..18 and 255 (ignore)", _REBUILD
    return None


def check_cityscapes(root: str, workers: int = 4, progress: bool = True) -> List[dict]:
    """Problems of a Cityscapes root (``leftImg8bit/``, ``gtFine/``)."""
    problems = []
    what = {
        "no_label": "missing half: no gtFine label for this image",
        "label_fix": "unzip gtFine_trainvaltest.zip into ROOT (beside leftImg8bit/)",
        "no_image": "missing half: no leftImg8bit image for this label",
        "image_fix": "unzip leftImg8bit_trainvaltest.zip into ROOT, or delete the stray label",
        "unconverted": "its gtFine polygons are not converted to *_gtFine_labelTrainIds.png",
        "convert_fix": "ann-seg prepare-data cityscapes ROOT",
    }
    to_read = []
    images_of = {s: _scan(osp.join(root, "leftImg8bit", s), CS_IMAGE) for s in CITYSCAPES_SPLITS}
    by_name = {osp.basename(k): p for found in images_of.values() for k, p in found.items()}
    for split in CITYSCAPES_SPLITS:
        images = images_of[split]
        labels = _scan(osp.join(root, "gtFine", split), CS_TRAIN_IDS)
        polygons = _scan(osp.join(root, "gtFine", split), CS_POLYGONS)
        if split == "test":  # the test split's gtFine holds no real labels: no pairs expected
            labels = {k: v for k, v in labels.items() if k in images}
        problems += _pair_problems(root, images, labels, what, set(polygons), by_name)
        to_read += [labels[k] for k in sorted(labels) if split != "test"]
    for path, found in zip(to_read, _map(_cityscapes_label_problem, to_read, workers, progress)):
        if found:
            problems.append(_problem(root, path, *found))
    return problems


def _ade20k_value_problem(values: np.ndarray) -> Optional[tuple]:
    values = [int(v) for v in values]
    if IGNORE in values:
        return (
            "holds 255: an annotation already reduced (0-based, 255 = other); ann_seg's ADE20K "
            "configs reduce again (reduce_zero_label=True): class k would be read as k - 1",
            "use ADEChallengeData2016's original annotations (0 = other, 1..150), or set "
            "reduce_zero_label=False in the data set config",
        )
    outside = [v for v in values if v > ADE20K_CLASSES]
    if outside:
        return (
            f"values {outside[:6]} past the last class (1..150, 0 = other)",
            "use ADEChallengeData2016's annotations (SceneParsing's 150 classes), not the "
            "full ADE20K index",
        )
    return None


def check_ade20k(root: str, workers: int = 4, progress: bool = True) -> List[dict]:
    """Problems of an ADE20K root (ADEChallengeData2016: ``images/``, ``annotations/``)."""
    problems, to_read = [], []
    what = {
        "no_label": "missing half: no annotation for this image",
        "label_fix": "unzip ADEChallengeData2016.zip whole (images/ and annotations/)",
        "no_image": "missing half: no image for this annotation",
        "image_fix": "unzip ADEChallengeData2016.zip whole, or delete the stray annotation",
    }
    for split in ADE20K_SPLITS:
        images = _scan(osp.join(root, "images", split), ".jpg")
        labels = _scan(osp.join(root, "annotations", split), ".png")
        problems += _pair_problems(root, images, labels, what)
        to_read += [labels[k] for k in sorted(labels)]
    for path, values in zip(to_read, _map(_values, to_read, workers, progress)):
        found = (
            ("unreadable annotation", "unzip ADEChallengeData2016.zip again")
            if values is None
            else _ade20k_value_problem(values)
        )
        if found:
            problems.append(_problem(root, path, *found))
    return problems


def check_layout(layout: str, root: str, workers: int = 4, progress: bool = True) -> List[dict]:
    """``check_cityscapes`` or ``check_ade20k``."""
    checks = {"cityscapes": check_cityscapes, "ade20k": check_ade20k}
    if layout not in checks:
        raise ValueError(f"layout must be one of {sorted(checks)}, got {layout!r}")
    return checks[layout](root, workers, progress)


def format_problems(problems: List[dict]) -> str:
    """One line per problem: ``file: problem; fix: ...``."""
    return "\n".join(f"{p['file']}: {p['problem']}; fix: {p['fix']}" for p in problems)
