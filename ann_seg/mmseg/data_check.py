"""Scan a config's data sets for files that would break or silently spoil training.

Each split's data set is built from the config (mmseg's registry, ``pipeline=[]``) and every
sample goes through the config's own loading transforms (the ``Load*`` entries of its
pipeline; ``*OrSkip`` ones in their strict form), in parallel data loader workers. Reported:
unreadable images, missing or unreadable label maps, label maps that are not single-channel or
differ in size from their image, and label values outside the classes and the ignore index.
"""

import copy
import os
import os.path as osp
from typing import Any, Optional, Sequence

from mmengine.config import Config, ConfigDict
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, TRANSFORMS
from torch.utils.data import DataLoader, Dataset

from ann_seg.io import Progress, atomic_write_json, markdown_table

from .config import ConfigError, ConfigLike, import_custom_modules, load_config
from .transforms import label_map_problems, unreadable_reason

UNREADABLE_IMAGE = "unreadable image"
MISSING_LABEL = "missing label map"
UNREADABLE_LABEL = "unreadable label map"
_STRICT = {"LoadImageOrSkip": "LoadImageFromFile", "LoadAnnotationsOrSkip": "LoadAnnotations"}
_SKIP_ONLY_ARGS = ("num_classes", "ignore_index")


class DataCheckError(RuntimeError):
    """The data set check found problems; the message gives their count."""


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _leaf_datasets(node: Any, pipeline: Optional[list] = None) -> list:
    """``(dataset cfg, pipeline)`` of every data set under wrappers (``dataset``/``datasets``)."""
    pipeline = node.get("pipeline", pipeline)
    if node.get("datasets") is not None:
        return [leaf for child in node["datasets"] for leaf in _leaf_datasets(child, pipeline)]
    if node.get("dataset") is not None:
        return _leaf_datasets(node["dataset"], pipeline)
    return [(node, pipeline or [])]


def _loaders(pipeline: list) -> tuple:
    """The image and label loaders of ``pipeline`` (strict forms), defaults where absent."""
    image, label = dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")
    for step in pipeline:
        kind = step.get("type")
        if not isinstance(kind, str) or not kind.startswith("Load"):
            continue
        step = {k: v for k, v in step.items() if k not in _SKIP_ONLY_ARGS}
        step["type"] = _STRICT.get(kind, kind)
        if "Annotation" in kind:
            label = step
        elif "Image" in kind:
            image = step
    return TRANSFORMS.build(image), TRANSFORMS.build(label)


def check_sample(info: dict, image_loader, label_loader, num_classes, ignore_index) -> list:
    """``(file, kind, detail)`` for each problem of one sample (a data set's data info)."""
    problems = []
    image_path = info["img_path"]
    image_shape = None
    try:
        loaded = image_loader(copy.deepcopy(info))
        if loaded is None:
            raise ValueError("the loader returned nothing")
        image_shape = loaded["ori_shape"]
    except Exception as error:  # noqa: BLE001 - mmcv asserts, decoders raise anything
        problems.append((image_path, UNREADABLE_IMAGE, unreadable_reason(image_path, error)))
    label_path = info.get("seg_map_path")
    if not label_path:
        return problems
    if not osp.isfile(label_path):
        detail = f"for image {osp.basename(image_path)}"
        return problems + [(label_path, MISSING_LABEL, detail)]
    try:
        label = label_loader(dict(copy.deepcopy(info), seg_fields=[]))["gt_seg_map"]
    except Exception as error:  # noqa: BLE001
        return problems + [(label_path, UNREADABLE_LABEL, unreadable_reason(label_path, error))]
    for kind, detail in label_map_problems(label, image_shape, num_classes, ignore_index):
        problems.append((label_path, kind, detail))
    return problems


class _Scan(Dataset):
    def __init__(self, infos, image_loader, label_loader, num_classes, ignore_index):
        self.infos = infos
        self.args = (image_loader, label_loader, num_classes, ignore_index)

    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, index: int) -> list:
        return check_sample(self.infos[index], *self.args)


