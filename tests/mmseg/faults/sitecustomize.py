"""Fault injection for the subprocess tests of training: this folder goes first on the
``PYTHONPATH`` of a training process, whose interpreter then imports this file at start-up
(``site``); the faults come from environment variables, so the production code carries no test
hooks. Each pause is announced on stderr (``fault: paused ...``, after ``PAUSED``), so that a
test can signal the process at that point; a pause lasts ``FAULT_PAUSE_SECONDS`` (default 600)
in short sleeps, which a signal's Python handler interrupts only if it raises. The announcement
ends with the pids of the process's multiprocessing children (the data loader workers) as
``children=[...]``.

``FAULT_WRITE=GLOB[@N]:ACTION``: the N-th (default first) checkpoint write (``put`` of
ann_seg's atomic file backend) whose file name matches GLOB:
  ``pause-mid``   writes half of the bytes into the temporary file, then pauses
  ``pause-after`` pauses after the file is in place
  ``enospc``      fails with ``OSError(ENOSPC)`` before writing a byte
``FAULT_FORMAT_PAUSE=N``: pause inside mmengine's formatting of the config (yapf's
``FormatCode``, where mmengine turns any exception into "SyntaxError: Failed to format the
config file") during the N-th checkpoint save.
``FAULT_TRAIN_PAUSE=N``: pause after training iteration N.
``FAULT_RISING_SCORE=1``: register the ``RisingScore`` metric (``rising_score.py``).
"""

import errno
import fnmatch
import multiprocessing
import os
import os.path as osp
import sys
import time

PAUSED = "fault: paused"
_counts: dict = {}


def _pause(what: str) -> None:
    children = sorted(p.pid for p in multiprocessing.active_children())
    print(f"{PAUSED} {what} children={children}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + float(os.environ.get("FAULT_PAUSE_SECONDS", "600"))
    while time.monotonic() < deadline:
        time.sleep(0.05)


def _nth(kind: str) -> int:
    _counts[kind] = _counts.get(kind, 0) + 1
    return _counts[kind]


def _install_write_fault(spec: str) -> None:
    from ann_seg.io import atomic_write_with
    from ann_seg.mmseg import hooks

    target, _, action = spec.rpartition(":")
    pattern, _, nth = target.partition("@")
    original = hooks.AtomicLocalBackend.put

    def put(self, obj, filepath):
        path = os.fspath(filepath)
        if not fnmatch.fnmatch(osp.basename(path), pattern) or _nth("write") != int(nth or 1):
            return original(self, obj, path)
        if action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        if action == "pause-after":
            original(self, obj, path)
            _pause(f"after writing {path}")
            return None
        if action == "pause-mid":

            def write(f):
                f.write(obj[: len(obj) // 2])
                f.flush()
                _pause(f"writing {path}")
                f.write(obj[len(obj) // 2 :])

            return atomic_write_with(path, write)
        raise ValueError(f"FAULT_WRITE: unknown action {action!r}")

    hooks.AtomicLocalBackend.put = put


def _install_format_pause(nth: int) -> None:
    import mmengine.config.config as config_module
    from mmengine.runner import Runner

    original_save, original_format = Runner.save_checkpoint, config_module.FormatCode
    state = {"saving": 0}

    def save_checkpoint(self, *args, **kwargs):
        state["saving"] = _nth("save")
        try:
            return original_save(self, *args, **kwargs)
        finally:
            state["saving"] = 0

    def format_code(*args, **kwargs):
        if state["saving"] == nth:
            state["saving"] = 0
            _pause(f"formatting the config for checkpoint save {nth}")
        return original_format(*args, **kwargs)

    Runner.save_checkpoint = save_checkpoint
    config_module.FormatCode = format_code


def _install_train_pause(iteration: int) -> None:
    from mmengine.runner.loops import IterBasedTrainLoop

    original = IterBasedTrainLoop.run_iter

    def run_iter(self, data_batch):
        original(self, data_batch)
        if self._iter == iteration:
            _pause(f"after training iteration {iteration}")

    IterBasedTrainLoop.run_iter = run_iter


if os.environ.get("FAULT_RISING_SCORE"):
    import rising_score  # noqa: F401  (registers the metric)
if os.environ.get("FAULT_WRITE"):
    _install_write_fault(os.environ["FAULT_WRITE"])
if os.environ.get("FAULT_FORMAT_PAUSE"):
    _install_format_pause(int(os.environ["FAULT_FORMAT_PAUSE"]))
if os.environ.get("FAULT_TRAIN_PAUSE"):
    _install_train_pause(int(os.environ["FAULT_TRAIN_PAUSE"]))
