"""Bad training files: tools/check_dataset.py names them, training skips them (and says so)."""

import importlib.util
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
from _helpers import CONFIGS, REPO, as_cli, run_tool, tiny_demo_options
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS
from PIL import Image

import ann_seg.mmseg.transforms as transforms
from ann_seg.mmseg import load_config
from ann_seg.mmseg.data_check import describe_training_files, scan_training_files
from ann_seg.mmseg.transforms import LoadAnnotationsOrSkip, LoadImageOrSkip
from ann_seg.tools import cli

DEMO = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
CITYSCAPES_CFG = osp.join(CONFIGS, "ann", "ann_r50-d8_4xb2-40k_cityscapes-512x1024.py")
IMG = "leftImg8bit/train/{}_leftImg8bit.png"
LABEL = "gtFine/train/{}_gtFine_labelTrainIds.png"
TRUNCATED = "farfield/farfield_000000_000019"
MISSING_LABEL = "farfield/farfield_000001_000019"
OUT_OF_RANGE = "longreach/longreach_000000_000019"
WRONG_SIZE = "longreach/longreach_000001_000019"
WITH_IGNORE = "longreach/longreach_000002_000019"  # valid: 255 stripes


def _tool(name):
    return importlib.import_module(f"ann_seg.tools.{name}")


