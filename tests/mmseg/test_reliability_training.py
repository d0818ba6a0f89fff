"""Nothing lost, nothing wrong: checkpoints that survive SIGKILL, resume and the demo choosing
only checkpoints that load, and the class-weighted loss on label maps with ignore pixels."""

import glob
import importlib
import json
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _helpers import CONFIGS, REPO, as_cli, tiny_demo_options
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmseg.models.losses import CrossEntropyLoss

from ann_seg.demo import train_to_final
from ann_seg.io.interrupts import (
    Terminated,
    deferred_interrupts,
    termination_as_interrupt,
)
from ann_seg.mmseg import hooks as hooks_module
from ann_seg.mmseg import load_config
from ann_seg.mmseg.checkpoint import CorruptCheckpointError, safe_load_checkpoint
from ann_seg.mmseg.hooks import AtomicCheckpointHook, checkpoint_loads, select_resume_checkpoint
from ann_seg.mmseg.losses import WeightedCrossEntropyLoss
from ann_seg.mmseg.runner import test as run_test
from ann_seg.tools import cli

DEMO = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
TRAIN_PY = osp.join(REPO, "tools", "train.py")
# the fault injection of the training subprocesses (its sitecustomize.py) and RisingScore, a
# val metric that rises with the iteration, so that every validation saves a new best
FAULTS = osp.join(osp.dirname(osp.abspath(__file__)), "faults")
PAUSED = "fault: paused"


# ---------------------------------------------------------------- the loss


def weighted_ce_float64(logits, labels, weights, ignore=255):
    """sum w[y] * -log softmax(x)[y] / sum w[y] over non-ignored pixels, pixel by pixel."""
    x = logits.astype(np.float64)
    num, total = 0.0, 0.0
    for n, i, j in np.ndindex(labels.shape):
        y = labels[n, i, j]
        if y == ignore:
            continue
        z = x[n, :, i, j]
        log_p = z[y] - (z.max() + np.log(np.exp(z - z.max()).sum()))
        num += weights[y] * -log_p
        total += weights[y]
    return num / total


@pytest.fixture
def logits_and_labels():
    gen = np.random.default_rng(0)
    logits = gen.normal(size=(2, 5, 6, 7)).astype(np.float32) * 3
    labels = gen.integers(0, 5, size=(2, 6, 7))
    labels[0, :2] = 255  # ignore rows
    labels[1, :, -1] = 255  # padding column
    return logits, labels


def test_weighted_loss_matches_float64_over_non_ignored_pixels(logits_and_labels):
    logits, labels = logits_and_labels
    weights = [0.2, 1.0, 1.0, 0.5, 2.0]
    loss = WeightedCrossEntropyLoss(class_weight=weights, loss_weight=1.0)
    got = loss(torch.from_numpy(logits).double(), torch.from_numpy(labels), ignore_index=255)
    expected = weighted_ce_float64(logits, labels, weights)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    got32 = loss(torch.from_numpy(logits), torch.from_numpy(labels), ignore_index=255)
    assert got32.item() == pytest.approx(expected, rel=1e-5)
    # mmseg 1.2.2's CrossEntropyLoss cannot compute it at all (mmseg #3734)
    with pytest.raises(IndexError, match="255"):
        CrossEntropyLoss(class_weight=weights)(
            torch.from_numpy(logits), torch.from_numpy(labels), ignore_index=255
        )


def test_weighted_loss_reductions_gradients_and_errors(logits_and_labels):
    logits, labels = logits_and_labels
    x = torch.from_numpy(logits).double().requires_grad_()
    y = torch.from_numpy(labels)
    loss = WeightedCrossEntropyLoss(class_weight=[0.2, 1, 1, 1, 1], loss_weight=0.4)
    per_pixel = loss(x, y, reduction_override="none")
    assert per_pixel.shape == y.shape and (per_pixel[y == 255] == 0).all()
    assert loss(x, y, reduction_override="sum").item() == pytest.approx(per_pixel.sum().item())
    loss(x, y).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    every_pixel_ignored = loss(x, torch.full_like(y, 255))
    assert every_pixel_ignored.item() == 0.0
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        loss(x, torch.where(y == 3, 7, y))
    with pytest.raises(ValueError, match="3 class weights"):
        WeightedCrossEntropyLoss(class_weight=[1, 1, 1])(x, y)
    with pytest.raises(ValueError, match="use_sigmoid"):
        WeightedCrossEntropyLoss(use_sigmoid=True)