def _as_is(item):
    return item


def _ignore_index(cfg: Config) -> int:
    head = cfg.get("model", {}).get("decode_head") or {}
    head = head[0] if isinstance(head, (list, tuple)) else head
    return int(head.get("ignore_index", 255))


def _num_classes(cfg: Config, dataset) -> Optional[int]:
    classes = (getattr(dataset, "metainfo", None) or {}).get("classes")
    if classes:
        return len(classes)
    head = cfg.get("model", {}).get("decode_head") or {}
    head = head[0] if isinstance(head, (list, tuple)) else head
    return head.get("num_classes")


def _short(path: str, root: Optional[str]) -> str:
    if root and osp.abspath(path).startswith(osp.abspath(root) + os.sep):
        return osp.relpath(path, root)
    return path


def check_dataset(
    config: ConfigLike,
    splits: Sequence[str] = ("train", "val"),
    workers: Optional[int] = None,
    progress: bool = True,
    cfg_options: Optional[dict] = None,
) -> dict:
    """Check every sample of ``splits`` (``train``, ``val``, ``test``); returns the report:
    ``config``, ``splits`` (``{split: {"samples", "problems"}}``) and ``problems`` (one dict
    per problem: ``split``, ``index``, ``file``, ``relative`` (to the data root), ``kind``,
    ``detail``). Raises ``ConfigError``
    for a split the config has no data loader for, ``ValueError`` for ``workers < 0``."""
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    cfg = load_config(config, cfg_options, work_dir="")
    import_custom_modules(cfg)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    report: dict = {"config": cfg.filename or str(config), "splits": {}, "problems": []}
    for split in splits:
        loader_cfg = cfg.get(f"{split}_dataloader")
        if not isinstance(loader_cfg, (dict, ConfigDict)) or "dataset" not in loader_cfg:
            raise ConfigError(
                f"{report['config']} has no {split}_dataloader.dataset to check "
                f"(splits: train, val, test)"
            )
        samples = found = 0
        for dataset_cfg, pipeline in _leaf_datasets(loader_cfg.dataset):
            dataset = DATASETS.build(dict(dataset_cfg, pipeline=[]))
            dataset.full_init()
            infos = [dataset.get_data_info(i) for i in range(len(dataset))]
            image_loader, label_loader = _loaders(pipeline)
            scan = _Scan(
                infos, image_loader, label_loader, _num_classes(cfg, dataset), _ignore_index(cfg)
            )
            loader = DataLoader(
                scan, batch_size=None, num_workers=workers, collate_fn=_as_is, shuffle=False
            )
            root = getattr(dataset, "data_root", None)
            with Progress(len(scan), enabled=progress) as bar:
                for index, problems in enumerate(loader):
                    for path, kind, detail in problems:
                        report["problems"].append(
                            dict(
                                split=split,
                                index=samples + index,
                                file=osp.abspath(path),
                                relative=_short(path, root),
                                kind=kind,
                                detail=detail,
                            )
                        )
                        found += 1
                    bar.update()
            samples += len(scan)
        report["splits"][split] = {"samples": samples, "problems": found}
    return report


def format_report(report: dict) -> str:
    """The problems as one markdown table plus a summary line."""
    counts = ", ".join(f"{s} {v['samples']}" for s, v in report["splits"].items())
    problems = report["problems"]
    if not problems:
        return f"checked {counts} samples: no problems found"
    rows = [(p["split"], p["relative"], p["kind"], p["detail"]) for p in problems]
    table = markdown_table(["split", "file", "problem", "detail"], rows, align="llll")
    files = len({p["file"] for p in problems})
    return f"{table}\n\nchecked {counts} samples: {len(problems)} problem(s) in {files} file(s)"


def write_report(report: dict, path: str) -> None:
    atomic_write_json(path, report)
