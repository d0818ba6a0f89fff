"""A wrong config or --cfg-options: one line naming the file, key and value, exit status 2,
before any work starts (no work dir, no model built), in train, test and infer alike."""

import os.path as osp
import subprocess
import sys

import pytest
from _helpers import CONFIGS, REPO
from PIL import Image

from ann_seg.mmseg.config import ConfigError, UserOptions, load_config
from ann_seg.tools import main as ann_seg

DEMO = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
MISSING_MODULE = "no_such_module_for_ann_seg"


@pytest.fixture
def inputs(tmp_path):
    """(config importing a missing module, a checkpoint file, a folder with one image)."""
    config = tmp_path / "missing_import.py"
    config.write_text(
        f"_base_ = [{DEMO!r}]\n"
        f"custom_imports = dict(imports=['ann_seg', {MISSING_MODULE!r}], "
        "allow_failed_imports=False)\n"
    )
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"never read")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 16)).save(images / "a.png")
    return str(config), str(checkpoint), str(images)


def _commands(config, checkpoint, images, tmp_path, options=()):
    work = str(tmp_path / "work")
    options = ["--cfg-options", *options] if options else []
    return {
        "train": ["train", config, "--work-dir", work, *options],
        "test": ["test", config, checkpoint, "--work-dir", work, *options],
        "infer": ["infer", config, checkpoint, images, "--out-dir", work, *options],
    }


def _one_line_error(capsys, argv, tmp_path):
    status = ann_seg(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp_path / "work").exists()  # nothing started
    return lines[0]


@pytest.mark.parametrize("command", ["train", "test", "infer"])
def test_custom_imports_of_a_missing_module_is_one_line(command, inputs, tmp_path, capsys):
    config, checkpoint, images = inputs
    argv = _commands(config, checkpoint, images, tmp_path)[command]
    line = _one_line_error(capsys, argv, tmp_path)
    assert f"{config}: custom_imports: cannot import '{MISSING_MODULE}'" in line, line
    assert f"No module named '{MISSING_MODULE}'" in line, line


@pytest.mark.parametrize("command", ["train", "test", "infer"])
@pytest.mark.parametrize(
    "option, expected",
    [
        (
            "model.decode_head.type=NoSuchHead",
            "model.decode_head.type='NoSuchHead' is not a registered type",
        ),
        (
            "model.test_cfg.mode=slid",
            "model.test_cfg.mode='slid': the allowed values are 'whole' and 'slide'; did you "
            "mean 'slide'?",
        ),
        (
            "train_cfg.max_iters=abc",
            "--cfg-options train_cfg.max_iters=abc: ",
        ),
        ("train_cfg.max_iters", "--cfg-options 'train_cfg.max_iters': not KEY=VALUE (no '=')"),
    ],
)
def test_wrong_types_values_and_options_are_one_line(
    command, option, expected, inputs, tmp_path, capsys
):
    _, checkpoint, images = inputs
    argv = _commands(DEMO, checkpoint, images, tmp_path, [option])[command]
    line = _one_line_error(capsys, argv, tmp_path)
    assert expected in line, line
    if "=" in option and "--cfg-options" not in expected:
        assert DEMO in line, line  # the file


def test_check_config_refusals_in_the_library():
    def refused(options):
        with pytest.raises(ConfigError) as error:
            load_config(DEMO, UserOptions(options), work_dir="")
        return str(error.value)

    assert "did you mean 'NLSegHead'?" in refused({"model.decode_head.type": "NoSuchHead"})
    message = refused({"model.auxiliary_head.loss_decode.type": "NoSuchLoss"})
    assert "model.auxiliary_head.loss_decode.type='NoSuchLoss'" in message
    message = refused({"train_dataloader.dataset.pipeline.0.type": "LoadImageOrSkipp"})
    assert "did you mean 'LoadImageOrSkip'?" in message
    assert "give a number" in refused({"train_cfg.val_interval": "often"})
    assert "give True or False" in refused({"model.backbone.norm_eval": "maybe"})
    message = refused({"+model.test_cfg": {"mode": "slide", "crop_size": (64, 64)}})
    assert "mode='slide' needs model.test_cfg.stride=(H,W) in pixels, got None" in message
    # what is fine stays fine: numbers for numbers, None, a sliding window, registered types
    cfg = load_config(
        DEMO,
        UserOptions(
            {
                "train_cfg.max_iters": 8,
                "optim_wrapper.optimizer.lr": 1,
                "randomness.seed": None,
                "+model.test_cfg": {"mode": "slide", "crop_size": (64, 64), "stride": (32, 32)},
                "model.decode_head.type": "APNBSegHead",
            }
        ),
        work_dir="",
    )
    assert cfg.model.test_cfg.mode == "slide"


def test_the_process_prints_one_line_for_a_missing_custom_import(inputs, tmp_path):
    """The whole stderr of ``ann-seg train``, where mmengine chained three tracebacks."""
    config, _, _ = inputs
    proc = subprocess.run(
        [sys.executable, "-m", "ann_seg", "train", config, "--work-dir", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and "cannot import" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "work").exists()