def test_demo_and_compare_configs_use_the_weighted_loss_and_every_config_atomic_saves():
    paths = sorted(glob.glob(osp.join(CONFIGS, "**", "*.py"), recursive=True))
    paths = [p for p in paths if "_base_" not in p]
    assert len(paths) > 30
    # parsing all takes half a minute: one of each kind, and every file's own override
    parsed = [p for p in paths if "/demo/" in p or "/compare/ann_" in p or "/compare/fcn_" in p]
    parsed += [p for p in paths if "ann_r50-d8_4xb2-40k_cityscapes-769x769" in p]
    parsed += [p for p in paths if "_r101-d8_" in p]  # they inherit the hook from R-50
    for path in paths:
        with open(path) as f:
            text = f.read()
        own = 'default_hooks = dict(checkpoint=dict(type="AtomicCheckpointHook"))'
        inherited = "_r101-d8_" in path and '_base_ = "./' in text  # from its R-50 twin
        assert own in text or inherited or "/demo/" in path or "/compare/" in path, path
    for path in parsed:
        cfg = Config.fromfile(path)
        assert cfg.default_hooks.checkpoint.type == "AtomicCheckpointHook", path
        if "/demo/" in path or "/compare/" in path:
            for head in ("decode_head", "auxiliary_head"):
                loss = cfg.model[head].loss_decode
                assert loss.type == "WeightedCrossEntropyLoss", (path, loss)
                assert loss.class_weight == [0.2, 1.0, 1.0, 1.0, 1.0]
            pipeline = [step.type for step in cfg.train_dataloader.dataset.pipeline]
            assert pipeline[:2] == ["LoadImageOrSkip", "LoadAnnotationsOrSkip"], path
            assert {"type": "SkippedSamplesHook"} in cfg.custom_hooks
        else:
            assert cfg.default_hooks.checkpoint.interval in (4000, 8000, 16000), path


# ---------------------------------------------------------------- choosing checkpoints


def _save(path, iteration):
    torch.save({"meta": {"iter": iteration}, "state_dict": {"w": torch.zeros(64)}}, path)


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_resume_choice_skips_and_moves_aside_truncated_checkpoints(tmp_path, monkeypatch):
    messages = []
    monkeypatch.setattr(hooks_module, "_log", lambda message, level=0: messages.append(message))
    work = tmp_path / "work"
    work.mkdir()
    for it in (2, 4, 6):
        _save(work / f"iter_{it}.pth", it)
    _truncate(work / "iter_6.pth")  # killed while mmengine wrote it in place
    _save(work / "best_mIoU_iter_2.pth", 2)
    _save(work / "best_mIoU_iter_6.pth", 6)
    _truncate(work / "best_mIoU_iter_6.pth")  # mmengine: old best deleted, new one cut short
    (work / "last_checkpoint").write_text(str(work / "iter_6.pth"))

    assert select_resume_checkpoint(str(work)) == str(work / "iter_4.pth")
    assert (work / "last_checkpoint").read_text() == str(work / "iter_4.pth")
    assert not (work / "iter_6.pth").exists() and (work / "iter_6.pth.corrupt").exists()
    assert (work / "best_mIoU_iter_6.pth.corrupt").exists()
    assert (work / "best_mIoU_iter_2.pth").exists()
    corrupt_lines = [m for m in messages if "corrupt checkpoint" in m]
    assert len(corrupt_lines) == 2, messages
    assert "best_mIoU_iter_6.pth" in corrupt_lines[0] and "iter_6.pth" in corrupt_lines[1]

    # reported once: the moved file is no candidate any more
    messages.clear()
    assert select_resume_checkpoint(str(work)) == str(work / "iter_4.pth")
    assert not [m for m in messages if "corrupt" in m], messages

    # a pointer to a file that is gone, and a newer intact file than the pointer names
    _save(work / "iter_8.pth", 8)
    (work / "last_checkpoint").write_text(str(work / "iter_99.pth"))
    assert select_resume_checkpoint(str(work)) == str(work / "iter_8.pth")

    # nothing loads: the pointer goes, training starts afresh
    for it in (2, 4, 8):
        _truncate(work / f"iter_{it}.pth")
    assert select_resume_checkpoint(str(work)) is None
    assert not (work / "last_checkpoint").exists()
    assert sorted(p.name for p in work.iterdir()) == [
        "best_mIoU_iter_2.pth",
        "best_mIoU_iter_6.pth.corrupt",
        "iter_2.pth.corrupt",
        "iter_4.pth.corrupt",
        "iter_6.pth.corrupt",
        "iter_8.pth.corrupt",
    ]


