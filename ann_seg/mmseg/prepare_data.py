"""``ann-seg prepare-data``: make a downloaded Cityscapes or ADE20K folder ready for the configs,
then check it.

Cityscapes ships its fine labels as polygons (``gtFine/<split>/<city>/*_gtFine_polygons.json``);
the configs read train ids (``*_gtFine_labelTrainIds.png``). They are drawn by cityscapesScripts
(``json2labelImg``'s ``createLabelImage`` with Cityscapes' ``labels.py``: the optional extra
``ann_seg[cityscapes]``), in parallel processes, each PNG written atomically (a hidden temporary
file renamed over the target: a kill leaves no half-written PNG, and the temporary files it
leaves are removed by the next run). A PNG newer than its polygons is kept (``force`` redraws).
File lists ``ROOT/{train,val,test}.txt`` (``<city>/<name>`` per line, as mmseg's converter
writes them) follow. ADE20K (ADEChallengeData2016) needs no conversion.

Then both checks run: ``data_check.check_dataset`` through the matching ann_seg config (the
data sets as training reads them) and ``layout_check`` (missing halves, unmatched pairs, label
ids or reduced annotations in place of the expected values).
"""

import io
import multiprocessing
import os
import os.path as osp
import re
from typing import List, Optional

from ann_seg.io import Progress, atomic_write_bytes, atomic_write_text

from .data_check import check_dataset, default_workers
from .layout_check import CITYSCAPES_SPLITS, CS_POLYGONS, CS_TRAIN_IDS, check_layout

try:  # the optional extra ann_seg[cityscapes]
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.helpers.labels import name2label
    from cityscapesscripts.preparation.json2labelImg import createLabelImage
except ImportError:  # prepare_cityscapes says how to install it
    Annotation = name2label = createLabelImage = None

CHECK_CONFIGS = {
    "cityscapes": "ann_seg::ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "ade20k": "ann_seg::ann/ann_r50-d8_4xb4-80k_ade20k-512x512.py",
}
SPLIT_DIRS = {
    "cityscapes": {"train": "leftImg8bit/train", "val": "leftImg8bit/val"},
    "ade20k": {"train": "images/training", "val": "images/validation"},
}
_TEMPORARY = re.compile(r"^\..*" + re.escape(CS_TRAIN_IDS) + r"\..*\.tmp$")


class PrepareDataError(RuntimeError):
    """The folder cannot be prepared (a missing extra, no data where the layout puts it)."""


def require_cityscapesscripts() -> None:
    if createLabelImage is None:
        raise PrepareDataError(
            "ann-seg prepare-data cityscapes needs cityscapesScripts (Cityscapes' labels and "
            "polygon drawing): pip install 'ann_seg[cityscapes]' (or pip install "
            "cityscapesscripts)"
        )


def polygons_to_train_ids(json_path: str, png_path: str) -> None:
    """Draw one ``*_gtFine_polygons.json`` as train ids into ``png_path``, atomically."""
    annotation = Annotation()
    annotation.fromJsonFile(json_path)
    for obj in annotation.objects:
        name = obj.label
        if name not in name2label and name.endswith("group"):
            name = name[: -len("group")]
        if name not in name2label and not obj.deleted:
            raise ValueError(f"unknown Cityscapes label {obj.label!r}")
    image = createLabelImage(annotation, "trainIds")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(png_path, buffer.getvalue())


def _convert(task: tuple) -> Optional[str]:
    """Worker: ``None``, or why the conversion failed."""
    try:
        polygons_to_train_ids(*task)
    except Exception as error:  # noqa: BLE001 - reported per file
        return f"{type(error).__name__}: {error}"
    return None


def _remove_temporaries(folder: str) -> int:
    """Temporary files a killed run left (never trusted: they are not ``*_labelTrainIds.png``)."""
    removed = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            if _TEMPORARY.match(name):
                os.remove(osp.join(directory, name))
                removed += 1
    return removed


