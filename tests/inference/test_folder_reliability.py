"""Folder inference loses nothing and mixes nothing up: names that depend on the image alone,
the output folder never read as input, the journal across a SIGKILL, bounded reading."""

import builtins
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from _helpers import REPO, load_tool
from mmseg.apis import inference_model, init_model

import ann_seg.io.images as images_module
from ann_seg import inference
from ann_seg import io as ann_io
from ann_seg.inference import folder, inputs
from ann_seg.inference.backends import run_exported
from ann_seg.inference.journal import JOURNAL_NAME, journal_entries, rebuild_summary
from ann_seg.inference.onnx_export import export_onnx
from ann_seg.mmseg.synthetic import render_long_range_sample
from ann_seg.tools import cli

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def model(tiny):
    return init_model(*tiny, "cpu")  # the PyTorch reference


def write_sample(path, index, size=(64, 128), seed=5):
    os.makedirs(osp.dirname(str(path)), exist_ok=True)
    image = render_long_range_sample(seed, "val", index, size=size).image
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))


def predict(model, path):
    image, _ = ann_io.read_image(str(path))
    return inference_model(model, image).pred_sem_seg.data[0].numpy()


def label_of(out, name):
    return ann_io.read_label_png(str(out / "labels" / (name + ".png")))


class Engine:
    """One way to run the folder machinery: ``args`` for the CLI (before INPUT) and ``run``
    for the library."""

    def __init__(self, args, run_folder):
        self.args, self.run_folder = args, run_folder

    def __iter__(self):  # ``*engine`` in a command line
        return iter(self.args)


@pytest.fixture(scope="module", params=["pytorch", "onnxruntime"])
def engine(request, tiny, tmp_path_factory):
    """The tiny model on PyTorch, or exported and run on onnxruntime (``--backend``): every
    test of this module runs on both."""
    if request.param == "pytorch":
        return Engine(list(tiny), lambda *a, **k: inference.run_inference(*tiny, *a, **k))
    path = str(tmp_path_factory.mktemp("exported") / "tiny.onnx")
    export_onnx(*tiny, path, shape=(64, 128), dynamic=True)
    return Engine(
        ["--backend", "onnxruntime", path],
        lambda *a, **k: run_exported("onnxruntime", path, *a, threads=1, **k),
    )


def run(engine, input_path, out, **options):
    return engine.run_folder(str(input_path), str(out), progress=False, **options)


def counts(summary):
    c = summary["counts"]
    assert c["images"] == c["processed"] + c["skipped"] + c["failed"] + c["pending"], c
    return c


def test_output_stem_is_injective_and_local():
    assert inputs.output_stem("a.png") == "a.png"
    assert inputs.output_stem("d/a_png.png") == "d/a_png.png"
    assert inputs.output_stem("/data/x.png") == "_abs/data/x.png"
    assert inputs.output_stem("_abs/data/x.png") == "__abs/data/x.png"  # never meets /data/x.png
    assert inputs.output_stem("__abs/x.png") == "___abs/x.png"
    assert inputs.output_stem("_absx/x.png") == "_absx/x.png"


def test_names_do_not_depend_on_the_other_images(tmp_path, engine, model):
    images, out = tmp_path / "in", tmp_path / "out"
    write_sample(images / "a.png", 0)
    write_sample(images / "a_png.png", 1)
    assert counts(run(engine, images, out))["processed"] == 2
    write_sample(images / "a.jpg", 2)  # 0.1 renamed a.png's output to a_png.png's here
    summary = run(engine, images, out)
    assert counts(summary) == {
        "images": 3,
        "processed": 1,
        "skipped": 2,
        "failed": 0,
        "pending": 0,
    }
    names = ["a.jpg", "a.png", "a_png.png"]
    expected = {name: predict(model, images / name) for name in names}
    assert not np.array_equal(expected["a.png"], expected["a_png.png"])  # else the test is void
    assert not np.array_equal(expected["a.png"], expected["a.jpg"])
    for name in names:
        np.testing.assert_array_equal(label_of(out, name), expected[name], err_msg=name)
    records = {r["name"]: r for r in summary["images"]}
    assert {n: r["outputs"]["label"] for n, r in records.items()} == {
        n: f"labels/{n}.png" for n in names
    }