def test_checkpoint_loads_keeps_intact_files(tmp_path):
    _save(tmp_path / "iter_1.pth", 1)
    assert checkpoint_loads(str(tmp_path / "iter_1.pth"))
    assert (tmp_path / "iter_1.pth").exists()
    _truncate(tmp_path / "iter_1.pth")
    with pytest.raises(CorruptCheckpointError):
        safe_load_checkpoint(str(tmp_path / "iter_1.pth"))
    assert not checkpoint_loads(str(tmp_path / "iter_1.pth"))
    assert (tmp_path / "iter_1.pth.corrupt").exists()


# ---------------------------------------------------------------- SIGKILL mid-write

# (name, the fault: the write paused and killed, ``GLOB[@N]:pause-mid`` (half of it written) or
# ``...:pause-after`` (in place), iteration the resume starts from, files that must load right
# after the kill); the schedule: 4 iterations, checkpoint and validation every 2, a new best at
# each validation (RisingScore), max_keep_ckpts=2. A new best is written, then the previous
# best removed, then the periodic checkpoint written again with the new bookkeeping.
KILL_POINTS = [
    ("first checkpoint iter_2", "iter_2.pth@1:pause-mid", 0, []),
    ("first best", "best_mIoU_iter_2.pth:pause-mid", 2, ["iter_2.pth"]),
    (
        "right after the first best (iter_2.pth names no best)",
        "best_mIoU_iter_2.pth:pause-after",
        2,
        ["iter_2.pth", "best_mIoU_iter_2.pth"],
    ),
    (
        "final checkpoint iter_4",
        "iter_4.pth@1:pause-mid",
        2,
        ["iter_2.pth", "best_mIoU_iter_2.pth"],
    ),
    (
        "best replacing the previous best",
        "best_mIoU_iter_4.pth:pause-mid",
        4,
        ["iter_2.pth", "iter_4.pth", "best_mIoU_iter_2.pth"],
    ),
    (
        "right after the new best, before the previous one is removed",
        "best_mIoU_iter_4.pth:pause-after",
        4,
        ["iter_2.pth", "iter_4.pth", "best_mIoU_iter_2.pth", "best_mIoU_iter_4.pth"],
    ),
    (
        "final checkpoint rewritten after the best",
        "iter_4.pth@2:pause-mid",
        4,
        ["iter_2.pth", "iter_4.pth", "best_mIoU_iter_4.pth"],
    ),
]


def demo_options(data_root, max_iters=4):
    """``tiny_demo_options`` at the test data's size, validated and saved every 2 of 4
    iterations, each validation a new best."""
    options = tiny_demo_options(data_root, max_iters)
    options.update(
        {
            "model.data_preprocessor.size": (64, 128),
            "train_cfg.val_interval": 2,
            "default_hooks.checkpoint.interval": 2,
            "val_evaluator.type": "RisingScore",  # registered by faults/sitecustomize.py
        }
    )
    return options


def _env(**faults):
    """The environment of a training subprocess with faults/sitecustomize.py: RisingScore
    registered, ``faults`` (``write=...`` for ``FAULT_WRITE``, ...) injected."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", FAULT_RISING_SCORE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [FAULTS, env.get("PYTHONPATH")]))
    env.update({f"FAULT_{key.upper()}": str(value) for key, value in faults.items()})
    return env


def signal_at_pause(args, cwd, env, log_path, signum=signal.SIGKILL, timeout=300):
    """Start ``args``, wait until the injected pause is announced, send ``signum``; returns
    the exit status and the announcement. Killed with SIGKILL whatever happens."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with open(log_path) as f:
                paused = [line for line in f.read().splitlines() if PAUSED in line]
            if paused:
                break
            if proc.poll() is not None:
                raise AssertionError(
                    f"ended ({proc.returncode}) before the pause:\n" + _tail(log_path)
                )
            time.sleep(0.1)
        else:
            raise AssertionError("no pause announced:\n" + _tail(log_path))
        proc.send_signal(signum)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, paused[0]