@pytest.fixture(scope="module")
def broken_root(cityscapes_root, tmp_path_factory):
    """The 8-image training set with a truncated image, a missing label map, a label map with
    the value 7 (5 classes), one of half the image's height, and one with 255 stripes."""
    root = str(tmp_path_factory.mktemp("broken") / "data")
    shutil.copytree(cityscapes_root, root)
    path = osp.join(root, IMG.format(TRUNCATED))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])
    os.remove(osp.join(root, LABEL.format(MISSING_LABEL)))
    for stem, change in [
        (OUT_OF_RANGE, lambda a: np.where(np.arange(a.shape[1]) < 5, 7, a).astype(np.uint8)),
        (WRONG_SIZE, lambda a: a[: a.shape[0] // 2]),
        (WITH_IGNORE, lambda a: np.where(np.arange(a.shape[1]) % 16 < 3, 255, a).astype(np.uint8)),
    ]:
        path = osp.join(root, LABEL.format(stem))
        Image.fromarray(change(np.array(Image.open(path)))).save(path)
    return root


def data_options(root):
    return {f"{s}_dataloader.dataset.data_root": root for s in ("train", "val", "test")}


EXPECTED = {
    (IMG.format(TRUNCATED), "unreadable image"),
    (LABEL.format(MISSING_LABEL), "missing label map"),
    (LABEL.format(OUT_OF_RANGE), "label values out of range"),
    (LABEL.format(WRONG_SIZE), "size mismatch"),
}


@pytest.mark.slow
def test_check_dataset_tool_names_every_bad_file(broken_root, tmp_path):
    report_path = str(tmp_path / "report.json")
    args = [osp.join(REPO, "tools", "check_dataset.py"), DEMO, "--workers", "2"]
    args += ["--json", report_path, "--cfg-options", *as_cli(data_options(broken_root))]
    with pytest.raises(AssertionError, match=r"failed \(1\)") as failed:
        run_tool(args, cwd=str(tmp_path))
    out = str(failed.value)
    assert "| split | file | problem | detail |" in out
    for relative, kind in EXPECTED:
        assert f"| train | {relative} | {kind} |" in out, out[-3000:]
    assert "corrupt or truncated PNG data" in out
    assert "values 7 outside the classes 0..4 and the ignore index 255" in out
    assert "4 problem(s) in 4 file(s)" in out
    with open(report_path) as f:
        report = json.load(f)
    assert {(p["relative"], p["kind"]) for p in report["problems"]} == EXPECTED
    assert report["splits"] == {
        "train": {"samples": 8, "problems": 4, "left_out": 0},
        "val": {"samples": 4, "problems": 0, "left_out": 0},
    }
    assert all(osp.isabs(p["file"]) for p in report["problems"])


def test_check_dataset_in_process_clean_set_and_exit_codes(
    broken_root, cityscapes_root, tmp_path, capsys
):
    tool = _tool("check_dataset")
    # a clean set through a real-data config (mmseg's own loading transforms): exit 0
    clean = [CITYSCAPES_CFG, "--workers", "0", "--no-progress", "--json", str(tmp_path / "c.json")]
    clean += ["--cfg-options", *as_cli(data_options(cityscapes_root))]
    assert cli.run(tool.main, clean) == 0
    assert "checked train 8, val 4 samples: no problems found" in capsys.readouterr().out
    # problems: exit 1, also without workers; only the split asked for
    bad = [DEMO, "--workers", "0", "--no-progress", "--splits", "val", "train"]
    bad += ["--cfg-options", *as_cli(data_options(broken_root))]
    assert cli.run(tool.main, bad) == 1
    out = capsys.readouterr().out
    assert out.count("| train |") == 4 and "| val |" not in out
    # bad arguments: exit 2 with one line
    assert cli.run(tool.main, [str(tmp_path / "missing.py")]) == 2
    assert "config file not found" in capsys.readouterr().err
    options = ["--cfg-options", "train_dataloader.dataset.data_rot=x"]
    assert cli.run(tool.main, [DEMO, *options]) == 2
    assert "did you mean train_dataloader.dataset.data_root" in capsys.readouterr().err
    for argv, message in [
        ([DEMO, "--splits", "tran"], "invalid choice: 'tran'"),
        ([DEMO, "--workers", "-1"], "--workers must be >= 0, got -1"),
    ]:
        with pytest.raises(SystemExit) as exited:
            tool.main(argv)
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


def test_train_check_data_stops_before_training(broken_root, tmp_path, capsys):
    tool = _tool("train")
    work = tmp_path / "work"
    argv = [DEMO, "--work-dir", str(work), "--check-data"]
    argv += ["--cfg-options", *as_cli(data_options(broken_root))]
    assert tool.main(argv) == 1
    captured = capsys.readouterr()
    assert "training not started" in captured.err
    assert f"| train | {IMG.format(TRUNCATED)} | unreadable image |" in captured.out
    assert not work.exists() or not list(work.glob("*.pth"))


def test_skip_transforms_refetch_another_sample_and_log_once(broken_root, monkeypatch):
    logged = []
    monkeypatch.setattr(transforms, "print_log", lambda msg, **kw: logged.append(msg))
    monkeypatch.setattr(transforms, "_ledger", None)  # a fresh count for this test
    init_default_scope("mmseg")
    dataset = DATASETS.build(
        dict(
            type="LongRangeSyntheticDataset",
            data_root=broken_root,
            data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train"),
            pipeline=[
                dict(type="LoadImageOrSkip"),
                dict(type="LoadAnnotationsOrSkip", num_classes=5),
                dict(type="PackSegInputs"),
            ],
        )
    )
    paths = [dataset.get_data_info(i)["img_path"] for i in range(len(dataset))]
    bad = {i for i, p in enumerate(paths) if any(s in p for s in (TRUNCATED, MISSING_LABEL))}
    bad |= {i for i, p in enumerate(paths) if any(s in p for s in (OUT_OF_RANGE, WRONG_SIZE))}
    assert len(bad) == 4
    for index in sorted(bad) * 2:  # each bad sample twice: refetched, logged once
        sample = dataset[index]
        assert sample["data_samples"].img_path != paths[index]
    assert len(logged) == 4, logged
    assert sum(TRUNCATED in m and "corrupt or truncated PNG" in m for m in logged) == 1
    assert sum(MISSING_LABEL in m and "file not found" in m for m in logged) == 1
    assert sum(OUT_OF_RANGE in m and "values 7" in m for m in logged) == 1
    assert sum(WRONG_SIZE in m and "size mismatch" in m for m in logged) == 1
    assert "(4 file(s) skipped so far)" in logged[-1]
    assert transforms.skip_ledger().count == 4
    good = paths.index(next(p for p in paths if WITH_IGNORE in p))
    labels = dataset[good]["data_samples"].gt_sem_seg.data
    assert (labels == 255).any()  # ignore pixels are fine
    assert isinstance(dataset.pipeline.transforms[0], LoadImageOrSkip)
    assert isinstance(dataset.pipeline.transforms[1], LoadAnnotationsOrSkip)


@pytest.mark.slow
def test_training_skips_bad_files_and_logs_them(broken_root, tmp_path):
    """4 iterations of 2 = one pass over the 8 training images (InfiniteSampler), in a data
    loader worker; 255 stripes and padding (a 64x160 batch from 64x128 images) reach the
    class-weighted loss."""
    options = {
        "model.data_preprocessor.size": (64, 160),
        "train_cfg.max_iters": 4,
        "train_cfg.val_interval": 4,
        "default_hooks.checkpoint.interval": 4,
        "default_hooks.logger.interval": 1,
        "param_scheduler.0.end": 1,
        "param_scheduler.1.begin": 1,
        "param_scheduler.1.end": 4,
        "train_dataloader.num_workers": 1,
        "train_dataloader.persistent_workers": False,
        "val_dataloader.num_workers": 0,
        "val_dataloader.persistent_workers": False,
    }
    for loader in ("train_dataloader", "val_dataloader"):
        options[f"{loader}.batch_size"] = 2
    options.update(data_options(broken_root))
    work = tmp_path / "work"
    proc = run_tool(
        [osp.join(REPO, "tools", "train.py"), DEMO, "--work-dir", str(work)]
        + ["--cfg-options", *as_cli(options)],
        cwd=str(tmp_path),
        env={"OMP_NUM_THREADS": "1"},
    )
    log = proc.stdout + proc.stderr
    assert "Iter(train) [4/4]" in log, log[-3000:]
    skipped = [line for line in log.splitlines() if "skipped training" in line]
    assert any(TRUNCATED in line and "corrupt or truncated PNG" in line for line in skipped)
    for stem in (TRUNCATED, MISSING_LABEL, OUT_OF_RANGE, WRONG_SIZE):
        assert sum(stem in line for line in skipped) == 1, (stem, skipped)
    assert "training skipped 4 unreadable or invalid file(s)" in log, log[-3000:]
    assert "failed to load image" not in log and "IndexError" not in log
    (log_file,) = work.glob("*/*.log")  # the workers' lines reach the run's log file too
    assert TRUNCATED in log_file.read_text()
    assert (work / "iter_4.pth").is_file()


# ---------------------------------------------------------------- files the data set leaves out

DANGLING = "farfield/farfield_000002_000019"  # the image: a link that leads nowhere
DELETED = "longreach/longreach_000003_000019"  # the image deleted, its label map left


@pytest.fixture(scope="module")
def vanished_root(cityscapes_root, tmp_path_factory):
    """The 8-image training set with one image replaced by a link to a file that does not
    exist and one image deleted (its label map left): mmseg lists 6 images, silently."""
    root = str(tmp_path_factory.mktemp("vanished") / "data")
    shutil.copytree(cityscapes_root, root)
    dangling = osp.join(root, IMG.format(DANGLING))
    os.remove(dangling)
    os.symlink(osp.join(root, "nowhere", "moved.png"), dangling)
    os.remove(osp.join(root, IMG.format(DELETED)))
    return root


def test_check_dataset_names_dangling_and_deleted_images(vanished_root, tmp_path, capsys):
    tool = _tool("check_dataset")
    report_path = str(tmp_path / "report.json")
    argv = [DEMO, "--workers", "0", "--no-progress", "--json", report_path]
    argv += ["--cfg-options", *as_cli(data_options(vanished_root))]
    assert cli.run(tool.main, argv) == 1
    out = capsys.readouterr().out
    link = osp.join(vanished_root, "nowhere", "moved.png")
    assert (
        f"| train | {IMG.format(DANGLING)} | dangling image link | a link to {link}, which does "
        "not exist |" in out
    ), out
    label = LABEL.format(DELETED).split("/", 2)[2]
    assert (
        f"| train | {IMG.format(DELETED)} | missing image | its label map {label} is there |"
        in (out)
    ), out
    assert "checked train 6 (+2 left out), val 4 samples: 2 problem(s) in 2 file(s)" in out, out
    with open(report_path) as f:
        report = json.load(f)
    assert report["splits"]["train"] == {"samples": 6, "problems": 2, "left_out": 2}
    assert [p["index"] for p in report["problems"]] == [None, None]


def test_training_states_the_smaller_split_in_its_first_lines(vanished_root, tmp_path):
    """The console's first lines (and the run's log file, before the first iteration) name
    both images and the count; training goes on with the 6 it has."""
    options = tiny_demo_options(vanished_root, max_iters=2)
    options["model.data_preprocessor.size"] = (64, 128)
    work = tmp_path / "work"
    proc = run_tool(
        [osp.join(REPO, "tools", "train.py"), DEMO, "--work-dir", str(work)]
        + ["--cfg-options", *as_cli(options)],
        cwd=str(tmp_path),
        env={"OMP_NUM_THREADS": "1"},
    )
    first = proc.stdout.splitlines()[:4]
    assert (
        "training set: 6 of 8 samples usable (2 left out by the data set, 0 listed" in (first[1])
    ), proc.stdout[:3000]
    assert IMG.format(DANGLING) in first[2] and "dangling image link" in first[2], first
    assert IMG.format(DELETED) in first[3] and "missing image" in first[3], first
    (log_file,) = work.glob("*/*.log")
    text = log_file.read_text()
    assert text.index("training set: 6 of 8 samples usable") < text.index("Iter(train)")
    assert (work / "iter_2.pth").is_file()


def test_scan_training_files_with_a_split_file(cityscapes_root, tmp_path):
    """With an ``ann_file`` the data set lists what the file names: an image that is gone and
    a label map that is a link to nowhere are listed samples that cannot load."""
    root = str(tmp_path / "data")
    shutil.copytree(cityscapes_root, root)
    split = osp.join(root, "train.txt")
    with open(split, "w") as f:
        f.write("\n".join([TRUNCATED, MISSING_LABEL, OUT_OF_RANGE, "farfield/not_there"]) + "\n")
    label = osp.join(root, LABEL.format(MISSING_LABEL))
    os.remove(label)
    os.symlink(osp.join(root, "elsewhere.png"), label)
    options = data_options(root)
    options["train_dataloader.dataset.img_suffix"] = "_leftImg8bit.png"
    options["train_dataloader.dataset.ann_file"] = split
    scan = scan_training_files(load_config(DEMO, options, work_dir=""))
    assert (scan["samples"], scan["usable"], scan["on_disk"]) == (4, 2, 4)
    assert scan["problems"] == [
        (
            LABEL.format(MISSING_LABEL),
            "missing label map",
            f"a link to {root}/elsewhere.png, which does not exist",
        ),
        ("leftImg8bit/train/farfield/not_there_leftImg8bit.png", "missing image", "file not found"),
        (
            "gtFine/train/farfield/not_there_gtFine_labelTrainIds.png",
            "missing label map",
            "file not found",
        ),
    ]
    lines = describe_training_files(scan)
    assert lines[0].startswith(
        "training set: 2 of 4 samples usable (0 left out by the data "
        "set, 2 listed with a missing or unreadable file"
    )
    assert len(lines) == 4
    assert describe_training_files(dict(scan, problems=[])) == []
