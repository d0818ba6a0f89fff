"""Checkpoints that survive a kill, resume that picks only checkpoints that load, and the count
of training files skipped by the ``*OrSkip`` loading transforms.

``AtomicCheckpointHook`` (``default_hooks.checkpoint.type`` in every shipped config) is
mmengine's ``CheckpointHook`` with these changes: every checkpoint and the ``last_checkpoint``
pointer are written atomically (``ann_seg.io.atomic_write_with``: a temporary file beside the
target, fsync, ``os.replace``), so a kill leaves the previous file or the new one, never a
fragment; older checkpoints (``max_keep_ckpts``, the previous best) are deleted only after the
new one is in place; SIGINT and SIGTERM wait until a save is complete
(``interrupts.deferred_interrupts``); a best checkpoint records its score in its ``meta``
(``best``); before a resume (``before_run``) the newest checkpoint of the work dir that loads is
chosen (``select_resume_checkpoint``): a truncated or corrupt one (a best one too) is moved
aside to ``<name>.corrupt`` with one log line; and after it (``before_train``) the best
checkpoint is found again from the files on disk (``_rebuild_best``), so that one best remains
whatever the kill interrupted. The writes go through the file backend
``ann_seg_atomic_local`` (mmengine's ``LocalBackend`` with atomic ``put``), which the hook
passes to mmengine as ``backend_args`` for a local output folder.
"""

import glob
import logging
import os
import os.path as osp
import re
from typing import Any, Optional

from mmengine.dist import barrier, broadcast_object_list, get_world_size, is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from ann_seg.io import atomic_write_text, atomic_write_with
from ann_seg.io.interrupts import deferred_interrupts

from .checkpoint import CorruptCheckpointError, safe_load_checkpoint
from .transforms import skip_ledger

ATOMIC_BACKEND = "ann_seg_atomic_local"
POINTER = "last_checkpoint"
# the key of a best checkpoint's ``meta`` that holds what made it the best: ``key``, ``score``,
# ``rule`` ('greater'/'less'), ``step``
BEST_META = "best"