@pytest.mark.parametrize("where", ["same", "inside"])
def test_out_dir_in_the_input_tree_is_never_input(tmp_path, engine, where, capsys):
    root = tmp_path / "in"
    names = ["x.png", "y.png", "sub/z.png", "sub/deep/w.png"]
    for index, name in enumerate(names):
        write_sample(root / name, index)
    out = root if where == "same" else root / "sub" / "out"
    infer = load_tool("infer")
    argv = [*engine, str(root), "--out-dir", str(out), "--recursive", "--no-progress"]
    for rerun in (False, True):
        assert infer.main(argv) == 0, capsys.readouterr().err[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert counts(summary) == {
            "images": 4,
            "processed": 0 if rerun else 4,
            "skipped": 4 if rerun else 0,
            "failed": 0,
            "pending": 0,
        }
        assert sorted(r["name"] for r in summary["images"]) == sorted(names)
        for name in names:
            assert (out / "labels" / (name + ".png")).is_file()


def test_list_file_names_survive_an_outside_path(tmp_path, engine, model):
    data = tmp_path / "data"
    for index in range(2):
        write_sample(data / "a" / f"img{index}.png", index)
    outside = tmp_path / "elsewhere" / "x.png"
    write_sample(outside, 3)
    listing = data / "list.txt"
    listing.write_text("a/img0.png\na/img1.png\n")
    out = tmp_path / "out"
    assert counts(run(engine, listing, out))["processed"] == 2
    listing.write_text(f"a/img0.png\n{outside}\na/img1.png\n")
    summary = run(engine, listing, out)
    assert counts(summary) == {
        "images": 3,
        "processed": 1,
        "skipped": 2,
        "failed": 0,
        "pending": 0,
    }
    labels = sorted(
        osp.relpath(osp.join(d, f), out / "labels")
        for d, _, files in os.walk(out / "labels")
        for f in files
    )
    absolute = "_abs/" + str(outside).lstrip("/") + ".png"
    assert labels == sorted(["a/img0.png.png", "a/img1.png.png", absolute])
    np.testing.assert_array_equal(label_of(out, "_abs" + str(outside)), predict(model, outside))
    assert {r["name"] for r in summary["images"]} == {"a/img0.png", "a/img1.png", str(outside)}


def test_list_of_missing_paths_is_an_input_error(tmp_path, engine, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("gone0.png\ngone1.png\n# comment\ngone2.png\ngone3.png\n")
    with pytest.raises(inference.InferenceInputError, match="none of the 4 paths") as error:
        inference.collect_inputs(str(listing))
    assert str(listing) in str(error.value) and str(tmp_path / "gone0.png") in str(error.value)
    assert cli.run(load_tool("infer").main, [*engine, str(listing), "--no-progress"]) == 2
    assert "none of the 4 paths" in capsys.readouterr().err


def test_output_name_meeting_an_output_folder_is_failed_upfront(tmp_path):
    root = tmp_path / "in"
    write_sample(root / "x.png", 0)
    write_sample(root / "x.png.png" / "y.png", 1)  # labels/x.png.png: x.png's file, y's folder
    tasks = inputs.collect_inputs(str(root), recursive=True)
    for task in tasks:
        folder._plan_outputs(task, str(tmp_path / "out"), False, None)
    folder._mark_output_conflicts(tasks, str(tmp_path / "out"))
    errors = {t.name: t.error for t in tasks}
    assert errors["x.png"] is None
    assert errors["x.png.png/y.png"].startswith("output name conflict: labels/x.png.png")


def image_lines(out):
    return [e for e in journal_entries(str(out)) if e["type"] == "image"]


def test_sigkill_mid_folder_then_rerun(tmp_path, engine):
    images, out = tmp_path / "in", tmp_path / "out"
    names = [f"img{i:02d}.png" for i in range(12)]
    for index, name in enumerate(names):
        write_sample(images / name, index, size=(512, 1024))
    proc = subprocess.Popen(
        [sys.executable, osp.join(REPO, "tools", "infer.py"), *engine, str(images)]
        + ["--out-dir", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    journal = out / JOURNAL_NAME
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and journal.read_bytes().count(b'"type":"image"') >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still running: kill
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    killed = image_lines(out)
    assert 3 <= len(killed) < 12
    with open(journal, "ab") as f:  # what a kill in the middle of a write leaves
        f.write(b'{"type":"image","run":1,"time":1.0,"name":"img11.png","sta')
    assert (out / "summary.json").is_file()  # written when the run started
    summary = rebuild_summary(str(out))
    assert counts(summary)["processed"] == len(killed)
    assert summary["counts"]["pending"] == 12 - len(killed)
    assert summary["journal"] == {
        "file": JOURNAL_NAME,
        "run": 1,
        "complete": False,
        "ignored_lines": 1,
    }

    argv = [*engine, str(images), "--out-dir", str(out), "--no-progress"]
    assert load_tool("infer").main(argv) == 0
    entries = image_lines(out)
    done = [e["name"] for e in entries if e["status"] == "done"]
    assert sorted(done) == names  # each image exactly once, across both runs
    summary = json.loads((out / "summary.json").read_text())
    assert counts(summary) == {
        "images": 12,
        "processed": 12 - len(killed),
        "skipped": len(killed),
        "failed": 0,
        "pending": 0,
    }
    assert summary["journal"]["complete"] and summary["journal"]["ignored_lines"] == 1
    for record in summary["images"]:
        assert record["source"] == {"format": "PNG", "mode": "RGB", "bit_depth": 8}, record
    skipped = {r["name"] for r in summary["images"] if r["status"] == "skipped"}
    assert skipped == {e["name"] for e in killed}


def test_changed_input_is_segmented_again(tmp_path, engine, model):
    images, out = tmp_path / "in", tmp_path / "out"
    write_sample(images / "a.png", 0)
    write_sample(images / "b.png", 1)
    run(engine, images, out)
    before = label_of(out, "a.png")
    stat = os.stat(images / "a.png")
    write_sample(images / "a.png", 7)  # new content, same name
    os.utime(images / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    summary = run(engine, images, out)
    assert {r["name"]: r["status"] for r in summary["images"]} == {
        "a.png": "done",
        "b.png": "skipped",
    }
    expected = predict(model, images / "a.png")
    assert not np.array_equal(expected, before)  # else the test is void
    np.testing.assert_array_equal(label_of(out, "a.png"), expected)


class CountingFile:
    """A file whose ``read`` sizes are added to ``counter``."""

    def __init__(self, file, counter):
        self.file, self.counter = file, counter

    def read(self, size=-1):
        data = self.file.read(size)
        self.counter.append(len(data))
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_huge_non_image_is_refused_without_reading_it(tmp_path, engine, monkeypatch):
    big = tmp_path / "in" / "big.png"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.truncate(200 * 2**20)  # sparse: 200 MB of zeros, no disk used
    write_sample(tmp_path / "in" / "good.png", 0)
    reads, opened = [], []

    def counting_open(path, *args, **kwargs):
        opened.append(path)
        return CountingFile(builtins.open(path, *args, **kwargs), reads)

    monkeypatch.setattr(images_module, "open", counting_open, raising=False)
    # over the size limit (10 MP: 8 bytes per pixel + 64 MiB = 144 MiB): not even opened
    with pytest.raises(ann_io.ImageError, match=r"too large: 209715200 bytes .*; not read"):
        ann_io.read_image(str(big), max_pixels=10_000_000)
    with pytest.raises(ann_io.ImageError, match="too large: 209715200 bytes .*max_bytes"):
        ann_io.read_image(str(big), max_bytes=100 * 2**20)
    assert opened == [] and reads == []
    # within the default limit (464 MiB): refused from its first bytes
    with pytest.raises(ann_io.ImageError, match="not an image"):
        ann_io.read_image(str(big))
    assert 0 < sum(reads) <= images_module.HEAD_BYTES
    reads.clear()
    image, _ = ann_io.read_image(str(tmp_path / "in" / "good.png"))  # a real one is read whole
    assert image.shape == (64, 128, 3) and sum(reads) == os.path.getsize(big.parent / "good.png")
    monkeypatch.undo()
    loader = inference.LoaderOptions(max_pixels=10_000_000)
    summary = run(engine, big.parent, tmp_path / "out", loader=loader)
    assert counts(summary)["processed"] == 1
    assert summary["failures"][0]["name"] == "big.png"
    assert summary["failures"][0]["reason"].startswith("too large: 209715200 bytes")
