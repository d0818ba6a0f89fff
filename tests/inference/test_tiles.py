"""Banded sliding window (ann_seg.inference.tiles) against mmseg 1.2.2's slide_inference on a real
(randomly initialised) ANN model, a whole-volume numpy reference, and its memory bound."""

import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from mmengine.config import ConfigDict

from ann_seg.inference.inputs import InferenceInputError
from ann_seg.inference.tiles import (
    ArrayRows,
    check_window,
    slide_banded,
    slide_full,
    slide_windows,
)
from ann_seg.io import read_label_png
from ann_seg.io.large_images import PngLabelWriter, TiffRows, open_rows
from ann_seg.mmseg import build_segmentor

DEMO = "ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py"


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    model = build_segmentor(DEMO, device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights and BN variances (attention convs start at zero)
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
                elif name.endswith(("bias", "running_mean")):  # else one class wins everywhere
                    tensor.zero_()
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
    return model.eval()


def _normalise(model, bgr: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) BGR float -> the data preprocessor's normalised input."""
    pre = model.data_preprocessor
    x = bgr[:, [2, 1, 0]] if pre.channel_conversion else bgr
    return (x - pre.mean) / pre.std


def _torch_forward_tiles(model):
    """Predictor.forward_tiles for ``model``: encode_decode on the crops, as slide mode calls it."""

    def forward_tiles(tiles: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float()
        x = _normalise(model, x)
        metas = [dict(img_shape=x.shape[2:], ori_shape=x.shape[2:])] * len(tiles)
        with torch.no_grad():
            return model.encode_decode(x, metas).numpy()

    return forward_tiles


def _mmseg_slide(model, image: np.ndarray, crop, stride) -> np.ndarray:
    """mmseg's own slide_inference: (C, H, W) float32 seg_logits."""
    model.test_cfg = ConfigDict(mode="slide", crop_size=crop, stride=stride)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    meta = dict(img_shape=image.shape[:2], ori_shape=image.shape[:2])
    with torch.no_grad():
        return model.slide_inference(_normalise(model, x), [meta])[0].numpy()


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    # smooth structure plus noise: windows see different content
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(yy * 3) % 256, (xx * 5) % 256, ((yy + xx) * 2) % 256], axis=-1)
    return np.clip(base + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


CASES = [  # (H, W), crop, stride
    ((50, 70), (64, 96), (32, 48)),  # image smaller than one tile
    ((64, 96), (64, 96), (32, 48)),  # exactly one tile
    ((97, 203), (64, 96), (40, 60)),  # tiles do not divide; stride > half the crop
    ((97, 203), (48, 80), (48, 80)),  # stride == crop, last window shifted back
    ((130, 91), (64, 96), (21, 37)),  # narrower than the crop, many window rows
]


@pytest.mark.parametrize("size,crop,stride", CASES)
def test_batch_1_equals_mmseg_slide_inference(model, size, crop, stride):
    image = _image(*size)
    reference = _mmseg_slide(model, image, crop, stride)
    emitted = []
    label, logits = slide_full(
        image, _torch_forward_tiles(model), crop, stride, batch_size=1, want_logits=True
    )
    slide_banded(image, _torch_forward_tiles(model), crop, stride, lambda y0, r: emitted.append(y0))
    assert logits.shape == reference.shape and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, reference)  # same convolutions, same sums: bit-exact
    np.testing.assert_array_equal(label, reference.argmax(axis=0))
    assert len(np.unique(label)) > 1  # the model does not answer one class everywhere
    assert emitted[0] == 0 and emitted == sorted(set(emitted))  # rows top to bottom, once