@register_backend(ATOMIC_BACKEND, force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are atomic (``atomic_write_with``)."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_with(os.fspath(filepath), lambda f: f.write(obj))

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
            self._rebuild_best(runner)

    # ------------------------------------------------------------ best checkpoints

    def _best_name(self, key: str, step: int) -> str:
        """mmengine's name of the best checkpoint for ``key`` at ``step``."""
        return f"best_{key}_{self.filename_tmpl.format(step)}".replace("/", "_")

    def _best_files(self, key: str) -> list:
        """``(step, path)`` of the best checkpoints of ``key`` in the output folder, by step."""
        prefix = re.escape(f"best_{key}_".replace("/", "_"))
        template = re.escape(self.filename_tmpl).replace(re.escape("{}"), r"(\d+)")
        pattern = re.compile(f"^{prefix}{template}$")
        found = []
        for path in glob.glob(osp.join(glob.escape(self.out_dir), "best_*")):
            match = pattern.match(osp.basename(path))
            if match and osp.isfile(path):
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _recorded_score(self, path: str, key: str) -> Optional[float]:
        """The score that made ``path`` the best for ``key``: the ``best`` entry of its meta
        (written by this hook), else the best score in its message hub (mmengine's own
        CheckpointHook, earlier versions of this one); None when unreadable."""
        single = len(self.key_indicators) == 1
        try:
            checkpoint = safe_load_checkpoint(path, map_location="cpu")
            best = (checkpoint.get("meta") or {}).get(BEST_META)
            if isinstance(best, dict) and best.get("key") == key and "score" in best:
                return float(best["score"])
            info = checkpoint["message_hub"]["runtime_info"]
            return float(info["best_score" if single else f"best_score_{key}"])
        except Exception:  # noqa: BLE001 - corrupt, unsafe, or no score recorded
            return None

    def _choose_best(self, runner, key: str, step: int) -> Optional[tuple]:
        """Main process: of the best files of ``key`` at or before the resumed ``step``, the
        one whose recorded score is best by the hook's rule (the earliest among equals); the
        other best files of ``key`` are renamed ``<name>.superseded``. Returns ``(path,
        score)``, ``(None, None)`` when there is no best file, ``None`` when best files exist
        but none has a readable score (left as they are)."""
        found = self._best_files(key)
        if not found:
            return (None, None)
        scored = [(path, self._recorded_score(path, key)) for s, path in found if s <= step]
        candidates = [(path, score) for path, score in scored if score is not None]
        if not candidates:
            names = ", ".join(osp.basename(p) for _, p in found)
            runner.logger.warning(
                f"no recorded {key} score in the best checkpoint(s) {names}: left as they are"
            )
            return None
        keep, best_score = candidates[0]
        for path, score in candidates[1:]:
            if self.is_better_than[key](score, best_score):
                keep, best_score = path, score
        for _, path in found:
            if path != keep:
                moved = f"{path}.superseded"
                os.replace(path, moved)
                runner.logger.warning(
                    f"{osp.basename(path)} moved aside to {osp.basename(moved)}: "
                    f"{osp.basename(keep)} is the best checkpoint ({key} {best_score:.4f})"
                )
        return (keep, best_score)

    def _rebuild_best(self, runner) -> None:
        """After a resume, the best-checkpoint bookkeeping from the files on disk, not from
        the resumed state: a kill after a new best was written and before the periodic
        checkpoint was written again with it (or before the previous best was removed) leaves
        a state that names an older best, or none, and the next best would not replace the
        file the state does not know. Per key, of the best files at or before the resumed step
        (the resumed run's own past) the one with the best score recorded in it is kept and
        made the hook's best (path and score); the others, and best files of later steps (a
        trajectory the resume discarded), are renamed ``<name>.superseded``, never deleted.
        Without a best file on disk, the next validation writes one."""
        if _is_remote(self.out_dir):
            return
        step = runner.epoch if self.by_epoch else runner.iter
        keys = [key for key in self.key_indicators if key != "auto"]
        chosen = {}
        if is_main_process():
            chosen = {key: self._choose_best(runner, key, step) for key in keys}
        if get_world_size() > 1:
            shared = [chosen]
            broadcast_object_list(shared)
            chosen = shared[0]
        single = len(self.key_indicators) == 1
        for key, result in chosen.items():
            if result is None:
                continue
            path, score = result
            rule = self.rules[self.key_indicators.index(key)]
            score_key = "best_score" if single else f"best_score_{key}"
            path_key = "best_ckpt" if single else f"best_ckpt_{key}"
            known = self.best_ckpt_path if single else self.best_ckpt_path_dict.get(key)
            if single:
                self.best_ckpt_path = path
            else:
                self.best_ckpt_path_dict[key] = path
            runner.message_hub.update_info(path_key, path)
            runner.message_hub.update_info(
                score_key, self.init_value_map[rule] if score is None else score
            )
            named = osp.basename(known) if known else "none"
            if path is not None and path != known:
                runner.logger.info(
                    f"best checkpoint {osp.basename(path)} ({key} {score:.4f}), found in "
                    f"{self.out_dir} (the resumed state named {named})"
                )
            elif path is None and known:
                runner.logger.warning(
                    f"no best {key} checkpoint in {self.out_dir} (the resumed state named "
                    f"{named}): the next validation writes one"
                )

    def _remove(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # deepspeed checkpoints are folders
            self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        # as mmengine's, but the oldest kept checkpoint goes after the new one is written, the
        # pointer is written atomically, and SIGINT/SIGTERM wait until all that is done
        with deferred_interrupts():
            self._save_checkpoint_deferred(runner, step, meta)

    def _save_checkpoint_deferred(self, runner, step, meta) -> None:
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
        # mmengine's, in another order: the new best is written (its score in its meta) before
        # the previous one is removed, and that before the periodic checkpoint is written again
        # with the new bookkeeping; SIGINT/SIGTERM wait until all that is done
        if not self.save_best:
            return
        with deferred_interrupts():
            self._save_best_deferred(runner, metrics)

    def _save_best_deferred(self, runner, metrics) -> None:
        step = runner.epoch if self.by_epoch else runner.iter
        kind = "epoch" if self.by_epoch else "iter"
        if "auto" in self.key_indicators:
            self._init_rule(self.rules, [list(metrics.keys())[0]])
        single = len(self.key_indicators) == 1
        updated = False
        for key, rule in zip(self.key_indicators, self.rules):
            score = metrics[key]
            score_key = "best_score" if single else f"best_score_{key}"
            path_key = "best_ckpt" if single else f"best_ckpt_{key}"
            previous = self.best_ckpt_path if single else self.best_ckpt_path_dict.get(key)
            best_score = runner.message_hub.runtime_info.get(score_key, self.init_value_map[rule])
            if score is None or not self.is_better_than[key](score, best_score):
                continue
            updated = True
            runner.message_hub.update_info(score_key, score)
            name = self._best_name(key, step)
            path = self.file_backend.join_path(self.out_dir, name)
            if single:
                self.best_ckpt_path = path
            else:
                self.best_ckpt_path_dict[key] = path
            runner.message_hub.update_info(path_key, path)
            best = dict(key=key, score=float(score), rule=rule, step=step)
            runner.save_checkpoint(
                self.out_dir,
                filename=name,
                file_client_args=self.file_client_args,
                save_optimizer=False,
                save_param_scheduler=False,
                meta={"epoch": runner.epoch, "iter": runner.iter, BEST_META: best},
                by_epoch=False,
                backend_args=self.backend_args,
            )
            runner.logger.info(
                f"The best checkpoint with {score:0.4f} {key} at {step} {kind} is saved to {name}."
            )
            if previous and previous != path and is_main_process():
                self._remove(previous)
                runner.logger.info(f"The previous best checkpoint {previous} is removed")
        # the periodic checkpoint written before this validation names the previous best
        if updated and self.last_ckpt is not None:
            self._save_checkpoint_with_step(
                runner, step, {"epoch": runner.epoch, "iter": runner.iter}
            )


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
