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
from conftest import CONFIGS, REPO, as_cli, tiny_demo_options

from ann_seg.mmseg import hooks as hooks_module
from ann_seg.mmseg.checkpoint import CorruptCheckpointError, safe_load_checkpoint
from ann_seg.mmseg.hooks import checkpoint_loads, select_resume_checkpoint
from ann_seg.mmseg.losses import WeightedCrossEntropyLoss

DEMO = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
TRAIN_PY = osp.join(REPO, "tools", "train.py")
PAUSED = "ann_seg: paused writing"
PAUSE_ENV = "ANN_SEG_TEST_PAUSE_SAVE"  # read by PAUSE_SAVE in the tools the tests start

# a val metric that rises with the iteration, so that every validation saves a new best
RISING_SCORE = """
from mmengine.evaluator import BaseMetric
from mmengine.logging import MessageHub
from mmseg.registry import METRICS


@METRICS.register_module()
class RisingScore(BaseMetric):
    def __init__(self, **kwargs):
        super().__init__()

    def process(self, data_batch, data_samples):
        self.results.append(0)

    def compute_metrics(self, results):
        return {"mIoU": float(MessageHub.get_current_instance().get_info("iter", 0))}
"""

# imported by the helpers' sitecustomize: with ANN_SEG_TEST_PAUSE_SAVE=GLOB (or GLOB@n), the
# n-th checkpoint write whose name matches GLOB stops after half of its bytes (inside the
# hook's atomic write) and says so, so that the test can SIGKILL the process there
PAUSE_SAVE = f"""
import fnmatch
import os
import sys
import time

SPEC = os.environ.get({PAUSE_ENV!r})
if SPEC:
    from ann_seg.mmseg import hooks

    put, seen = hooks.AtomicLocalBackend.put, []

    def paused_put(self, obj, filepath):
        path = os.fspath(filepath)
        pattern, _, nth = SPEC.partition("@")
        if fnmatch.fnmatch(os.path.basename(path), pattern):
            seen.append(path)
            if len(seen) == int(nth or 1):

                def write_half_and_wait(f):
                    f.write(obj[: len(obj) // 2])
                    f.flush()
                    print("{PAUSED}", path, file=sys.stderr, flush=True)
                    time.sleep(600)

                return hooks.atomic_write_with(path, write_half_and_wait)
        return put(self, obj, filepath)

    hooks.AtomicLocalBackend.put = paused_put
"""


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
    from mmseg.models.losses import CrossEntropyLoss

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
    from mmengine.config import Config

    paths = sorted(glob.glob(osp.join(CONFIGS, "**", "*.py"), recursive=True))
    paths = [p for p in paths if "_base_" not in p]
    assert len(paths) > 30
    # parsing all takes half a minute: one of each kind, and every file's own override
    parsed = [p for p in paths if "/demo/" in p or "/compare/ann_" in p or "/compare/fcn_" in p]
    parsed += [p for p in paths if "ann_r50-d8_4xb2-40k_cityscapes-769x769" in p]
    parsed += [p for p in paths if "nonlocal_r101-d8_4xb4-160k_ade20k" in p]
    for path in paths:
        with open(path) as f:
            text = f.read()
        own = 'default_hooks = dict(checkpoint=dict(type="AtomicCheckpointHook"))'
        assert own in text or "/demo/" in path or "/compare/" in path, path
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

