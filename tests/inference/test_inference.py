"""tools/infer.py and ann_seg.inference: folders, lists, bad input, exact ids, re-runs."""

import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import skimage.data
from _helpers import REPO, load_tool
from mmseg.apis import inference_model, init_model
from PIL import Image

import ann_seg.io.atomic
from ann_seg import inference
from ann_seg import io as ann_io
from ann_seg.mmseg.synthetic import render_long_range_sample, synthetic_metainfo
from ann_seg.tools import cli

PALETTE = [list(c) for c in synthetic_metainfo(4)["palette"]]


pytestmark = pytest.mark.usefixtures("single_thread_module")


def photo(name):
    return getattr(skimage.data, name)()


def write_rgb(path, rgb):
    os.makedirs(osp.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def sixteen_bit(rgb):
    """A 16-bit version whose low byte is noise, so truncation and rounding differ."""
    noise = np.random.default_rng(0).integers(0, 257, rgb.shape)
    return (rgb.astype(np.uint16) * 257 + noise).clip(0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny):
    """A nested folder of real photos, generated images and every bad-input kind, segmented
    once through the CLI (subprocess)."""
    root = tmp_path_factory.mktemp("zoo")
    images = root / "images"
    write_rgb(images / "astronaut.png", photo("astronaut"))
    write_rgb(images / "photos" / "coffee.jpg", photo("coffee"))
    cv2.imwrite(str(images / "photos" / "camera.png"), photo("camera"))  # grayscale
    chelsea = photo("chelsea")
    alpha = np.full(chelsea.shape[:2], 90, np.uint8)
    Image.fromarray(np.dstack([chelsea, alpha])).save(images / "photos" / "chelsea_rgba.png")
    (images / "photos" / "deep").mkdir()
    cv2.imwrite(
        str(images / "photos" / "deep" / "astro16.png"),
        sixteen_bit(photo("astronaut")[::4, ::4, ::-1]),
    )
    for index in range(2):
        sample = render_long_range_sample(0, "val", index, size=(64, 128))
        write_rgb(images / "synthetic" / f"sample_{index}.png", sample.image)
    big = cv2.resize(photo("astronaut"), (4000, 3000), interpolation=cv2.INTER_LINEAR)
    write_rgb(images / "large.jpg", big)
    (images / "broken").mkdir()
    astronaut_bytes = (images / "astronaut.png").read_bytes()
    (images / "broken" / "truncated.png").write_bytes(astronaut_bytes[: len(astronaut_bytes) // 3])
    (images / "broken" / "notes.png").write_text("this is a text file, not a PNG\n")
    (images / "broken" / "empty.jpg").write_bytes(b"")
    os.symlink(str(root / "nowhere.png"), str(images / "broken" / "dangling.png"))
    (images / "readme.txt").write_text("not an image extension: ignored\n")
    out = root / "out"
    config, checkpoint = tiny
    args = [
        osp.join(REPO, "tools", "infer.py"),
        config,
        checkpoint,
        str(images),
        "--out-dir",
        str(out),
        "--recursive",
        "--overlay",
        "--opacity",
        "0.6",
    ]
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"),
    )
    summary = json.loads((out / "summary.json").read_text())
    return dict(root=root, images=images, out=out, proc=proc, args=args, summary=summary)


FAILED = {
    "broken/truncated.png": "corrupt or truncated PNG data",
    "broken/notes.png": "not an image",
    "broken/empty.jpg": "empty file (0 bytes)",
    "broken/dangling.png": "file not found",
}
DONE = [
    "astronaut.png",
    "large.jpg",
    "photos/camera.png",
    "photos/chelsea_rgba.png",
    "photos/coffee.jpg",
    "photos/deep/astro16.png",
    "synthetic/sample_0.png",
    "synthetic/sample_1.png",
]


def test_cli_reports_bad_inputs_by_name_and_exits_nonzero(zoo):
    proc = zoo["proc"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"{len(FAILED)} of {len(FAILED) + len(DONE)} images failed" in proc.stderr
    for name, reason in FAILED.items():
        line = next(ln for ln in proc.stderr.splitlines() if ln.strip().startswith(name + ":"))
        assert reason in line
    assert f"{len(FAILED) + len(DONE)}/{len(FAILED) + len(DONE)}" in proc.stderr  # progress bar
    assert f"{len(DONE)} segmented, 0 already done, {len(FAILED)} failed" in proc.stdout


def test_outputs_mirror_the_input_tree(zoo):
    out = zoo["out"]
    for name in DONE:  # the input's relative path, extension kept, plus the output's
        for sub, ext in (("labels", ".png"), ("overlays", ".jpg")):
            assert (out / sub / (name + ext)).is_file(), (sub, name)
    for name in FAILED:
        assert not (out / "labels" / (name + ".png")).exists()
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.endswith(".tmp")]
    assert leftovers == []


def test_summary_content(zoo):
    summary = zoo["summary"]
    assert summary["counts"] == {
        "images": 12,
        "processed": 8,
        "skipped": 0,
        "failed": 4,
        "pending": 0,
    }
    assert summary["journal"]["complete"] and summary["pending"] == []
    assert summary["classes"] == list(synthetic_metainfo(4)["classes"])
    assert summary["palette"] == PALETTE and summary["palette_source"] == "checkpoint"
    assert summary["test_cfg"]["mode"] == "slide"
    assert {f["name"]: f["reason"] for f in summary["failures"]}.keys() == FAILED.keys()
    records = {r["name"]: r for r in summary["images"]}
    assert sorted(records) == sorted(DONE)
    for record in records.values():
        assert record["status"] == "done"
        assert sum(record["class_pixels"].values()) == record["height"] * record["width"]
        assert set(record["timings"]) == {"read_s", "infer_s", "write_s"}
        label = np.array(Image.open(zoo["out"] / record["outputs"]["label"]))
        assert label.shape == (record["height"], record["width"])
        counts = np.bincount(label.ravel(), minlength=5)
        assert record["class_pixels"] == {str(i): int(n) for i, n in enumerate(counts) if n}
    assert (records["large.jpg"]["height"], records["large.jpg"]["width"]) == (3000, 4000)
    assert records["photos/camera.png"]["conversions"] == ["grayscale replicated to 3 channels"]
    assert records["photos/chelsea_rgba.png"]["source"]["mode"] == "RGBA"
    assert records["photos/chelsea_rgba.png"]["conversions"] == [
        "alpha channel dropped (not composited)"
    ]
    assert records["photos/deep/astro16.png"]["source"]["bit_depth"] == 16
    assert records["photos/deep/astro16.png"]["conversions"] == [
        "16-bit scaled to 8-bit (round(v / 257))"
    ]


def test_label_png_holds_exact_class_ids_and_palette(zoo, tiny):
    """Label maps equal mmseg's own ``inference_model`` prediction, id for id."""
    config, checkpoint = tiny
    model = init_model(config, checkpoint, "cpu")
    images, out = zoo["images"], zoo["out"]
    seen_classes = set()
    # files mmcv reads the same way (8-bit RGB, JPEG, grayscale, RGBA): mmseg loads them itself
    for name in [
        "astronaut.png",
        "photos/coffee.jpg",
        "photos/camera.png",
        "photos/chelsea_rgba.png",
        "synthetic/sample_0.png",
    ]:
        expected = inference_model(model, str(images / name)).pred_sem_seg.data[0].numpy()
        label_png = Image.open(out / "labels" / (name + ".png"))
        assert label_png.mode == "P"
        assert label_png.getpalette()[:15] == [v for c in PALETTE for v in c]
        label = np.array(label_png)
        np.testing.assert_array_equal(label, expected, err_msg=name)
        seen_classes.update(np.unique(label).tolist())
    assert len(seen_classes) >= 2
    # 16-bit: the documented round(v / 257) (mmcv would truncate to v >> 8)
    raw = cv2.imread(str(images / "photos" / "deep" / "astro16.png"), cv2.IMREAD_UNCHANGED)
    scaled = ((raw.astype(np.uint32) + 128) // 257).astype(np.uint8)
    assert not np.array_equal(scaled, (raw >> 8).astype(np.uint8))
    expected = inference_model(model, scaled).pred_sem_seg.data[0].numpy()
    label = np.array(Image.open(out / "labels" / "photos" / "deep" / "astro16.png.png"))
    np.testing.assert_array_equal(label, expected)


def test_overlay_blends_palette_colours(zoo):
    out, images = zoo["out"], zoo["images"]
    label = np.array(Image.open(out / "labels" / "synthetic" / "sample_0.png.png"))
    image = cv2.imread(str(images / "synthetic" / "sample_0.png"))
    overlay = cv2.imread(str(out / "overlays" / "synthetic" / "sample_0.png.jpg"))
    colours = np.array(PALETTE, np.float64)[:, ::-1][label]
    expected = 0.4 * image + 0.6 * colours
    assert overlay.shape == image.shape
    assert np.abs(overlay.astype(np.float64) - expected).mean() < 6  # JPEG quality 90


def test_rerun_skips_finished_images_and_force_redoes_them(zoo, tiny):
    infer = load_tool("infer")
    out = zoo["out"]
    label = out / "labels" / "astronaut.png.png"
    os.utime(label, ns=(0, 0))
    argv = zoo["args"][1:] + ["--no-progress"]
    assert infer.main(argv) == 1  # the bad files still fail
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {
        "images": 12,
        "processed": 0,
        "skipped": 8,
        "failed": 4,
        "pending": 0,
    }
    assert os.stat(label).st_mtime_ns == 0
    skipped = {r["name"]: r for r in summary["images"]}
    assert skipped["photos/camera.png"]["conversions"] == ["grayscale replicated to 3 channels"]
    assert (
        skipped["large.jpg"]["class_pixels"]
        == {r["name"]: r for r in zoo["summary"]["images"]}["large.jpg"]["class_pixels"]
    )
    # --force on one image (an image file as INPUT), with its logits
    assert (
        infer.main(
            [
                argv[0],
                argv[1],
                str(zoo["images"] / "astronaut.png"),
                "--out-dir",
                str(out),
                "--force",
                "--save-logits",
                "--no-progress",
            ]
        )
        == 0
    )
    assert os.stat(label).st_mtime_ns > 0
    logits = np.load(out / "logits" / "astronaut.png.npy")
    assert logits.dtype == np.float16 and logits.shape == (5, 512, 512)
    top2 = np.sort(logits.astype(np.float32), 0)[-2:]
    clear = top2[1] - top2[0] > 0.05  # float16 rounding may only swap near-ties
    np.testing.assert_array_equal(logits.argmax(0)[clear], np.array(Image.open(label))[clear])


def test_list_file_batches_npz_and_max_pixels(tmp_path, tiny):
    config, checkpoint = tiny
    data = tmp_path / "data"
    for index in range(3):
        sample = render_long_range_sample(1, "val", index, size=(64, 128))
        write_rgb(data / "a" / f"img{index}.png", sample.image)
    write_rgb(data / "a" / "img0.jpg", photo("coffee")[:64, :128])  # same stem as img0.png
    outside = tmp_path / "elsewhere" / "astronaut.png"
    write_rgb(outside, photo("astronaut")[::2, ::2])
    listing = data / "list.txt"
    listing.write_text(
        "# comment\n\na/img0.png\na/img1.png\n a/img2.png \na/img0.jpg\n"
        f"{outside}\nmissing.png\na/img1.png\na\n"
    )
    out = tmp_path / "out"
    summary = inference.run_inference(
        config,
        checkpoint,
        str(listing),
        str(out),
        outputs=inference.OutputOptions(save_logits="npz"),
        loader=inference.LoaderOptions(batch_size=2, max_pixels=60_000),
        progress=False,
    )
    assert summary["counts"] == {
        "images": 7,
        "processed": 4,
        "skipped": 0,
        "failed": 3,
        "pending": 0,
    }
    reasons = {f["name"]: f["reason"] for f in summary["failures"]}
    assert reasons["missing.png"] == "file not found"
    assert reasons["a"] == "not a regular file"
    assert reasons[str(outside)].startswith("too large: 256x256 = 0.1 MP")
    labels = sorted(
        osp.relpath(osp.join(d, f), out / "labels")
        for d, _, fs in os.walk(out / "labels")
        for f in fs
    )
    assert labels == ["a/img0.jpg.png", "a/img0.png.png", "a/img1.png.png", "a/img2.png.png"]
    with np.load(out / "logits" / "a" / "img1.png.npz") as npz:
        assert npz["logits"].dtype == np.float16 and npz["logits"].shape == (5, 64, 128)


def test_interrupted_write_leaves_no_partial_output(tmp_path, tiny, monkeypatch):
    config, checkpoint = tiny
    folder = tmp_path / "in"
    for index in range(2):
        write_rgb(
            folder / f"{index}.png", render_long_range_sample(2, "val", index, (64, 128)).image
        )
    out = tmp_path / "out"
    fsync = os.fsync

    def interrupted_fsync(fd):
        # the second image's label map, after its bytes were written
        if osp.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".1.png.png."):
            raise KeyboardInterrupt
        fsync(fd)

    monkeypatch.setattr(ann_seg.io.atomic.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        inference.run_inference(config, checkpoint, str(folder), str(out), progress=False)
    monkeypatch.undo()
    assert (out / "labels" / "0.png.png").is_file()
    assert os.listdir(out / "labels") == ["0.png.png"]  # no partial 1.png.png, no temporary
    interrupted = json.loads((out / "summary.json").read_text())  # written on the interruption
    assert interrupted["counts"]["processed"] == 1 and interrupted["counts"]["pending"] == 1
    summary = inference.run_inference(config, checkpoint, str(folder), str(out), progress=False)
    assert summary["counts"] == {
        "images": 2,
        "processed": 1,
        "skipped": 1,
        "failed": 0,
        "pending": 0,
    }


def test_read_image_modes(tmp_path):
    rgb = photo("chelsea")[:40, :60]
    Image.fromarray(rgb).convert("LA").save(tmp_path / "la.png")
    image, info = ann_io.read_image(str(tmp_path / "la.png"))
    assert image.shape == (40, 60, 3) and info["mode"] == "LA"
    assert (image[..., 0] == image[..., 2]).all()
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((8, 9), 65535, np.uint16))
    image, info = ann_io.read_image(str(tmp_path / "g16.png"))
    assert image.shape == (8, 9, 3) and (image == 255).all() and info["bit_depth"] == 16
    cv2.imwrite(str(tmp_path / "f.tiff"), np.zeros((4, 4), np.float32))
    with pytest.raises(ann_io.ImageError, match="unsupported pixel type float32"):
        ann_io.read_image(str(tmp_path / "f.tiff"))


def test_label_png_beyond_256_classes_is_16_bit():
    label = np.arange(600, dtype=np.int64).reshape(20, 30) % 300
    data = ann_io.encode_label_png(label, [[i % 256, 0, 0] for i in range(300)])
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, label)


def test_bad_input_path_exits_2(tmp_path, tiny, capsys):
    infer = load_tool("infer")
    assert cli.run(infer.main, [*tiny, str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.run(infer.main, [*tiny, str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no images" in capsys.readouterr().err
