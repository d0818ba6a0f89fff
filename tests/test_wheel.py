"""The built wheel works without the source tree: configs ship inside it, the demo and the
tools run from another directory."""

import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig

import pytest
from _helpers import REPO, as_cli, tiny_demo_options

pytestmark = pytest.mark.slow


def run(args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """A fresh venv holding the ann_seg wheel, reusing this environment's installed
    dependencies (a .pth to its site-packages) but not its editable ann_seg."""
    root = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ into the source tree
    source = root / "source"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "work_dirs", "data", "outputs", "build", "dist", "__pycache__"
        ),
    )
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(root / "dist"),
            str(source),
        ],
        cwd=str(root),
    )
    (wheel,) = glob.glob(str(root / "dist" / "ann_seg-*.whl"))
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(root))
    python = str(venv / "bin" / "python")
    site = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=str(root)
    ).stdout.strip()
    with open(osp.join(site, "_main_env_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    # --target (it implies --ignore-installed): --prefix would first uninstall this
    # environment's own editable ann_seg
    run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        cwd=str(root),
    )
    work = root / "elsewhere"
    work.mkdir()
    return python, str(work), site


def test_this_environment_keeps_its_own_ann_seg(wheel_env):
    out = run([sys.executable, "-c", "import ann_seg; print(ann_seg.__file__)"], cwd="/").stdout
    assert out.strip() == osp.join(REPO, "ann_seg", "__init__.py")


def test_the_wheel_is_used_and_holds_the_configs(wheel_env):
    python, work, site = wheel_env
    out = run(
        [
            python,
            "-c",
            "import ann_seg, ann_seg.mmseg.config as c; "
            "print(ann_seg.__file__); print(c.CONFIG_ROOT); "
            "print(c.packaged_config('ann/ann_r101-d8_4xb2-80k_cityscapes-769x769.py'))",
        ],
        cwd=work,
    ).stdout.split()
    assert all(p.startswith(site) for p in out), out
    assert not any(p.startswith(REPO) for p in out)


def test_console_entry_point_runs_every_job_from_another_directory(wheel_env):
    """``ann-seg`` (the wheel's console script) and ``python -m ann_seg``: the demo, infer, a
    2-iteration train, test and a benchmark, from a directory outside the repository."""
    python, work, site = wheel_env
    ann_seg = [python, osp.join(site, "bin", "ann-seg")]
    listed = run([*ann_seg, "--help"], cwd=work).stdout
    assert all(name in listed for name in ("infer", "train", "test", "benchmark", "dist-infer"))
    demo = [python, "-m", "ann_seg", "demo", "--num-train", "8", "--num-val", "2"]
    proc = run([*demo, "--max-iters", "2", "--data-root", "data", "--work-dir", "work"], cwd=work)
    summary = json.load(open(osp.join(work, "work", "summary.json")))
    assert summary["config"].startswith(osp.dirname(python).rsplit("/bin", 1)[0])
    assert "demo mIoU:" in proc.stdout
    assert len(os.listdir(osp.join(work, "work", "inference", "overlays"))) >= 1
    config = "ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py"
    checkpoint = osp.join("work", "iter_2.pth")
    run([*ann_seg, "infer", config, checkpoint, "data/leftImg8bit/val", "--recursive",
         "--out-dir", "inferred", "--threads", "1"], cwd=work)  # fmt: skip
    assert json.load(open(osp.join(work, "inferred", "summary.json")))["counts"]["processed"] == 2
    options = ["--cfg-options", *as_cli(tiny_demo_options("data"))]
    run([*ann_seg, "train", config, "--work-dir", "trained", *options], cwd=work)
    assert osp.isfile(osp.join(work, "trained", "iter_2.pth"))
    tested = run([*ann_seg, "test", config, checkpoint, "--work-dir", "tested", *options], cwd=work)
    assert "mIoU" in tested.stdout + tested.stderr
    bench = [*ann_seg, "benchmark", config, "--shapes", "64", "128", "--repeat", "1"]
    bench = run(
        [*bench, "--warmup", "0", "--no-flops", "--no-progress", "--threads", "1"], cwd=work
    )
    assert "ms" in bench.stdout
