"""Every tool follows one convention (tools/train.py's): ``main(argv=None) -> int`` run by
``cli.run`` (known errors: one ``error:`` line, exit status 2; tracebacks with ``--debug``),
``cli.quiet_warnings()``, ``--help`` with examples and defaults; ``--threads``; the dist
scripts' interpreter; ``tools/analyze_logs.py``; the block benchmark's ratio wording."""

import argparse
import ast
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from _helpers import CONFIGS, REPO, as_cli, load_tool, tiny_demo_options

from ann_seg.benchmark.blocks import PAPER, paper_lines, ratio_words
from ann_seg.inference import threads
from ann_seg.tools import COMMANDS, cli, launch, run_tool

TOOLS = osp.join(REPO, "tools")  # the thin wrappers and the torchrun launchers
TOOL_MODULES = osp.join(REPO, "ann_seg", "tools")
DEMO_CONFIG = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
OURS = [  # tools with build_parser() (train.py and test.py keep parse_args)
    "analyze_logs",
    "benchmark",
    "benchmark_blocks",
    "benchmark_inference",
    "convert_mmseg_ann",
    "demo",
    "export_onnx",
    "infer",
    "make_synthetic_data",
    "visualize_attention",
]
ALL_TOOLS = sorted({module for module, _ in COMMANDS.values()} - {"launch"})
WITH_CFG_OPTIONS = [
    "benchmark",
    "benchmark_inference",
    "export_onnx",
    "infer",
    "test",
    "train",
    "visualize_attention",
]
WITH_THREADS = ["benchmark", "benchmark_blocks", "benchmark_inference", "infer", "test", "train"]


