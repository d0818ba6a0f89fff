"""Checkpoints that survive a kill, resume that picks only checkpoints that load, and the count
of training files skipped by the ``*OrSkip`` loading transforms.

``AtomicCheckpointHook`` (``default_hooks.checkpoint.type`` in every shipped config) is
mmengine's ``CheckpointHook`` with three changes: every checkpoint and the ``last_checkpoint``
pointer are written atomically (``ann_seg.io.atomic_write_with``: a temporary file beside the
target, fsync, ``os.replace``), so a kill leaves the previous file or the new one, never a
fragment; older checkpoints (``max_keep_ckpts``, the previous best) are deleted only after the
new one is in place; and before a resume (``before_run``) the newest checkpoint of the work dir
that loads is chosen (``select_resume_checkpoint``): a truncated or corrupt one (a best one
too) is moved aside to ``<name>.corrupt`` with one log line. The writes go through the file
backend ``ann_seg_atomic_local`` (mmengine's ``LocalBackend`` with atomic ``put``), which the
hook passes to mmengine as ``backend_args`` for a local output folder.
"""

import glob
import logging
import os
import os.path as osp
import re
from typing import Any, Optional

from mmengine.dist import barrier, is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from ann_seg.io import atomic_write_text, atomic_write_with

from .checkpoint import CorruptCheckpointError, safe_load_checkpoint
from .transforms import skip_ledger

ATOMIC_BACKEND = "ann_seg_atomic_local"
POINTER = "last_checkpoint"


