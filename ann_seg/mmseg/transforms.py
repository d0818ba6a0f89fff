"""Loading transforms that skip a bad training file instead of ending the run.

``LoadImageOrSkip`` (mmcv's ``LoadImageFromFile``, same arguments) and
``LoadAnnotationsOrSkip`` (mmseg's ``LoadAnnotations`` plus ``num_classes``/``ignore_index``)
return ``None`` for a file that cannot be used, so mmengine's ``BaseDataset`` draws another
sample; each skipped file is logged once per process, with the reason and the running count,
shared with the data loader's workers (``SkippedSamplesHook`` logs it). Train pipelines only.
The synthetic-set configs use them; for the others see docs/reliability.md.
"""

import hashlib
import logging
import multiprocessing
import os
import os.path as osp
from typing import Optional, Sequence

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS

from ann_seg.io import ImageError, read_image

_SLOTS = 4096  # distinct paths remembered for logging once; beyond that a path may repeat


class SkipLedger:
    """The files skipped so far, in shared memory (inherited by the data loader's workers):
    a count of distinct paths and an open-addressing set of their hashes."""

    def __init__(self):
        self._hashes = multiprocessing.Array("q", _SLOTS)  # 0: empty slot
        self._count = multiprocessing.Value("q", 0, lock=False)

    @property
    def count(self) -> int:
        return int(self._count.value)

    def add(self, path: str) -> bool:
        """Record ``path``; True the first time it is seen."""
        key = int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "little")
        key = (key >> 1) or 1  # positive, non-zero
        with self._hashes.get_lock():
            for probe in range(_SLOTS):
                slot = (key + probe) % _SLOTS
                if self._hashes[slot] == key:
                    return False
                if self._hashes[slot] == 0:
                    self._hashes[slot] = key
                    break
            self._count.value += 1
        return True

    def __deepcopy__(self, memo):  # data set copies (subsets, wrappers) share the ledger
        return self


_ledger: Optional[SkipLedger] = None


def skip_ledger() -> SkipLedger:
    """The process's ledger, shared by every ``*OrSkip`` transform (made on first use, so
    before the data loader starts its workers)."""
    global _ledger
    if _ledger is None:
        _ledger = SkipLedger()
    return _ledger


def unreadable_reason(path: str, error: Optional[BaseException]) -> str:
    """Why ``path`` cannot be used: ``read_image``'s diagnosis, else the loader's error."""
    if osp.islink(path) and not osp.exists(path):
        return f"a link to {os.readlink(path)}, which does not exist"
    if not osp.isfile(path):
        return "file not found"
    try:
        read_image(path)
    except ImageError as problem:
        return str(problem)
    if error is None:
        return "the decoder returned nothing"
    return f"{type(error).__name__}: {str(error).replace(path, '').strip(': ') or 'failed'}"


class _SkipMixin:
    def _skip(self, kind: str, path: str, reason: str) -> None:
        if self.skip_ledger.add(path):
            print_log(
                f"skipped training {kind} {path}: {reason} "
                f"({self.skip_ledger.count} file(s) skipped so far)",
                logger="current",
                level=logging.WARNING,
            )


@TRANSFORMS.register_module()
class LoadImageOrSkip(_SkipMixin, LoadImageFromFile):
    """``LoadImageFromFile`` that returns ``None`` (the data set draws another sample) for an
    image that cannot be read or decoded, logging its path once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_ledger = skip_ledger()

    def transform(self, results: dict) -> Optional[dict]:
        path = results["img_path"]
        try:
            loaded = super().transform(results)
        except Exception as error:  # noqa: BLE001 - mmcv asserts, decoders raise anything
            self._skip("image", path, unreadable_reason(path, error))
            return None
        if loaded is None:  # ignore_empty=True
            self._skip("image", path, unreadable_reason(path, None))
        return loaded


@TRANSFORMS.register_module()
class LoadAnnotationsOrSkip(_SkipMixin, LoadAnnotations):
    """mmseg's ``LoadAnnotations`` that returns ``None`` for a label map that is missing or
    unreadable, is not single-channel, differs in size from the loaded image, or (with
    ``num_classes``) holds values outside ``0..num_classes-1`` and ``ignore_index``."""

    def __init__(self, *args, num_classes: Optional[int] = None, ignore_index: int = 255, **kwargs):
        super().__init__(*args, **kwargs)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"LoadAnnotationsOrSkip: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.skip_ledger = skip_ledger()

    def transform(self, results: dict) -> Optional[dict]:
        path = results.get("seg_map_path") or "(no label map)"
        try:
            results = super().transform(results)
        except Exception as error:  # noqa: BLE001
            self._skip("label map", path, unreadable_reason(path, error))
            return None
        problems = label_map_problems(
            results["gt_seg_map"],
            results.get("ori_shape"),  # the image as loaded, before any resize
            self.num_classes,
            self.ignore_index,
        )
        if problems:
            self._skip("label map", path, "; ".join(f"{k}: {d}" for k, d in problems))
            return None
        return results


SIZE_MISMATCH = "size mismatch"
NOT_SINGLE_CHANNEL = "label map not single-channel"
OUT_OF_RANGE = "label values out of range"


def label_map_problems(
    label: np.ndarray,
    image_shape: Optional[Sequence[int]],
    num_classes: Optional[int],
    ignore_index: int = 255,
) -> list:
    """``(kind, detail)`` for each thing wrong with a loaded label map: not single-channel, a
    size other than the image's, values outside ``0..num_classes-1`` and ``ignore_index``."""
    if label.ndim != 2:
        return [(NOT_SINGLE_CHANNEL, f"shape {tuple(label.shape)}, expected (H, W) class indices")]
    problems = []
    if image_shape is not None and tuple(label.shape) != tuple(image_shape[:2]):
        sizes = (
            f"label map {label.shape[1]}x{label.shape[0]}, image {image_shape[1]}x{image_shape[0]}"
        )
        problems.append((SIZE_MISMATCH, sizes))
    if num_classes is not None:
        values = np.unique(label)
        bad = values[(values >= num_classes) & (values != ignore_index)]
        if bad.size:
            shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
            limits = f"the classes 0..{num_classes - 1} and the ignore index {ignore_index}"
            problems.append((OUT_OF_RANGE, f"values {shown} outside {limits}"))
    return problems