def kill_mid_write(args, cwd, env, log_path):
    """Start ``args``, wait until the paused write is announced, SIGKILL it."""
    returncode, _ = signal_at_pause(args, cwd, env, log_path)
    assert returncode == -signal.SIGKILL


def _tail(path, n=4000):
    with open(path) as f:
        return f.read()[-n:]


def chosen_checkpoints_load(work):
    """Every checkpoint resume or the demo could pick (``*.pth``, the pointer's target) loads."""
    names = sorted(osp.basename(p) for p in glob.glob(osp.join(work, "*.pth")))
    for name in names:
        safe_load_checkpoint(osp.join(work, name))  # raises CorruptCheckpointError if truncated
    pointer = osp.join(work, "last_checkpoint")
    if osp.exists(pointer):
        with open(pointer) as f:
            safe_load_checkpoint(f.read().strip())
    return names


@pytest.mark.slow
def test_sigkill_while_saving_never_leaves_a_truncated_checkpoint(
    cityscapes_root, tmp_path, monkeypatch, single_thread
):
    """SIGKILL in the middle of every kind of checkpoint write (half the bytes written, the
    process paused by faults/sitecustomize.py), and right after a new best is written: afterwards
    every checkpoint that resume or the demo could choose loads, the previous best is still
    there, ``--resume`` finishes from the last complete checkpoint with one best checkpoint, and
    a demo-like run (``train_to_final`` + ``test``) finishes. With mmengine's own CheckpointHook
    the killed write is the file itself (truncated), and the previous best is deleted before the
    new one is written."""
    monkeypatch.syspath_prepend(FAULTS)
    importlib.import_module("rising_score")  # for the demo-like runs in this process
    options = demo_options(cityscapes_root)
    outcomes = []
    for name, fault, resumed_from, intact in KILL_POINTS:
        work = str(tmp_path / f"kill_{len(outcomes)}")
        args = [sys.executable, TRAIN_PY, DEMO, "--work-dir", work]
        args += ["--cfg-options", *as_cli(options)]
        kill_mid_write(args, str(tmp_path), _env(write=fault), f"{work}.killed.log")

        # everything choosable loads, nothing was lost; an interrupted write is a hidden
        # temporary file
        left = chosen_checkpoints_load(work)
        assert left == sorted(intact), (name, left)
        mid_write = fault.endswith(":pause-mid")
        fragments = glob.glob(osp.join(work, ".*.pth.*.tmp"))
        assert len(fragments) == int(mid_write), (name, fragments)
        assert all(re.split("[@:]", fault)[0] in f for f in fragments), fragments

        demo_work = work + "_demo"  # the same state for the demo-like run
        shutil.copytree(work, demo_work)
        pointer = osp.join(demo_work, "last_checkpoint")
        if osp.exists(pointer):
            with open(pointer) as f:
                target = f.read().strip()
            with open(pointer, "w") as f:
                f.write(target.replace(work, demo_work))

        resume = subprocess.run(
            args + ["--resume"],
            cwd=str(tmp_path),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        log = resume.stdout + resume.stderr
        assert resume.returncode == 0, (name, log[-4000:])
        if resumed_from:
            assert re.search(rf"resumed epoch: \d+, iter: {resumed_from}\b", log), log[-3000:]
        else:
            assert "Did not find last_checkpoint" in log, (name, log[-3000:])
        assert ("removed 1 unfinished checkpoint write(s)" in log) == mid_write, (name, log)
        assert not glob.glob(osp.join(work, ".*.tmp"))
        chosen_checkpoints_load(work)
        assert safe_load_checkpoint(osp.join(work, "iter_4.pth"))["meta"]["iter"] == 4
        # one best again: with two intact bests left (killed before the old one's removal)
        # the resume keeps the better (RisingScore: the later) and moves the other aside
        bests = sorted(osp.basename(p) for p in glob.glob(osp.join(work, "best_*.pth")))
        assert len(bests) == 1, (name, bests)
        recorded = safe_load_checkpoint(osp.join(work, bests[0]))["meta"]["best"]
        assert recorded["key"] == "mIoU" and f"_iter_{recorded['step']}.pth" in bests[0]
        if sum(n.startswith("best_") for n in intact) == 2:
            assert bests == ["best_mIoU_iter_4.pth"], (name, bests)
            assert osp.exists(osp.join(work, "best_mIoU_iter_2.pth.superseded"))
            assert "best_mIoU_iter_2.pth moved aside to best_mIoU_iter_2.pth.superseded" in log

        cfg = load_config(DEMO, options, demo_work)
        final = train_to_final(cfg)
        metrics = run_test(cfg, final, cfg_options={"test_dataloader.num_workers": 0})
        assert "mIoU" in metrics
        assert safe_load_checkpoint(final)["meta"]["iter"] == 4
        chosen_checkpoints_load(demo_work)
        outcomes.append(
            {
                "kill point": name,
                "left after the kill": left,
                "resumed from": resumed_from,
                "resume": "finished",
                "demo-like run": "finished, trained" if "iter_4.pth" not in left else "finished",
            }
        )

    # a truncated final checkpoint left by an earlier (non-atomic) writer: the demo moves it
    # aside and trains again from the newest checkpoint that loads instead of failing
    _truncate(final)
    final = train_to_final(load_config(DEMO, options, demo_work))
    assert safe_load_checkpoint(final)["meta"]["iter"] == 4
    assert osp.exists(final + ".corrupt")
    outcomes.append({"kill point": "truncated iter_4.pth (old writer)", "demo-like run": "ok"})
    print("\nkill points:", len(KILL_POINTS), json.dumps(outcomes, indent=1))


def _bests(work):
    return sorted(osp.basename(p) for p in glob.glob(osp.join(work, "best_*.pth")))


@pytest.mark.slow
def test_one_best_checkpoint_after_a_kill_right_after_a_new_best_and_enospc(
    cityscapes_root, tmp_path
):
    """QA's case: 8 iterations, validated and saved every 4; SIGKILL right after "The best
    checkpoint ... at 4 iter is saved" (iter_4.pth, written before the validation, names no
    best), ``--resume`` with ENOSPC at the iter-8 save that follows the new best, ``--resume``
    again: best_mIoU_iter_4.pth and best_mIoU_iter_8.pth never both remain. The resume finds
    best_mIoU_iter_4.pth and its score (its meta) on disk, so the new best replaces it."""
    options = demo_options(cityscapes_root, max_iters=8)
    options.update({"train_cfg.val_interval": 4, "default_hooks.checkpoint.interval": 4})
    work = str(tmp_path / "work")
    args = [sys.executable, TRAIN_PY, DEMO, "--work-dir", work, "--cfg-options", *as_cli(options)]
    fault = "best_mIoU_iter_4.pth:pause-after"
    kill_mid_write(args, str(tmp_path), _env(write=fault), str(tmp_path / "killed.log"))
    assert _bests(work) == ["best_mIoU_iter_4.pth"]
    iter_4 = safe_load_checkpoint(osp.join(work, "iter_4.pth"))["message_hub"]["runtime_info"]
    assert "best_ckpt" not in iter_4  # the kill came before the rewrite naming the new best

    def resume(**faults):
        proc = subprocess.run(
            args + ["--resume"],
            cwd=str(tmp_path),
            env=_env(**faults),
            capture_output=True,
            text=True,
            timeout=600,
        )
        return proc.returncode, proc.stdout + proc.stderr

    # the disk is full when iter_8.pth is written again after the new best: the run fails,
    # the new best is in place and the previous one already gone
    returncode, log = resume(write="iter_8.pth@2:enospc")
    assert returncode != 0 and "No space left on device" in log, log[-3000:]
    assert _bests(work) == ["best_mIoU_iter_8.pth"], log[-3000:]
    assert "best checkpoint best_mIoU_iter_4.pth (mIoU 3.0000), found in" in log, log[-3000:]
    # resumed from iter_8.pth of the first write, which names best_mIoU_iter_4.pth
    returncode, log = resume()
    assert returncode == 0, log[-3000:]
    assert re.search(r"resumed epoch: \d+, iter: 8\b", log), log[-3000:]
    assert "best checkpoint best_mIoU_iter_8.pth (mIoU 7.0000), found in" in log, log[-3000:]
    assert _bests(work) == ["best_mIoU_iter_8.pth"]
    assert not glob.glob(osp.join(work, "*.superseded")) and not glob.glob(osp.join(work, ".*"))
    best = safe_load_checkpoint(osp.join(work, "best_mIoU_iter_8.pth"))["meta"]["best"]
    assert best == {"key": "mIoU", "score": 7.0, "rule": "greater", "step": 8}


# ---------------------------------------------------------------- rebuilding the best in-process


class _FakeRunner:
    """What ``AtomicCheckpointHook.before_train`` reads of a Runner that resumed."""

    def __init__(self, work_dir, iteration, runtime_info=None):
        self.work_dir = str(work_dir)
        self.iter, self.epoch, self._resume = iteration, 0, True
        self.message_hub = MessageHub.get_instance(f"rebuild-{id(self)}")
        for key, value in (runtime_info or {}).items():
            self.message_hub.update_info(key, value)
        self.logger = MMLogger.get_instance(f"rebuild-{id(self)}")
        self.messages = []
        self.logger.info = self.logger.warning = self.messages.append


def _best_file(path, score=None, key="mIoU", hub_score=None):
    meta = {"iter": 0}
    if score is not None:
        meta["best"] = {"key": key, "score": score, "rule": "greater", "step": 0}
    checkpoint = {"meta": meta, "state_dict": {"w": torch.zeros(4)}}
    if hub_score is not None:  # mmengine's own hook: the score only in the message hub
        checkpoint["message_hub"] = {"runtime_info": {"best_score": hub_score}}
    torch.save(checkpoint, path)


def test_resume_rebuilds_the_best_from_the_files_on_disk(tmp_path):
    """The resumed state names no best (killed right after the first best) or a removed one;
    the hook's best afterwards is the best file at or before the resumed step with the best
    recorded score (meta, else an mmengine message hub); later ones and worse ones are moved
    aside; with no best file, the next validation writes one."""
    _best_file(tmp_path / "best_mIoU_iter_2.pth", score=0.5)
    _best_file(tmp_path / "best_mIoU_iter_4.pth", score=0.7)
    _best_file(tmp_path / "best_mIoU_iter_6.pth", score=0.9)  # after the resumed step
    _best_file(tmp_path / "best_aAcc_iter_4.pth", score=0.1, key="aAcc")  # another key's
    runner = _FakeRunner(tmp_path, 4, {"best_ckpt": str(tmp_path / "best_mIoU_iter_1.pth")})
    hook = AtomicCheckpointHook(interval=2, by_epoch=False, save_best="mIoU")
    hook.before_train(runner)
    assert hook.best_ckpt_path == str(tmp_path / "best_mIoU_iter_4.pth")
    assert runner.message_hub.get_info("best_score") == 0.7
    assert runner.message_hub.get_info("best_ckpt") == hook.best_ckpt_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best_aAcc_iter_4.pth",
        "best_mIoU_iter_2.pth.superseded",
        "best_mIoU_iter_4.pth",
        "best_mIoU_iter_6.pth.superseded",
    ]
    assert any("the resumed state named best_mIoU_iter_1.pth" in m for m in runner.messages)

    # one best file, the state naming none; its score only in an mmengine message hub
    other = tmp_path / "other"
    other.mkdir()
    _best_file(other / "best_mIoU_iter_2.pth", hub_score=0.25)
    runner = _FakeRunner(other, 2)
    hook = AtomicCheckpointHook(interval=2, by_epoch=False, save_best="mIoU")
    hook.before_train(runner)
    assert hook.best_ckpt_path == str(other / "best_mIoU_iter_2.pth")
    assert runner.message_hub.get_info("best_score") == 0.25

    # the state names a best file that is gone: none, and any score beats -inf again
    empty = tmp_path / "empty"
    empty.mkdir()
    named = str(empty / "best_mIoU_iter_2.pth")
    runner = _FakeRunner(empty, 2, {"best_ckpt": named, "best_score": 0.8})
    hook = AtomicCheckpointHook(interval=2, by_epoch=False, save_best="mIoU")
    hook.before_train(runner)
    assert hook.best_ckpt_path is None
    assert runner.message_hub.get_info("best_score") == -float("inf")
    assert any("the next validation writes one" in m for m in runner.messages)