@register_backend(ATOMIC_BACKEND, force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are atomic (``atomic_write_with``)."""

    def put(self, obj: bytes, filepath) -> None:
        path = os.fspath(filepath)
        atomic_write_with(path, lambda f: f.write(obj))

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        self.put(obj.encode(encoding), filepath)


def _is_remote(path: str) -> bool:
    return "://" in path


def _log(message: str, level: int = logging.INFO) -> None:
    print_log(message, logger="current", level=level)


def move_aside(path: str) -> str:
    """Rename ``path`` to ``<path>.corrupt`` (``.corrupt.1``, ... if taken); returns the name."""
    target, n = f"{path}.corrupt", 0
    while osp.exists(target):
        n += 1
        target = f"{path}.corrupt.{n}"
    os.replace(path, target)
    return target


def checkpoint_loads(path: str) -> bool:
    """Whether ``path`` loads (weights-only, ``safe_load_checkpoint``). A truncated or corrupt
    file (also: an entry failing its CRC-32, NaN or Inf weights) is moved aside to
    ``<path>.corrupt`` with one warning naming it; False then. A file refused as unsafe counts
    as loading: the load that follows refuses it with the reason."""
    try:
        safe_load_checkpoint(path, map_location="cpu")
    except CorruptCheckpointError as error:
        moved = move_aside(path)
        _log(
            f"corrupt checkpoint {path} moved aside to {osp.basename(moved)}: {error}",
            logging.WARNING,
        )
        return False
    except Exception:  # noqa: BLE001 - UnsafeCheckpointError etc.: resume reports it
        return True
    return True


_STEP = re.compile(r"^(?:iter|epoch)_(\d+)\.pth$")


def _step(path: str) -> int:
    found = _STEP.match(osp.basename(path))
    return int(found.group(1)) if found else -1


_BEST_STEP = re.compile(r"_(?:iter|epoch)_(\d+)\.pth$")


def _best_step(path: str) -> int:
    """The step of ``best_<key>_iter_<n>.pth`` (or ``..._epoch_<n>.pth``), else -1."""
    found = _BEST_STEP.search(osp.basename(path))
    return int(found.group(1)) if found else -1


def select_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The newest checkpoint of ``work_dir`` that loads, made the ``last_checkpoint`` target.

    Candidates: the pointer's target and the ``iter_*.pth``/``epoch_*.pth`` files beside it,
    highest step first (the pointer's target first among equals). Corrupt ones, and corrupt
    ``best_*.pth`` files there, are moved aside (``checkpoint_loads``). Without a candidate that
    loads, the pointer is removed and training starts afresh. A pointer to a remote URI is left
    to mmengine. Returns the chosen path or None."""
    pointer = osp.join(work_dir, POINTER)
    target = None
    if osp.isfile(pointer):
        with open(pointer, encoding="utf-8") as f:
            target = f.read().strip() or None
    if target is not None and _is_remote(target):
        return target
    target = osp.normpath(target) if target else None
    folder = osp.dirname(target) if target else work_dir
    found = glob.glob(osp.join(folder, "iter_*.pth")) + glob.glob(osp.join(folder, "epoch_*.pth"))
    found = {osp.normpath(p) for p in found} | ({target} if target else set())
    candidates = sorted(found, key=lambda p: (_step(p), p == target), reverse=True)
    for path in sorted(glob.glob(osp.join(folder, "best_*.pth"))):
        checkpoint_loads(path)  # a fragment of a killed non-atomic write: moved aside
    chosen = None
    for path in candidates:
        if not osp.isfile(path):
            _log(f"{pointer} names {path}, which does not exist", logging.WARNING)
        elif checkpoint_loads(path):
            chosen = path
            break
    if chosen is None:
        if osp.exists(pointer):
            os.remove(pointer)
            _log(f"no checkpoint in {folder} loads: training starts from iteration 0")
        return None
    if chosen != target:
        atomic_write_text(pointer, chosen)
        _log(f"resuming from {chosen}, the newest checkpoint that loads")
    return chosen


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) with atomic writes, deletion of replaced
    checkpoints only after the new one is in place, and a resume that skips (and moves aside)
    checkpoints that do not load. Local output folders only; a remote ``out_dir`` or one with
    ``backend_args`` of its own is written by mmengine as before."""

    def before_run(self, runner) -> None:
        # runs before Runner.load_or_resume; an explicit load_from is the user's choice
        if getattr(runner, "_resume", False) and getattr(runner, "_load_from", None) is None:
            if is_main_process():
                select_resume_checkpoint(runner.work_dir)
            barrier()

    def before_train(self, runner) -> None:
        if self.backend_args is None and self.file_client_args is None:
            out_dir = self.out_dir if self.out_dir is not None else runner.work_dir
            if not _is_remote(out_dir):
                self.backend_args = {"backend": ATOMIC_BACKEND}
        super().before_train(runner)
        if is_main_process() and not _is_remote(self.out_dir):
            stale = glob.glob(osp.join(self.out_dir, ".*.pth.*.tmp"))
            for path in stale:  # a write killed midway: never chosen, never loaded
                os.remove(path)
            if stale:
                runner.logger.info(f"removed {len(stale)} unfinished checkpoint write(s)")
        if getattr(runner, "_resume", False) and self.save_best is not None:
            self._reconcile_best(runner)

    def _reconcile_best(self, runner) -> None:
        """After a resume, one best checkpoint again.

        A kill between writing a new best and removing the previous one leaves two
        ``best_*.pth``, and the resumed state may name the older one (mmengine rewrites the
        periodic checkpoint with the new best only after writing it). Of the best files at or
        before the resumed step (the resumed run's own past), the one whose recorded score is
        best by the hook's rule is kept and made the hook's best; the others, and best files of
        steps after it (a trajectory the resume discarded), are renamed ``<name>.superseded``,
        never deleted, and so never picked as ``best_*.pth``."""
        if len(self.key_indicators) != 1 or not is_main_process() or _is_remote(self.out_dir):
            return
        found = sorted(glob.glob(osp.join(self.out_dir, "best_*.pth")))
        if len(found) < 2:
            return
        step = runner.epoch if self.by_epoch else runner.iter
        key = self.key_indicators[0]
        scored = []
        for path in found:
            best_step = _best_step(path)
            score = None
            if 0 <= best_step <= step:
                try:
                    info = safe_load_checkpoint(path)["message_hub"]["runtime_info"]
                    score = float(info["best_score"])
                except Exception:  # noqa: BLE001 - unreadable score: not a candidate
                    score = None
            scored.append((path, score))
        candidates = [(p, s) for p, s in scored if s is not None]
        if not candidates:
            return
        keep, best_score = candidates[0]
        for path, score in candidates[1:]:
            if self.is_better_than[key](score, best_score):
                keep, best_score = path, score
        for path, _ in scored:
            if path != keep:
                moved = f"{path}.superseded"
                os.replace(path, moved)
                runner.logger.warning(
                    f"{osp.basename(path)} moved aside to {osp.basename(moved)}: "
                    f"{osp.basename(keep)} is the best checkpoint ({key} {best_score:.4f})"
                )
        self.best_ckpt_path = keep
        runner.message_hub.update_info("best_ckpt", keep)
        runner.message_hub.update_info("best_score", best_score)

    def _remove(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # deepspeed checkpoints are folders
            self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        # as mmengine's, but the oldest kept checkpoint goes after the new one is written and
        # the pointer is written atomically
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, POINTER), self.last_ckpt)
        if outdated is not None:
            name = self.filename_tmpl.format(outdated)
            self._remove(self.file_backend.join_path(self.out_dir, name))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        # mmengine deletes the previous best before writing the new one: hide it from the
        # parent method, delete it here once the new one is in place
        if not self.save_best:
            return
        single = len(self.key_indicators) == 1
        previous: dict[str, Any] = (
            {"": self.best_ckpt_path} if single else dict(self.best_ckpt_path_dict)
        )
        if single:
            self.best_ckpt_path = None
        else:
            self.best_ckpt_path_dict = dict.fromkeys(previous)
        super()._save_best_checkpoint(runner, metrics)
        current = {"": self.best_ckpt_path} if single else self.best_ckpt_path_dict
        for key, old in previous.items():
            new = current.get(key)
            if new is None:  # not improved: keep the previous best
                current[key] = old
            elif old and old != new and is_main_process():
                self._remove(old)
                runner.logger.info(f"The previous best checkpoint {old} is removed")
        if single:
            self.best_ckpt_path = current[""]


def _uses_skip_transforms(dataset: Any) -> bool:
    """Whether ``dataset``'s pipeline (or a wrapped data set's) has an ``*OrSkip`` transform."""
    pipeline = getattr(dataset, "pipeline", None)
    if any(hasattr(t, "skip_ledger") for t in getattr(pipeline, "transforms", None) or ()):
        return True
    children = list(getattr(dataset, "datasets", None) or ())
    if getattr(dataset, "dataset", None) is not None:
        children.append(dataset.dataset)
    return any(_uses_skip_transforms(child) for child in children)


@HOOKS.register_module()
class SkippedSamplesHook(Hook):
    """Log how many training files the ``LoadImageOrSkip``/``LoadAnnotationsOrSkip``
    transforms skipped: every ``interval`` iterations when the count grew, and at the end of
    training. The count lives in shared memory, so the data loader's workers add to it."""

    priority = "LOW"

    def __init__(self, interval: int = 50):
        if interval < 1:
            raise ValueError(f"SkippedSamplesHook: interval must be >= 1, got {interval}")
        self.interval = interval
        # the baseline is taken now, when the Runner is built: its data loader workers start
        # (and may skip files) before any hook of the training is called
        self._ledger = skip_ledger()
        self._before = self._ledger.count
        self._logged = 0

    def skipped(self) -> int:
        """Files skipped since this hook was built."""
        return self._ledger.count - self._before

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval) and self.skipped() > self._logged:
            self._logged = self.skipped()
            runner.logger.warning(f"{self._logged} training file(s) skipped so far")

    def after_train(self, runner) -> None:
        count = self.skipped()
        if count:
            runner.logger.warning(
                f"training skipped {count} unreadable or invalid file(s), each logged above"
            )
        elif _uses_skip_transforms(runner.train_dataloader.dataset):
            runner.logger.info("training skipped no files: every image and label map loaded")