def help_text(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool(name).main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------------------ convention


@pytest.mark.parametrize("name", ALL_TOOLS)
def test_help_has_description_example_and_defaults(name, capsys):
    assert set(OURS) <= set(ALL_TOOLS) and {"train", "test"} <= set(ALL_TOOLS)
    text = help_text(name, capsys)
    lower, flat = text.lower(), " ".join(text.split())
    assert "example" in lower, f"{name} --help has no example:\n{text}"
    assert "default" in lower, f"{name} --help names no default:\n{text}"
    description = text.split("\n\n")[1] if "\n\n" in text else ""
    assert len(description.split()) >= 5, f"{name} --help has no description:\n{text}"
    if name in WITH_CFG_OPTIONS or "--cfg-options" in flat:
        assert "--cfg-options" in flat and "refused" in flat
    if name in WITH_THREADS:
        assert "--threads" in flat and "load average" in flat
    assert "--debug" in text


@pytest.mark.parametrize("name", OURS)
def test_every_option_with_a_default_says_it(name):
    parser = load_tool(name).build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.default in (None, False):
            continue
        assert "default" in (action.help or "").lower(), (
            f"{name} {action.option_strings or action.dest}: default {action.default!r} is not "
            f"in its help {action.help!r}"
        )


def test_make_synthetic_data_help_says_what_it_does(capsys):
    text = " ".join(help_text("make_synthetic_data", capsys).split())
    for words in ("cityscapes", "ade20k", "leftImg8bit", "annotations", "reduce_zero_label"):
        assert words in text, (words, text)
    assert "200 training and 50 validation images of 128x256" in text, text


def _main_block(tree):
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return ast.unparse(node)
    return ""


@pytest.mark.parametrize("name", ALL_TOOLS)
def test_tools_run_main_through_cli_run(name):
    with open(osp.join(TOOL_MODULES, f"{name}.py"), encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains, f"{name}: no main()"
    args = mains[0].args
    assert [a.arg for a in args.args] == ["argv"] and ast.unparse(args.defaults[0]) == "None"
    block = _main_block(tree)
    assert "sys.exit(cli.run(main))" in block, block
    assert "cli.add_debug_argument(parser)" in source
    if name in WITH_CFG_OPTIONS or "--cfg-options" in source:
        assert "cli.add_cfg_options_argument(parser)" in source
        assert "DictAction" not in source, f"{name}: --cfg-options without the key check"


# --------------------------------------------------------------------------- error output


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((32, 64, 3), 100, np.uint8))
    return folder


def _missing_config_argv(name, missing, image_dir, tmp_path):
    ckpt, image = str(tmp_path / "model.pth"), str(image_dir / "a.png")
    open(ckpt, "wb").close()  # exists: the config is what is missing
    return {
        "infer": [missing, ckpt, str(image_dir), "--out-dir", str(tmp_path / "out")],
        "benchmark": [missing, "--no-progress"],
        "benchmark_inference": [missing, "random", str(image_dir), "--no-progress"],
        "export_onnx": [missing, ckpt, str(tmp_path / "m.onnx")],
        "visualize_attention": [missing, ckpt, image, "--points", "1,1"],
        "demo": [
            "--config",
            missing,
            "--data-root",
            str(tmp_path / "data"),
            "--work-dir",
            str(tmp_path / "work"),
            "--num-train",
            "1",
            "--num-val",
            "1",
        ],
        "train": [missing, "--work-dir", str(tmp_path / "work")],
        "test": [missing, ckpt, "--work-dir", str(tmp_path / "work")],
    }[name]


CONFIG_TOOLS = [
    "benchmark",
    "benchmark_inference",
    "demo",
    "export_onnx",
    "infer",
    "test",
    "train",
    "visualize_attention",
]


@pytest.mark.parametrize("name", CONFIG_TOOLS)
def test_missing_config_is_one_error_line_and_a_traceback_with_debug(
    name, image_dir, tmp_path, capsys, monkeypatch, single_thread
):
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "no_such_config.py")
    tool = load_tool(name)
    argv = _missing_config_argv(name, missing, image_dir, tmp_path)
    assert cli.run(tool.main, argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert missing in lines[0] and "Traceback" not in err
    assert cli.run(tool.main, [*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "error: " in err, err


def test_convert_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    tool = load_tool("convert_mmseg_ann")
    missing = str(tmp_path / "mmseg.pth")
    assert cli.run(tool.main, [missing, str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and missing in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.pth").exists()


def test_infer_refuses_a_mistyped_cfg_option_naming_key_and_suggestion(image_dir, tmp_path):
    """Through the script itself: quiet (no warning lines), one error line, exit status 2."""
    proc = subprocess.run(
        [
            sys.executable,
            osp.join(TOOLS, "infer.py"),
            DEMO_CONFIG,
            str(tmp_path / "model.pth"),
            str(image_dir),
            "--out-dir",
            str(tmp_path / "out"),
            "--cfg-options",
            "model.test_cfg.mdoe=slide",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "'mdoe'" in lines[0] and "did you mean model.test_cfg.mode?" in lines[0]
    assert not (tmp_path / "out" / "summary.json").exists()


def test_bad_values_are_usage_errors(tmp_path, capsys):
    tool = load_tool("benchmark")
    assert cli.run(tool.main, [DEMO_CONFIG + "+turbo", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown suffix(es) ['turbo']"), err
    tool = load_tool("make_synthetic_data")
    assert cli.run(tool.main, [str(tmp_path / "d"), "--size", "8", "8"]) == 2
    assert "size must be at least" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        load_tool("infer").main([DEMO_CONFIG, "x.pth", "in", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads: expected a positive integer, got '0'" in capsys.readouterr().err


# -------------------------------------------------------------------------------- threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_threads_leave_busy_cores_alone(monkeypatch, restore_threads):
    torch.set_num_threads(2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    for load, expected in [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (5.9, 1)]:
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert threads.default_threads() == expected, load
    torch.set_num_threads(1)  # never more than torch's default, even on an idle machine
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an explicit choice wins over the load
    torch.set_num_threads(2)
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert threads.default_threads() == 2


def test_choose_threads_sets_torch(monkeypatch, restore_threads):
    assert threads.choose_threads(3) == 3 and torch.get_num_threads() == 3
    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    assert threads.choose_threads(None) == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="got 0"):
        threads.choose_threads(0)


# ----------------------------------------------------------------------------- dist scripts


def _fake_python(folder, exit_code):
    """A ``python`` that records its arguments and exits ``exit_code``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "python"
    script.write_text(f'#!/bin/sh\necho "$0 $*" >> "{folder}/calls"\nexit {exit_code}\n')
    script.chmod(0o755)
    return script


def _dist_env(path_first, **extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{path_first}:/usr/bin:/bin"
    env.update(extra)
    return env


def test_dist_scripts_pick_venv_then_python_env_then_path(tmp_path):
    """The tools/dist_*.sh wrappers run ``python -m ann_seg dist-<command>`` with the
    repository's .venv; without one, $PYTHON, else the ``python`` on PATH."""
    repo_tools = tmp_path / "repo" / "tools"
    repo_tools.mkdir(parents=True)
    for name in ("dist_train.sh", "dist_test.sh", "dist_common.sh"):
        shutil.copy(osp.join(TOOLS, name), repo_tools / name)
    on_path = _fake_python(tmp_path / "path_bin", 0)
    chosen = _fake_python(tmp_path / "env_bin", 0)
    train = ["bash", str(repo_tools / "dist_train.sh"), "cfg.py", "2", "--amp"]
    proc = subprocess.run(train, env=_dist_env(on_path.parent), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    call = (on_path.parent / "calls").read_text()
    assert call.strip().endswith("-m ann_seg dist-train cfg.py 2 --amp"), call
    proc = subprocess.run(
        ["bash", str(repo_tools / "dist_test.sh"), "cfg.py", "m.pth", "3"],
        env=_dist_env(on_path.parent, PYTHON=str(chosen)),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    call = (chosen.parent / "calls").read_text()
    assert call.strip().endswith("-m ann_seg dist-test cfg.py m.pth 3"), call
    # with the repository's .venv present, neither is used
    venv_python = _fake_python(tmp_path / "repo" / ".venv" / "bin", 0)
    subprocess.run(train, env=_dist_env(on_path.parent, PYTHON=str(chosen)), check=True)
    assert "-m ann_seg dist-train" in (venv_python.parent / "calls").read_text()
    assert len((on_path.parent / "calls").read_text().splitlines()) == 1


def test_dist_commands_build_the_torchrun_line_and_refuse_bad_usage(capsys):
    tool, args, nproc = launch.split_arguments("dist-infer", ["c.py", "m.pth", "in/", "2", "-x"])
    assert (tool, args, nproc) == ("infer", ["c.py", "m.pth", "in/", "-x"], 2)
    line = launch.torchrun_command(tool, args, nproc, {"PORT": "29999", "NNODES": "2"})
    assert line[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--master_port=29999", "--nproc_per_node=2"} <= set(line)
    assert line[-9:] == [
        "-m",
        "ann_seg",
        "infer",
        "c.py",
        "m.pth",
        "in/",
        "-x",
        "--launcher",
        "pytorch",
    ]
    for argv, message in [
        (["dist-train", "cfg.py"], "usage: ann-seg dist-train CONFIG NPROC"),
        (["dist-train", "cfg.py", "two"], "NPROC must be a positive integer, got 'two'"),
        (["dist-test", "cfg.py", "m.pth", "0"], "NPROC must be a positive integer, got '0'"),
    ]:
        assert run_tool(argv[0], argv[1:]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_dist_train_and_test_with_a_foreign_python_on_path(cityscapes_root, tmp_path):
    """``python`` on PATH is a fake that exits 3: the scripts must run the repo's .venv."""
    if not osp.isfile(osp.join(REPO, ".venv", "bin", "python")):
        pytest.skip("no .venv in the repository (run bash scripts/setup.sh)")
    fake = _fake_python(tmp_path / "bin", 3)
    options = as_cli(tiny_demo_options(cityscapes_root))
    env = _dist_env(fake.parent, PORT="29647", PYTHONUNBUFFERED="1")
    work = tmp_path / "work"
    proc = subprocess.run(
        ["bash", osp.join(TOOLS, "dist_train.sh"), DEMO_CONFIG, "2", "--work-dir", str(work)]
        + ["--cfg-options", *options],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "[ann-seg dist-train] 2 process(es) on node 0 of 1" in log
    assert (work / "iter_2.pth").is_file()
    assert not (fake.parent / "calls").exists()
    proc = subprocess.run(
        ["bash", osp.join(TOOLS, "dist_test.sh"), DEMO_CONFIG, str(work / "iter_2.pth"), "2"]
        + ["--work-dir", str(tmp_path / "test"), "--cfg-options", *options],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "mIoU:" in log and not (fake.parent / "calls").exists()


# ---------------------------------------------------------------------------- analyze_logs


def _write_scalars(run_dir, records):
    vis = run_dir / "vis_data"
    vis.mkdir(parents=True)
    (vis / "scalars.json").write_text("".join(json.dumps(r) + "\n" for r in records))


def _train_record(step, loss):
    return dict(lr=0.01 / step, loss=loss, time=0.2, data_time=0.01, iter=step, step=step)


def test_analyze_logs_plots_a_resumed_run(tmp_path, capsys):
    work = tmp_path / "work"
    _write_scalars(
        work / "20240101_000000",
        [_train_record(1, 2.0), _train_record(2, 1.5)]
        + [dict(aAcc=90.0, mIoU=40.0, mAcc=50.0, time=0.1, data_time=0.0, step=2)],
    )
    _write_scalars(  # resumed: iterations 3-4, validation at 4
        work / "20240102_000000",
        [_train_record(3, 1.0), _train_record(4, 0.5)]
        + [dict(aAcc=95.0, mIoU=60.5, mAcc=70.0, time=0.1, data_time=0.0, step=4)],
    )
    tool = load_tool("analyze_logs")
    curves = tool.read_curves(tool.find_scalars(str(work)))
    assert [s for s, _ in curves["loss"]] == [1, 2, 3, 4]
    assert curves["mIoU"] == [(2, 40.0), (4, 60.5)] and curves["val/time"] == [(2, 0.1), (4, 0.1)]
    assert curves["time"] == [(1, 0.2), (2, 0.2), (3, 0.2), (4, 0.2)]
    out = tmp_path / "plots" / "curves.png"
    assert cli.run(tool.main, [str(work), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "work: mIoU 60.5 at iteration 4 (2 points), best 60.50 at iteration 4" in printed
    blob = out.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000
    image = cv2.imread(str(out))
    assert image.shape[0] > image.shape[1] * 0.8  # three stacked panels
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # atomic: no temp left


def test_analyze_logs_refuses_unknown_keys_and_missing_logs(tmp_path, capsys):
    work = tmp_path / "work"
    _write_scalars(work / "20240101_000000", [_train_record(1, 2.0)])
    tool = load_tool("analyze_logs")
    out = tmp_path / "c.png"
    assert cli.run(tool.main, [str(work), "--keys", "los", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no scalar ['los'] in the logs; they have: ") and "loss" in err
    assert cli.run(tool.main, [str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no such work dir" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------ blocks' wording


def _comparison(speedup, memory_saving):
    item = dict(speedup=speedup, memory_saving=memory_saving)
    return dict(
        paper_comparison=dict(
            paper=PAPER,
            attention_units=dict(block="apnb_attention", reference="nl_attention", **item),
            full_blocks=dict(block="apnb", reference="nl_explicit", **item),
        )
    )


def test_ratio_words_never_print_a_ratio_below_one():
    assert ratio_words(2.4, "faster", "slower", "time") == "2.40x faster"
    assert ratio_words(1 / 2.4, "faster", "slower", "time") == "2.40x slower"
    assert ratio_words(None, "faster", "slower", "time") == "time ratio not measurable"


def test_paper_figures_only_beside_the_pair_and_size_the_paper_measured():
    lines = paper_lines(_comparison(0.41, 0.5), shape=(64, 128))
    text = "\n".join(lines)
    assert "0.41x" not in text and "0.50x" not in text
    assert "apnb vs nl_explicit: 2.44x slower, 2.00x more memory" in text
    assert not re.search(r"\b(6|28)x\b", text), text  # not at 64x128
    lines = paper_lines(_comparison(16.3, 25.8), shape=(128, 256))
    units, full = lines
    assert "16.30x faster, 25.80x less memory" in units and "6x faster, 28x less memory" in units
    assert "GPU" in units and "not in the paper" in full
    assert not re.search(r"\b(6|28)x\b", full), full
