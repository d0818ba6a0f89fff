"""Weights checked before use: NaN/Inf weights and bytes changed inside a checkpoint's zip are
refused by every load path, and by tools/infer.py and tools/test.py with one error line.

Without the checks torch loads all four damaged checkpoints below: the NaN/Inf ones give
all-background label maps, the bit flips wrong weights, and the tools exit 0."""

import glob
import os
import os.path as osp
import subprocess
import sys
import zipfile

import pytest
import torch
from _helpers import CONFIGS, REPO, as_cli, randomize_, tiny_demo_options
from mmengine.runner import load_checkpoint

from ann_seg.mmseg import (
    CorruptCheckpointError,
    build_segmentor,
    safe_load_checkpoint,
    select_resume_checkpoint,
)

DEMO = osp.join(CONFIGS, "demo", "ann_r18-d8_1xb8-600it_synthetic-128x256.py")
BACKBONE = "backbone.layer1.0.conv1.weight"
CONV_SEG = ("decode_head.conv_seg.weight", "decode_head.conv_seg.bias")


def one_nan(state):
    state[BACKBONE].view(-1)[7] = float("nan")
    return [BACKBONE]


def conv_seg(value):
    def damage(state):
        for key in CONV_SEG:
            state[key].fill_(value)
        return list(CONV_SEG)

    return damage


def flip_bits(path):
    """One bit of 8 consecutive bytes flipped in the middle of the largest data entry, on disk
    (as a failing disk or transfer would); returns the entry's name."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        data = bytes(b ^ 0x04 for b in f.read(8))
        f.seek(at)
        f.write(data)
    return info.filename


CASES = {
    "one NaN in a backbone weight": one_nan,
    "conv_seg all NaN": conv_seg(float("nan")),
    "conv_seg all Inf": conv_seg(float("inf")),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A checkpoint of the demo model with random weights."""
    path = str(tmp_path_factory.mktemp("ckpt") / "good.pth")
    model = randomize_(build_segmentor(DEMO))
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


@pytest.fixture(params=[*CASES, "8 bit-flipped bytes in a data entry"])
def damaged(request, good, tmp_path):
    """(path of a damaged copy of ``good``, names the refusal must give)."""
    path = str(tmp_path / "damaged.pth")
    if request.param in CASES:
        ckpt = torch.load(good, map_location="cpu", weights_only=True)
        names = CASES[request.param](ckpt["state_dict"])
        torch.save(ckpt, path)
    else:
        with open(good, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        names = [flip_bits(path), "CRC"]
    # the damage is invisible to torch: the file loads
    assert "state_dict" in torch.load(path, map_location="cpu", weights_only=True)
    return path, names


def test_every_load_path_refuses(damaged):
    path, names = damaged
    loads = [
        lambda: safe_load_checkpoint(path),  # convert, resume's choice of checkpoint
        lambda: build_segmentor(DEMO, checkpoint=path),  # infer, test, export, benchmarks
        lambda: load_checkpoint(build_segmentor(DEMO), path),  # Runner load_from/resume
    ]
    for load in loads:
        with pytest.raises(CorruptCheckpointError) as info:
            load()
        message = str(info.value)
        assert path in message and "\n" not in message
        assert all(name in message for name in names), message


def test_a_long_list_of_tensors_is_cut(good, tmp_path):
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    for key in list(ckpt["state_dict"])[:10]:
        ckpt["state_dict"][key] = torch.full((2,), float("-inf"))
    torch.save(ckpt, tmp_path / "many.pth")
    with pytest.raises(CorruptCheckpointError, match=r"in 10 weight tensor\(s\): .* and 7 more$"):
        safe_load_checkpoint(tmp_path / "many.pth")


def test_resume_skips_a_checkpoint_with_nan_weights(tmp_path):
    for it, value in ((2, 0.5), (4, float("nan"))):
        state = {"w": torch.full((4,), value)}
        torch.save({"meta": {"iter": it}, "state_dict": state}, tmp_path / f"iter_{it}.pth")
    assert select_resume_checkpoint(str(tmp_path)) == str(tmp_path / "iter_2.pth")
    assert (tmp_path / "iter_4.pth.corrupt").exists()


def tool(name, *args):
    return subprocess.run(
        [sys.executable, osp.join(REPO, "tools", f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


@pytest.mark.parametrize("name", ["infer", "test"])
def test_tools_refuse_in_one_line(name, damaged, cityscapes_root, tmp_path):
    path, names = damaged
    out = tmp_path / "out"
    if name == "infer":
        image = sorted(glob.glob(osp.join(cityscapes_root, "leftImg8bit", "val", "**", "*.png")))
        proc = tool("infer", DEMO, path, image[0], "--out-dir", str(out), "--no-progress")
    else:
        options = as_cli(tiny_demo_options(cityscapes_root))
        args = ["--work-dir", str(tmp_path / "work"), "--out", str(out)]
        proc = tool("test", DEMO, path, *args, "--cfg-options", *options)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert path in lines[0] and all(n in lines[0] for n in names), lines[0]
    assert not out.exists() or not os.listdir(out)