# ---------------------------------------------------------------- SIGINT and SIGTERM


def test_deferred_interrupts_hold_a_signal_until_the_write_is_done(capsys):
    """In-process: a SIGINT inside ``deferred_interrupts`` acts when the block ends (a second
    one at once); SIGTERM inside ``termination_as_interrupt`` raises ``Terminated``; the
    tools print one line with 130 or 143, also for mmengine's SyntaxError around a Ctrl-C."""
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            done.append("written")
    assert done == ["written"]
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            done.append("never")
    assert done == ["written"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with termination_as_interrupt(), deferred_interrupts():
            signal.raise_signal(signal.SIGTERM)
            done.append("written")
    assert signal.getsignal(signal.SIGTERM) is before

    def terminated(argv):
        raise Terminated()

    def formatting_interrupted(argv):
        try:
            raise KeyboardInterrupt
        except BaseException:
            raise SyntaxError("Failed to format the config file, please check: ...") from None

    assert cli.run(terminated, []) == 143
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"
    assert cli.run(formatting_interrupted, []) == 130
    assert capsys.readouterr().err == "interrupted\n"


# (signal, where the process is paused when it arrives, exit status, last line of stderr)
SIGNAL_POINTS = [
    ("SIGINT", "format", 130, "interrupted"),
    ("SIGTERM", "format", 143, "terminated (SIGTERM)"),
    ("SIGINT", "train", 130, "interrupted"),
    ("SIGTERM", "train", 143, "terminated (SIGTERM)"),
]


def _running(pid):
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not osp.isdir("/proc"), reason="reads /proc for the workers")
@pytest.mark.parametrize("name, where, status, last_line", SIGNAL_POINTS)
def test_sigint_and_sigterm_stop_training_cleanly(
    cityscapes_root, tmp_path, name, where, status, last_line
):
    """SIGINT or SIGTERM while mmengine formats the config for the first checkpoint save
    (where mmengine turned Ctrl-C into "SyntaxError: Failed to format the config file" and a
    config dump), or between training iterations with 2 persistent data loader workers: one
    line, exit status 130 or 143, the checkpoint written completely or not at all, no worker
    left running."""
    options = demo_options(cityscapes_root)
    options.update({"train_dataloader.num_workers": 2, "train_dataloader.persistent_workers": True})
    work = str(tmp_path / "work")
    args = [sys.executable, TRAIN_PY, DEMO, "--work-dir", work, "--cfg-options", *as_cli(options)]
    if where == "format":  # a short pause: the save completes, then the signal acts
        env = _env(format_pause=1, pause_seconds=2)
    else:
        env = _env(train_pause=1, pause_seconds=120)
    log_path = str(tmp_path / "run.log")
    returncode, paused = signal_at_pause(
        args, str(tmp_path), env, log_path, signum=getattr(signal, name)
    )
    workers = [int(p) for p in re.findall(r"\d+", paused.partition("children=")[2])]
    still_running = [pid for pid in workers if _running(pid)]
    with open(log_path) as f:
        log = f.read()
    assert returncode == status, log[-3000:]
    assert log.rstrip().splitlines()[-1] == last_line, log[-3000:]
    assert "Traceback" not in log and "Failed to format" not in log, log[-3000:]
    assert "model = dict(" not in log  # no config dump
    assert len(workers) == 2, paused
    assert not still_running, (still_running, log[-2000:])
    # the checkpoint: complete (the save finished before the signal acted) or absent
    assert not glob.glob(osp.join(work, ".*.tmp"))
    saved = chosen_checkpoints_load(work)
    assert saved == (["iter_2.pth"] if where == "format" else []), saved
    if where == "format":
        assert safe_load_checkpoint(osp.join(work, "iter_2.pth"))["meta"]["iter"] == 2
        with open(osp.join(work, "last_checkpoint")) as f:
            assert f.read().strip() == osp.join(work, "iter_2.pth")
