"""Slide mode through the folder machinery (``ann-seg infer --slide``): labels equal mmseg's
``slide_inference`` on odd sizes, TIFF inputs give GeoTIFF labels, ``--scale``, logits, resume,
and a peak memory bounded by one band, measured by the process itself."""

import json
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile
import torch
from _inference_helpers import DEMO_CONFIG
from mmseg.apis import inference_model

from ann_seg.inference import LoaderOptions, OutputOptions, run_inference
from ann_seg.io import read_label_png
from ann_seg.mmseg import build_segmentor
from ann_seg.mmseg.config import UserOptions

CROP, STRIDE = (64, 96), (40, 70)  # stride > crop / 2, windows that do not divide the images
SIZES = [(50, 70), (64, 96), (97, 203), (130, 77)]  # smaller than a window, one window, odd
SLIDE = UserOptions({"model.test_cfg": dict(mode="slide", crop_size=CROP, stride=STRIDE)})


def noise_image(height, width, seed):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def mmseg_slide_model(demo_checkpoint):
    torch.set_num_threads(1)
    return build_segmentor(DEMO_CONFIG, device="cpu", cfg_options=SLIDE, checkpoint=demo_checkpoint)


def infer(demo_checkpoint, inputs, out_dir, **loader):
    return run_inference(
        DEMO_CONFIG,
        demo_checkpoint,
        str(inputs),
        str(out_dir),
        outputs=OutputOptions(save_logits="npy"),
        loader=LoaderOptions(**loader),
        cfg_options=SLIDE,
        progress=False,
    )


@pytest.mark.parametrize("batch_size", [1, 3])
def test_slide_labels_equal_mmseg_slide_inference(
    tmp_path, demo_checkpoint, mmseg_slide_model, batch_size
):
    images = tmp_path / "in"
    images.mkdir()
    for i, (h, w) in enumerate(SIZES):
        cv2.imwrite(str(images / f"{h}x{w}.png"), noise_image(h, w, i))
    summary = infer(demo_checkpoint, images, tmp_path / "out", batch_size=batch_size)
    assert summary["counts"]["processed"] == len(SIZES), summary["failures"]
    for h, w in SIZES:
        image = cv2.imread(str(images / f"{h}x{w}.png"))
        expected = inference_model(mmseg_slide_model, image)
        label = read_label_png(str(tmp_path / "out" / "labels" / f"{h}x{w}.png.png"))
        reference = expected.pred_sem_seg.data[0].numpy()
        logits = np.load(tmp_path / "out" / "logits" / f"{h}x{w}.png.npy")
        reference_logits = expected.seg_logits.data.numpy()
        assert logits.shape == reference_logits.shape == (5, h, w)
        scale = float(np.abs(reference_logits).max())
        assert np.abs(logits.astype(np.float32) - reference_logits).max() <= 2e-3 * scale
        if batch_size == 1:
            np.testing.assert_array_equal(label, reference)
        else:  # batched convolutions round differently: labels equal where the margin is real
            top2 = np.sort(reference_logits, axis=0)[-2:]
            clear = (top2[1] - top2[0]) > 1e-3 * scale
            np.testing.assert_array_equal(label[clear], reference[clear])


def test_geotiff_input_gives_geotiff_labels_and_resume_skips_it(tmp_path, demo_checkpoint):
    image = noise_image(97, 203, 7)
    pixel_scale = (0.5, 0.5, 0.0)
    tiepoint = (0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0)
    tif = tmp_path / "in" / "scene.tif"
    tif.parent.mkdir()
    tifffile.imwrite(
        tif,
        image[:, :, ::-1],  # RGB on disk
        tile=(32, 32),
        extratags=[(33550, "d", 3, pixel_scale, True), (33922, "d", 6, tiepoint, True)],
    )
    cv2.imwrite(str(tmp_path / "in" / "same.png"), image)
    first = infer(demo_checkpoint, tif.parent, tmp_path / "out")
    assert first["counts"]["processed"] == 2, first["failures"]
    label_tif = tmp_path / "out" / "labels" / "scene.tif.tif"
    with tifffile.TiffFile(label_tif) as labels:
        page = labels.pages[0]
        assert page.tags[33550].value == pixel_scale
        assert page.tags[33922].value == tiepoint
        from_tiff = page.asarray()
    from_png = read_label_png(str(tmp_path / "out" / "labels" / "same.png.png"))
    np.testing.assert_array_equal(from_tiff, from_png)
    again = infer(demo_checkpoint, tif.parent, tmp_path / "out")
    assert (again["counts"]["processed"], again["counts"]["skipped"]) == (0, 2)


def test_scale_segments_smaller_and_writes_labels_at_the_input_size(tmp_path, demo_checkpoint):
    image = noise_image(150, 250, 3)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    summary = run_inference(
        DEMO_CONFIG,
        demo_checkpoint,
        str(tmp_path / "a.png"),
        str(tmp_path / "out"),
        loader=LoaderOptions(scale=0.5),
        cfg_options=SLIDE,
        progress=False,
    )
    assert summary["counts"]["processed"] == 1, summary["failures"]
    label = read_label_png(str(tmp_path / "out" / "labels" / "a.png.png"))
    assert label.shape == (150, 250)
    half = run_inference(
        DEMO_CONFIG,
        demo_checkpoint,
        str(tmp_path / "a.png"),
        str(tmp_path / "half"),
        loader=LoaderOptions(),
        cfg_options=SLIDE,
        progress=False,
    )
    assert half["counts"]["processed"] == 1
    # the scaled run's labels are its half-size map upsampled (nearest): blocks of 2x2 agree
    assert (label[0::2, 0::2] == label[1::2, 1::2]).mean() > 0.9


MEMORY_SCRIPT = """
import json, resource, sys
import numpy as np
from ann_seg.inference import FolderInference, LoaderOptions, OutputOptions
from ann_seg.inference.inputs import collect_inputs
from ann_seg.inference.predictor import Prediction
from ann_seg.io import Progress

class Stand:  # a predictor whose windows cost nothing: what is measured is the band
    classes = [str(i) for i in range(19)]
    palette = [(i, i, i) for i in range(19)]
    slide = ((512, 1024), (341, 683))
    def forward_tiles(self, tiles):
        n, h, w, _ = tiles.shape
        out = np.zeros((n, 19, h, w), np.float32)
        out[:, 3] = tiles[..., 0] / 255.0
        return out

path, out = sys.argv[1], sys.argv[2]
tasks = collect_inputs(path)
tasks[0].outputs = {"label": out}
runner = FolderInference(Stand(), tasks, "/tmp", OutputOptions(), LoaderOptions(max_pixels=10**9))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
runner.run([0], Progress(1, enabled=False))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before": before * 1024, "after": after * 1024, "failures": runner.failures}))
"""


@pytest.mark.slow
def test_peak_memory_is_the_image_plus_one_band(tmp_path):
    """A 4000 x 6000 image, 19 classes: mmseg's slide mode would hold 19 x H x W float32 logits
    and a count map (1.9 GB); the banded run adds about one band (19 x 512 x 6000 x 4 = 233 MB)
    and the decoded image (72 MB) to what the process held."""
    height, width = 4000, 6000
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = (np.arange(width) % 251).astype(np.uint8)
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), image)
    out = tmp_path / "big_labels.png"
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not figures["failures"]
    growth = figures["after"] - figures["before"]
    full_logits = 19 * height * width * 4 + height * width * 4
    assert growth < 700e6, growth
    assert growth < full_logits / 2.5
    assert osp.getsize(out) > 0
