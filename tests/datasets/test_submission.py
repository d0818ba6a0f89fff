"""ann-seg test --format-only round trip on generated data in the real layouts: label ids ->
train ids (what training reads) -> a prediction equal to the ground truth -> the submission's
PNGs, which must equal the data set's own label-id (Cityscapes) or 1-based (ADE20K) files;
resumable, atomic, zipped."""

import glob
import os
import os.path as osp
import zipfile

import cv2
import numpy as np
import pytest
import torch
from _helpers import CONFIGS, small_run_options
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

from ann_seg.mmseg import build_segmentor, runner

pytestmark = pytest.mark.usefixtures("single_thread_module")
CASES = {
    "cityscapes": ("ann/ann_r50-d8_4xb2-40k_cityscapes-512x1024.py", "_gtFine_labelIds.png"),
    "ade20k": ("ann/ann_r50-d8_4xb4-80k_ade20k-512x512.py", ".png"),
}


@MODELS.register_module(force=True)
class OracleSegmentor(EncoderDecoder):
    """Predicts the ground truth it is given (the test pipeline loads it): whatever the
    submission writes must then be the data set's own labels."""

    def predict(self, inputs, data_samples=None):
        for sample in data_samples:
            sample.pred_sem_seg = PixelData(data=sample.gt_sem_seg.data.clone())
        return data_samples


def checkpoint(config, options, path):
    torch.save({"state_dict": build_segmentor(config, cfg_options=options).state_dict()}, path)
    return str(path)


@pytest.mark.parametrize("layout", sorted(CASES))
def test_submission_round_trip_resumes_and_zips(layout, cityscapes_root, ade20k_root, tmp_path):
    root = cityscapes_root if layout == "cityscapes" else ade20k_root
    config, suffix = CASES[layout]
    config = osp.join(CONFIGS, config)
    options = dict(small_run_options(root, layout=layout), **{"model.type": "OracleSegmentor"})
    ckpt = checkpoint(config, options, tmp_path / "model.pth")
    out = tmp_path / "submission"
    result = runner.test(config, ckpt, cfg_options=options, verbose=False, format_only=str(out),
                         work_dir=str(tmp_path / "work"))  # fmt: skip
    assert (result["written"], result["kept"]) == (4, 0)
    written = sorted(os.listdir(out))
    if layout == "cityscapes":
        labels = sorted(glob.glob(f"{root}/gtFine/val/*/*{suffix}"))
        expected = [osp.basename(p).replace("_gtFine_labelIds", "_leftImg8bit") for p in labels]
    else:
        labels = sorted(glob.glob(f"{root}/annotations/validation/*.png"))
        expected = [osp.basename(p) for p in labels]
    assert written == sorted(expected) and len(written) == 4
    for label_path, name in zip(labels, expected):
        submitted = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(submitted, cv2.imread(label_path, cv2.IMREAD_UNCHANGED))
    with zipfile.ZipFile(result["zip"]) as archive:
        assert sorted(archive.namelist()) == written
        assert archive.read(written[0]) == (out / written[0]).read_bytes()
    # resume: one PNG lost (a killed run never leaves a partial one: atomic writes)
    (out / written[1]).unlink()
    before = os.stat(out / written[0]).st_mtime_ns
    again = runner.test(config, ckpt, cfg_options=options, verbose=False, format_only=str(out),
                        work_dir=str(tmp_path / "work"))  # fmt: skip
    assert (again["written"], again["kept"]) == (1, 3)
    assert sorted(os.listdir(out)) == written
    assert os.stat(out / written[0]).st_mtime_ns == before
    finished = runner.test(config, ckpt, cfg_options=options, verbose=False, format_only=str(out))
    assert (finished["written"], finished["kept"]) == (0, 4)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
