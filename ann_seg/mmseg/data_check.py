"""Scan a config's data sets for files that would break or silently spoil training.

Each split's data set is built from the config (mmseg's registry, ``pipeline=[]``) and every
sample goes through the config's own loading transforms (the ``Load*`` entries of its
pipeline; ``*OrSkip`` ones in their strict form), in parallel data loader workers. Reported:
unreadable images, missing or unreadable label maps, label maps that are not single-channel or
differ in size from their image, and label values outside the classes and the ignore index;
and the files a data set that lists its image folder leaves out without a word
(``unlisted_files``): image links that lead nowhere (mmengine lists regular files only) and
label maps whose image is gone. ``scan_training_files`` is the quick form (file system only,
nothing decoded) that training logs before it starts (``runner.train``).
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
MISSING_IMAGE = "missing image"
DANGLING_IMAGE = "dangling image link"
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


def _link_detail(path: str) -> Optional[str]:
    """For a symbolic link that leads nowhere: where it points."""
    if osp.islink(path) and not osp.exists(path):
        return f"a link to {os.readlink(path)}, which does not exist"
    return None


def _entries(folder: str, suffix: str) -> list:
    """Paths relative to ``folder`` of every non-folder entry whose name ends with ``suffix``,
    links that lead nowhere included (mmengine's ``list_dir_or_file`` skips those)."""
    found = []
    for root, _, names in os.walk(folder, followlinks=True):
        for name in names:
            if name.endswith(suffix):
                found.append(osp.relpath(osp.join(root, name), folder))
    return sorted(found)


def _listed_images(dataset) -> set:
    return {osp.normpath(dataset.get_data_info(i)["img_path"]) for i in range(len(dataset))}


def unlisted_files(dataset, listed: Optional[set] = None) -> list:
    """``(file, kind, detail)`` for each file that a data set listing its image folder (mmseg's
    ``BaseSegDataset`` without ``ann_file``) leaves out silently: an entry with the image suffix
    that is not a regular file (a link that leads nowhere, ``DANGLING_IMAGE``), and a label map
    whose image is gone (``MISSING_IMAGE``, the file named is the image). Other data sets: []."""
    prefix = getattr(dataset, "data_prefix", None)
    img_suffix = getattr(dataset, "img_suffix", None)
    ann_file = getattr(dataset, "ann_file", None)
    if not isinstance(prefix, dict) or not isinstance(img_suffix, str) or not img_suffix:
        return []
    if ann_file and not osp.isdir(ann_file):  # a list file: every listed sample is checked
        return []
    img_dir, ann_dir = prefix.get("img_path"), prefix.get("seg_map_path")
    seg_suffix = getattr(dataset, "seg_map_suffix", None)
    if not img_dir or not osp.isdir(img_dir):
        return []
    listed = _listed_images(dataset) if listed is None else listed
    problems, reported = [], set()
    for relative in _entries(img_dir, img_suffix):
        path = osp.join(img_dir, relative)
        if osp.normpath(path) in listed:
            continue
        reported.add(relative[: -len(img_suffix)])
        detail = _link_detail(path)
        if detail:
            problems.append((path, DANGLING_IMAGE, detail))
        else:
            problems.append((path, UNREADABLE_IMAGE, "not a regular file"))
    if ann_dir and isinstance(seg_suffix, str) and seg_suffix and osp.isdir(ann_dir):
        for relative in _entries(ann_dir, seg_suffix):
            stem = relative[: -len(seg_suffix)]
            image = osp.join(img_dir, stem + img_suffix)
            if stem not in reported and osp.normpath(image) not in listed:
                problems.append((image, MISSING_IMAGE, f"its label map {relative} is there"))
    return problems


def listed_file_problems(dataset) -> list:
    """``(file, kind, detail, index)`` for each listed sample whose image or label map is
    missing, a link that leads nowhere, or not readable: the file system only, nothing
    decoded (``check_sample`` decodes)."""
    problems = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        for key, missing, unreadable in (
            ("img_path", MISSING_IMAGE, UNREADABLE_IMAGE),
            ("seg_map_path", MISSING_LABEL, UNREADABLE_LABEL),
        ):
            path = info.get(key)
            if not path:
                continue
            if not osp.isfile(path):
                detail = _link_detail(path) or "file not found"
                problems.append((path, missing, detail, index))
            elif not os.access(path, os.R_OK):
                problems.append((path, unreadable, "not readable (permissions)", index))
    return problems


def _build_leaves(loader_cfg) -> list:
    """``(data set, pipeline)`` of each data set under a data loader config, built with no
    pipeline and fully initialised (the file list read)."""
    built = []
    for dataset_cfg, pipeline in _leaf_datasets(loader_cfg.dataset):
        dataset = DATASETS.build(dict(dataset_cfg, pipeline=[]))
        dataset.full_init()
        built.append((dataset, pipeline))
    return built


def scan_training_files(cfg: Config) -> dict:
    """The training set's files, on the file system only: ``samples`` (listed by the data
    sets), ``usable`` (of those, with an image and label map that exist and are readable),
    ``on_disk`` (``samples`` plus the files the data sets left out, ``unlisted_files``) and
    ``problems`` (``(relative file, kind, detail)``). Nothing decoded: seconds for Cityscapes.
    """
    init_default_scope(cfg.get("default_scope", "mmseg"))
    loader_cfg = cfg.get("train_dataloader")
    samples = usable = left_out = 0
    problems: list = []
    if not isinstance(loader_cfg, (dict, ConfigDict)) or "dataset" not in loader_cfg:
        return dict(samples=0, usable=0, on_disk=0, problems=[])
    for dataset, _ in _build_leaves(loader_cfg):
        root = getattr(dataset, "data_root", None)
        listed = listed_file_problems(dataset)
        unlisted = unlisted_files(dataset)
        samples += len(dataset)
        usable += len(dataset) - len({index for *_, index in listed})
        left_out += len(unlisted)
        for path, kind, detail, *_ in unlisted + listed:
            problems.append((_short(path, root), kind, detail))
    return dict(samples=samples, usable=usable, on_disk=samples + left_out, problems=problems)


def describe_training_files(scan: dict, limit: int = 20) -> list:
    """Log lines for ``scan_training_files``'s result; [] when nothing is wrong."""
    problems = scan["problems"]
    if not problems:
        return []
    left_out = scan["on_disk"] - scan["samples"]
    broken = scan["samples"] - scan["usable"]
    lines = [
        f"training set: {scan['usable']} of {scan['on_disk']} samples usable ({left_out} left "
        f"out by the data set, {broken} listed with a missing or unreadable file, which the "
        "*OrSkip loaders skip and the others fail on); ann-seg check-dataset lists every "
        f"problem; {len(problems)} file(s):"
    ]
    lines += [f"  {path}: {kind} ({detail})" for path, kind, detail in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return lines


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


def _problem(split, root, path, kind, detail, index) -> dict:
    return dict(
        split=split,
        index=index,
        file=osp.abspath(path),
        relative=_short(path, root),
        kind=kind,
        detail=detail,
    )


def check_dataset(
    config: ConfigLike,
    splits: Sequence[str] = ("train", "val"),
    workers: Optional[int] = None,
    progress: bool = True,
    cfg_options: Optional[dict] = None,
) -> dict:
    """Check every sample of ``splits`` (``train``, ``val``, ``test``); returns the report:
    ``config``, ``splits`` (``{split: {"samples", "problems", "left_out"}}``, ``left_out``:
    files the data set left out, ``unlisted_files``) and ``problems`` (one dict per problem:
    ``split``, ``index`` (None for a file left out), ``file``, ``relative`` (to the data root),
    ``kind``, ``detail``). Raises ``ConfigError``
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
        samples = left_out = 0
        for dataset, pipeline in _build_leaves(loader_cfg):
            infos = [dataset.get_data_info(i) for i in range(len(dataset))]
            root = getattr(dataset, "data_root", None)
            listed = {osp.normpath(info["img_path"]) for info in infos}
            for path, kind, detail in unlisted_files(dataset, listed):
                # not a sample: the data set left it out
                report["problems"].append(_problem(split, root, path, kind, detail, None))
                left_out += 1
            image_loader, label_loader = _loaders(pipeline)
            scan = _Scan(
                infos, image_loader, label_loader, _num_classes(cfg, dataset), _ignore_index(cfg)
            )
            loader = DataLoader(
                scan, batch_size=None, num_workers=workers, collate_fn=_as_is, shuffle=False
            )
            with Progress(len(scan), enabled=progress) as bar:
                for index, problems in enumerate(loader):
                    for path, kind, detail in problems:
                        problem = _problem(split, root, path, kind, detail, samples + index)
                        report["problems"].append(problem)
                    bar.update()
            samples += len(scan)
        found = sum(p["split"] == split for p in report["problems"])
        report["splits"][split] = {"samples": samples, "problems": found, "left_out": left_out}
    return report


def format_report(report: dict) -> str:
    """The problems as one markdown table plus a summary line."""
    counts = ", ".join(
        f"{s} {v['samples']}" + (f" (+{v['left_out']} left out)" if v.get("left_out") else "")
        for s, v in report["splits"].items()
    )
    problems = report["problems"]
    if not problems:
        return f"checked {counts} samples: no problems found"
    rows = [(p["split"], p["relative"], p["kind"], p["detail"]) for p in problems]
    table = markdown_table(["split", "file", "problem", "detail"], rows, align="llll")
    files = len({p["file"] for p in problems})
    return f"{table}\n\nchecked {counts} samples: {len(problems)} problem(s) in {files} file(s)"


def write_report(report: dict, path: str) -> None:
    atomic_write_json(path, report)