def convert_cityscapes(
    root: str, workers: Optional[int] = None, force: bool = False, progress: bool = True
) -> dict:
    """Draw every ``*_gtFine_polygons.json`` under ``root/gtFine`` as ``*_labelTrainIds.png``
    (up to date ones kept unless ``force``) and write the split lists. Returns counts and
    ``failures`` (``(file, reason)``)."""
    require_cityscapesscripts()
    gt_root = osp.join(root, "gtFine")
    if not osp.isdir(gt_root):
        raise PrepareDataError(
            f"{gt_root} does not exist: unzip gtFine_trainvaltest.zip into {root}"
        )
    removed = _remove_temporaries(gt_root)
    tasks, kept, names = [], 0, {}
    for split in CITYSCAPES_SPLITS:
        split_names = []
        for directory, _, files in sorted(os.walk(osp.join(gt_root, split))):
            for name in sorted(files):
                if not name.endswith(CS_POLYGONS):
                    continue
                json_path = osp.join(directory, name)
                png_path = json_path[: -len(CS_POLYGONS)] + CS_TRAIN_IDS
                stem = osp.relpath(json_path, osp.join(gt_root, split))[: -len(CS_POLYGONS)]
                split_names.append(stem)
                done = osp.isfile(png_path) and os.stat(png_path).st_mtime_ns >= (
                    os.stat(json_path).st_mtime_ns
                )
                if done and not force:
                    kept += 1
                else:
                    tasks.append((json_path, png_path))
        if split_names:
            names[split] = split_names
    if not names:
        raise PrepareDataError(f"no *{CS_POLYGONS} under {gt_root}/{{train,val,test}}/<city>/")
    workers = default_workers() if workers is None else workers
    failures = []
    with Progress(len(tasks), enabled=progress) as bar:
        if workers > 0 and len(tasks) > 1:
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            with context.Pool(min(workers, len(tasks))) as pool:
                for task, error in zip(tasks, pool.imap(_convert, tasks, chunksize=4)):
                    if error:
                        failures.append((osp.relpath(task[0], root), error))
                    bar.update()
        else:
            for task in tasks:
                error = _convert(task)
                if error:
                    failures.append((osp.relpath(task[0], root), error))
                bar.update()
    for split, split_names in names.items():
        atomic_write_text(osp.join(root, f"{split}.txt"), "".join(f"{n}\n" for n in split_names))
    return {
        "converted": len(tasks) - len(failures),
        "kept": kept,
        "failures": failures,
        "lists": {split: len(n) for split, n in names.items()},
        "removed_temporaries": removed,
    }


def run_checks(
    layout: str, root: str, workers: Optional[int] = None, progress: bool = True
) -> dict:
    """``data_check`` through the layout's ann_seg config (``data_root`` = ``root``) on the
    splits present, and ``layout_check``. Returns ``{"data_check": report or None,
    "layout": problems}``."""
    workers = default_workers() if workers is None else workers
    splits = [s for s, d in SPLIT_DIRS[layout].items() if osp.isdir(osp.join(root, d))]
    report = None
    if splits:
        options = {f"{s}_dataloader.dataset.data_root": root for s in ("train", "val", "test")}
        report = check_dataset(
            CHECK_CONFIGS[layout], splits, workers=workers, progress=progress, cfg_options=options
        )
    return {"data_check": report, "layout": check_layout(layout, root, workers, progress)}


def prepare(
    layout: str,
    root: str,
    workers: Optional[int] = None,
    force: bool = False,
    check: bool = True,
    progress: bool = True,
) -> dict:
    """Convert (Cityscapes) and check ``root``; see the module docstring."""
    if not osp.isdir(root):
        raise PrepareDataError(f"{root} is not a folder")
    result: dict = {"layout": layout, "root": root}
    if layout == "cityscapes":
        result["conversion"] = convert_cityscapes(root, workers, force, progress)
    elif layout != "ade20k":
        raise PrepareDataError(f"layout must be cityscapes or ade20k, got {layout!r}")
    elif not osp.isdir(osp.join(root, "images")):
        raise PrepareDataError(
            f"{root} has no images/: give the ADEChallengeData2016 folder (images/, annotations/)"
        )
    if check:
        result.update(run_checks(layout, root, workers, progress))
    return result


def problem_count(result: dict) -> int:
    report = result.get("data_check") or {"problems": []}
    failures = (result.get("conversion") or {}).get("failures", [])
    return len(report["problems"]) + len(result.get("layout", [])) + len(failures)


def summary_lines(result: dict) -> List[str]:
    lines = []
    conversion = result.get("conversion")
    if conversion:
        lists = ", ".join(f"{s}.txt {n}" for s, n in conversion["lists"].items())
        lines.append(
            f"polygons -> labelTrainIds: {conversion['converted']} drawn, {conversion['kept']} "
            f"up to date, {len(conversion['failures'])} failed; lists: {lists}"
        )
        lines += [f"{f}: cannot draw ({reason})" for f, reason in conversion["failures"]]
    return lines