@pytest.mark.parametrize("size,crop,stride", [CASES[2], CASES[4]])
def test_batch_3_equals_mmseg_up_to_rounding(model, size, crop, stride):
    """Batched convolutions round differently from one-crop ones: logits agree to float
    rounding, labels wherever the top-2 margin is not within that rounding."""
    image = _image(*size, seed=1)
    reference = _mmseg_slide(model, image, crop, stride)
    label, logits = slide_full(
        image, _torch_forward_tiles(model), crop, stride, batch_size=3, want_logits=True
    )
    scale = np.abs(reference).max()
    assert np.abs(logits - reference).max() <= 5e-4 * scale  # measured: 8e-5
    top2 = np.sort(reference, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-3 * scale
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(label[clear], reference.argmax(axis=0)[clear])


def _numpy_forward(classes=7):
    """A batch-independent stand-in model: logits from each pixel and its position in the crop
    (so windows disagree and overlaps matter)."""
    weights = np.random.default_rng(3).normal(size=(classes, 3)).astype(np.float32)

    def forward_tiles(tiles):
        n, h, w, _ = tiles.shape
        ramp = np.linspace(-1, 1, h * w, dtype=np.float32).reshape(h, w)
        out = np.einsum("kc,nhwc->nkhw", weights, tiles.astype(np.float32) / 255)
        return (out + ramp * np.arange(classes, dtype=np.float32)[:, None, None]).astype(np.float32)

    return forward_tiles


def _reference(image, forward, crop, stride):
    """mmseg's algorithm on the whole volume, in numpy."""
    h, w = image.shape[:2]
    sums, count = None, np.zeros((h, w), np.float32)
    for win in slide_windows(h, w, crop, stride):
        tile = forward(image[None, win.y1 : win.y2, win.x1 : win.x2])[0]
        if sums is None:
            sums = np.zeros((tile.shape[0], h, w), np.float32)
        sums[:, win.y1 : win.y2, win.x1 : win.x2] += tile
        count[win.y1 : win.y2, win.x1 : win.x2] += 1
    return sums / count


class CountingRows:
    def __init__(self, image):
        self._pixels, (self.height, self.width) = image, image.shape[:2]
        self.reads = np.zeros(self.height, int)

    def read_rows(self, y0, y1):
        self.reads[y0:y1] += 1
        return self._pixels[y0:y1].copy()


@pytest.mark.parametrize(
    "size,crop,stride",
    CASES
    + [((1, 1), (5, 5), (1, 1)), ((333, 17), (40, 9), (13, 9)), ((200, 300), (64, 64), (64, 1))],
)
@pytest.mark.parametrize("batch_size", [1, 3, 50])
def test_bit_identical_to_whole_volume_reference(size, crop, stride, batch_size):
    image = _image(*size, seed=2)
    forward = _numpy_forward()
    reference = _reference(image, forward, crop, stride)
    source = CountingRows(image)
    labels = np.full(size, 255, np.uint8)
    logits = np.full((7, *size), np.nan, np.float32)
    progress = []

    def emit(y0, rows):
        assert (labels[y0 : y0 + len(rows)] == 255).all()  # each row once
        labels[y0 : y0 + len(rows)] = rows

    def emit_logits(y0, block):
        logits[:, y0 : y0 + block.shape[1]] = block

    classes = slide_banded(
        source,
        forward,
        crop,
        stride,
        emit,
        batch_size=batch_size,
        emit_logits=emit_logits,
        on_tile=lambda done, total: progress.append((done, total)),
    )
    assert classes == 7
    np.testing.assert_array_equal(logits, reference)  # same sums in the same order: bit-exact
    np.testing.assert_array_equal(labels, reference.argmax(axis=0))
    assert (source.reads == 1).all()  # each source row read exactly once
    total = len(slide_windows(*size, crop, stride))
    assert progress[-1] == (total, total) and len(progress) == -(-total // batch_size)


def test_windows_match_mmseg_formula():
    # 97 rows, crop 64, stride 40: grids = (97 - 64 + 39) // 40 + 1 = 2; last row shifted to 33
    wins = slide_windows(97, 203, (64, 96), (40, 60))
    assert [(w.y1, w.y2) for w in wins[::3]] == [(0, 64), (33, 97)]
    assert [(w.x1, w.x2) for w in wins[:3]] == [(0, 96), (60, 156), (107, 203)]
    assert [(w.y1, w.y2, w.x1, w.x2) for w in slide_windows(50, 70, (64, 96), (32, 48))] == [
        (0, 50, 0, 70)
    ]


@pytest.mark.parametrize(
    "crop,stride",
    [((64, 96), (65, 48)), ((0, 96), (1, 1)), ((64, 96), (-1, 5)), ((64.0, 96), (8, 8)), ("64", 8)],
)
def test_bad_window_is_one_clear_error(crop, stride):
    with pytest.raises(InferenceInputError, match="slide window: ") as info:
        check_window(crop, stride)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    with pytest.raises(InferenceInputError):
        slide_banded(np.zeros((8, 8, 3), np.uint8), _numpy_forward(), crop, stride, print)


def test_forward_tiles_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match=r"forward_tiles returned shape \(1, 2, 3, 3\)"):
        slide_banded(
            ArrayRows(np.zeros((8, 8, 3), np.uint8)),
            lambda t: np.zeros((1, 2, 3, 3), np.float32),
            4,
            4,
            print,
        )


_MEMORY_SCRIPT = r"""
import json, resource, sys, tracemalloc
import numpy as np
from ann_seg.inference.tiles import slide_banded

H = W = 6000; C = 19; CROP = (512, 512); STRIDE = (341, 341)
class Rows:  # generated on demand: the image is never held whole
    height, width = H, W
    def read_rows(self, y0, y1):
        yy = np.arange(y0, y1, dtype=np.uint16)[:, None, None]
        xx = np.arange(W, dtype=np.uint16)[None, :, None]
        return ((yy * 7 + xx * 3 + np.arange(3, dtype=np.uint16)) % 251).astype(np.uint8)
pool = np.random.default_rng(0).normal(size=(2, C, *CROP)).astype(np.float32)
def forward_tiles(tiles):
    return pool[: len(tiles)] + tiles[:, None, :, :, 0] / np.float32(255)
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
rows = []
before = rss_kib()
tracemalloc.start()
slide_banded(Rows(), forward_tiles, CROP, STRIDE, lambda y0, r: rows.append(len(r)),
             batch_size=2)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
assert sum(rows) == H
print(json.dumps({"traced_peak": peak, "rss_growth": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss * 1024 - before * 1024}))
"""


def test_peak_memory_is_one_band_not_the_logit_volume():
    """6000 x 6000, 19 classes: mmseg's slide mode allocates 2.9 GB of logits and counts; the
    banded slide one band (19 x 512 x 6000 float32 = 233 MB) and a batch of tiles."""
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": root, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    full = 19 * 6000 * 6000 * 4 + 6000 * 6000 * 4
    band = 19 * 512 * 6000 * 4
    # measured: 304 MB traced (band + a batch of tile logits + temporaries), RSS +313 MB
    assert band <= measured["traced_peak"] < band + 100 * 2**20
    # ru_maxrss is a lifetime peak (imports included): a loose bound, far below the volume
    assert measured["rss_growth"] < full / 4


def test_tiff_rows_in_streamed_png_out_equals_the_whole_image_slide(tmp_path):
    """The pieces together: a tiled TIFF read in rows, labels streamed into a PNG."""
    image = _image(300, 517, seed=4)
    path = str(tmp_path / "in.tif")
    tifffile.imwrite(path, image[..., ::-1], tile=(64, 64), compression="zlib")
    forward = _numpy_forward()
    expected = _reference(image, forward, (96, 128), (50, 100)).argmax(axis=0)
    out = str(tmp_path / "labels.png")
    with open_rows(path) as rows, PngLabelWriter(out, 300, 517, [(0, 0, 0)] * 7) as writer:
        assert isinstance(rows, TiffRows)
        slide_banded(rows, forward, (96, 128), (50, 100), writer.write_rows, batch_size=4)
    np.testing.assert_array_equal(read_label_png(out), expected)