# (name, the write paused and killed, iteration the resume starts from, files that must load
# right after the kill); the schedule: 4 iterations, checkpoint and validation every 2, a new
# best at each validation (RisingScore), max_keep_ckpts=2
KILL_POINTS = [
    ("first checkpoint iter_2", "iter_2.pth@1", 0, []),
    ("first best", "best_mIoU_iter_2.pth", 2, ["iter_2.pth"]),
    ("final checkpoint iter_4", "iter_4.pth@1", 2, ["iter_2.pth", "best_mIoU_iter_2.pth"]),
    (
        "best replacing the previous best",
        "best_mIoU_iter_4.pth",
        4,
        ["iter_2.pth", "iter_4.pth", "best_mIoU_iter_2.pth"],
    ),
    (
        "final checkpoint rewritten after the best",
        "iter_4.pth@2",
        4,
        ["iter_2.pth", "iter_4.pth", "best_mIoU_iter_2.pth", "best_mIoU_iter_4.pth"],
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
            "val_evaluator.type": "RisingScore",  # registered by the helpers' sitecustomize
        }
    )
    return options


def _env(helpers, pause=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(helpers), env.get("PYTHONPATH")]))
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = pause
    return env


def kill_mid_write(args, cwd, env, log_path, timeout=300):
    """Start ``args``, wait until the paused write is announced, SIGKILL it."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with open(log_path) as f:
                if PAUSED in f.read():
                    break
            if proc.poll() is not None:
                raise AssertionError(
                    f"ended ({proc.returncode}) before the pause:\n" + _tail(log_path)
                )
            time.sleep(0.2)
        else:
            raise AssertionError("no pause announced:\n" + _tail(log_path))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


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
    process paused by ``PAUSE_SAVE``): afterwards every checkpoint that resume or
    the demo could choose loads, the previous best is still there, ``--resume`` finishes from
    the last complete checkpoint, and a demo-like run (``train_to_final`` + ``test``) finishes.
    With mmengine's own CheckpointHook the killed write is the file itself (truncated), and the
    previous best is deleted before the new one is written."""
    from ann_seg.demo import train_to_final
    from ann_seg.mmseg import load_config
    from ann_seg.mmseg.runner import test

    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "rising_score.py").write_text(RISING_SCORE)
    (helpers / "pause_save.py").write_text(PAUSE_SAVE)
    (helpers / "sitecustomize.py").write_text("import pause_save, rising_score  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(helpers))
    importlib.import_module("rising_score")
    options = demo_options(cityscapes_root)
    outcomes = []
    for name, pause, resumed_from, intact in KILL_POINTS:
        work = str(tmp_path / f"kill_{len(outcomes)}")
        args = [sys.executable, TRAIN_PY, DEMO, "--work-dir", work]
        args += ["--cfg-options", *as_cli(options)]
        kill_mid_write(args, str(tmp_path), _env(helpers, pause), f"{work}.killed.log")

        # everything choosable loads, nothing was lost; the interrupted write is a hidden
        # temporary file
        left = chosen_checkpoints_load(work)
        assert left == sorted(intact), (name, left)
        fragments = glob.glob(osp.join(work, ".*.pth.*.tmp"))
        assert len(fragments) == 1 and pause.split("@")[0] in fragments[0], fragments

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
            env=_env(helpers),
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
        assert "removed 1 unfinished checkpoint write(s)" in log, (name, log[-3000:])
        assert not glob.glob(osp.join(work, ".*.tmp"))
        chosen_checkpoints_load(work)
        assert safe_load_checkpoint(osp.join(work, "iter_4.pth"))["meta"]["iter"] == 4
        # one best again: with two intact bests left (killed before the old one's removal)
        # the resume keeps the better (RisingScore: the later) and moves the other aside
        bests = sorted(osp.basename(p) for p in glob.glob(osp.join(work, "best_*.pth")))
        assert len(bests) == 1, (name, bests)
        if sum(n.startswith("best_") for n in intact) == 2:
            assert bests == ["best_mIoU_iter_4.pth"], (name, bests)
            assert osp.exists(osp.join(work, "best_mIoU_iter_2.pth.superseded"))
            assert "best_mIoU_iter_2.pth moved aside to best_mIoU_iter_2.pth.superseded" in log

        cfg = load_config(DEMO, options, demo_work)
        final = train_to_final(cfg)
        metrics = test(cfg, final, cfg_options={"test_dataloader.num_workers": 0})
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
