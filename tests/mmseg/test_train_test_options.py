"""ann-seg train / test options on the CPU: --fast (the speed policy), --show-dir, --tta,
strict loading, quiet logs."""

import glob
import os.path as osp
import re
import subprocess
import sys

import mmseg
import pytest
import torch
from _helpers import CONFIGS, REPO, as_cli, run_tool, small_run_options

from ann_seg.layers.compat import native_low_precision_dtype
from ann_seg.mmseg import build_segmentor, load_weights
from ann_seg.mmseg.amp import CPUAutocastOptimWrapper

pytestmark = pytest.mark.slow

CONFIG = osp.join(CONFIGS, "ann", "ann_r50-d8_4xb2-40k_cityscapes-512x1024.py")
FCN = "ann_seg::compare/fcn_r18-d8_1xb8-800it_synthetic-64x128.py"
TRAIN, TEST = osp.join(REPO, "tools", "train.py"), osp.join(REPO, "tools", "test.py")


def run(args, cwd):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def trained(cityscapes_root, tmp_path_factory):
    """(work dir, options, stdout+stderr) of 2 iterations with --fast."""
    root = tmp_path_factory.mktemp("trained")
    options = small_run_options(cityscapes_root, max_iters=2)
    work = str(root / "work")
    proc = run_tool(
        [TRAIN, CONFIG, "--fast", "--work-dir", work, "--cfg-options", *as_cli(options)],
        cwd=str(root),
    )
    return work, options, proc.stdout + proc.stderr


def test_cpu_autocast_wrapper_autocasts_the_forward_only():
    model = torch.nn.Linear(4, 4)
    wrapper = CPUAutocastOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        assert model(torch.randn(2, 4)).dtype == torch.bfloat16
    assert model(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="'int8'"):
        CPUAutocastOptimWrapper(dtype="int8", optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_fast_trains_resumes_and_its_checkpoint_loads_into_the_plain_model(trained, tmp_path):
    work, options, log = trained
    losses = [float(v) for v in re.findall(r" loss: ([0-9.naninf]+)", log)]
    assert losses and all(torch.isfinite(torch.tensor(losses))), log[-3000:]
    if native_low_precision_dtype("cpu") is not None:
        assert "speed: bf16+cl+fast" in log, log[-3000:]
    else:
        assert "speed: fp32+fast (no native low precision" in log, log[-3000:]
    plain = build_segmentor(CONFIG, cfg_options=dict(options))
    load_weights(plain, osp.join(work, "iter_2.pth"), config=CONFIG)  # strict: every key
    more = dict(options, **{"train_cfg.max_iters": 4, "train_cfg.val_interval": 4})
    proc = run_tool(
        [TRAIN, CONFIG, "--fast", "--resume", "--work-dir", work, "--cfg-options", *as_cli(more)],
        cwd=str(tmp_path),
    )
    resumed = proc.stdout + proc.stderr
    assert re.search(r"resumed epoch: \d+, iter: 2", resumed) and "Iter(train) [4/4]" in resumed


def test_the_dumped_fast_config_trains_under_mmseg_own_train_py(trained, tmp_path):
    """What --fast wrote into the config (FastTrainingHook, the CPU autocast wrapper) is
    registered by the config's custom_imports=['ann_seg']: mmseg's tools/train.py runs it."""
    work, _, _ = trained
    dumped = osp.join(work, osp.basename(CONFIG))
    text = open(dumped).read()
    assert "FastTrainingHook" in text and "custom_imports" in text
    mmseg_train = osp.join(osp.dirname(mmseg.__file__), ".mim", "tools", "train.py")
    proc = run([mmseg_train, dumped, "--work-dir", str(tmp_path / "mmseg")], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert osp.isfile(tmp_path / "mmseg" / "iter_2.pth")


def test_training_is_quiet_unless_verbose(trained):
    work, _, log = trained
    assert "Config:" not in log and "config and environment:" in log
    first = sorted(glob.glob(osp.join(work, "*", "*.log")))[0]  # the --fast run's (timestamps)
    text = open(first).read()
    assert "Config:" in text and "System environment:" in text


def test_show_dir_paints_every_test_image_under_the_work_dir(trained, tmp_path):
    work, options, _ = trained
    test_work = str(tmp_path / "test_work")
    proc = run_tool(
        [
            TEST,
            CONFIG,
            osp.join(work, "iter_2.pth"),
            "--work-dir",
            test_work,
            "--show-dir",
            "vis",
            "--cfg-options",
            *as_cli(options),
        ],
        cwd=str(tmp_path),
    )
    painted = glob.glob(osp.join(test_work, "vis", "**", "*.png"), recursive=True)
    assert len(painted) == 4, painted  # the 4 val images, not every 50th
    assert not osp.exists(tmp_path / "vis")
    assert f"painted predictions: {osp.join(test_work, 'vis')}" in proc.stdout + proc.stderr


def test_tta_on_a_real_data_config_prints_miou(trained, tmp_path):
    work, options, _ = trained
    proc = run_tool(
        [
            TEST,
            CONFIG,
            osp.join(work, "iter_2.pth"),
            "--tta",
            "--work-dir",
            str(tmp_path / "tta"),
            "--cfg-options",
            *as_cli(options),
        ],
        cwd=str(tmp_path),
    )
    assert re.search(r"mIoU: [0-9.]+", proc.stdout + proc.stderr)


def test_tta_without_a_tta_pipeline_is_one_clear_line(tmp_path):
    demo = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
    fake = tmp_path / "x.pth"
    fake.write_bytes(b"not read")
    proc = run([TEST, demo, str(fake), "--tta"], cwd=str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --tta:") and "tta_pipeline" in proc.stderr


def test_a_checkpoint_of_another_architecture_is_refused(trained, tmp_path):
    _, options, _ = trained
    fcn = str(tmp_path / "fcn.pth")
    torch.save({"state_dict": build_segmentor(FCN).state_dict(), "meta": {}}, fcn)
    args = [TEST, CONFIG, fcn, "--work-dir", str(tmp_path / "w"), "--cfg-options", *as_cli(options)]
    proc = run(args, cwd=str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "does not match" in proc.stderr and "missing keys" in proc.stderr
    assert "mIoU" not in proc.stdout
    loose = run([*args, "--non-strict"], cwd=str(tmp_path))
    assert loose.returncode == 0 and "mIoU" in loose.stdout + loose.stderr


def test_a_cfg_options_typo_is_refused_with_the_closest_key(tmp_path):
    proc = run([TRAIN, CONFIG, "--cfg-options", "train_cfg.max_iterz=4"], cwd=str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "max_iterz" in proc.stderr and "did you mean train_cfg.max_iters?" in proc.stderr
