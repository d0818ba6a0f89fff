"""The pipelined loop (DataLoader workers, batched ``test_step``, writer threads) gives the
sequential loop's labels and failures, and holds a bounded number of results."""

import os
import os.path as osp
import threading
import time

import cv2
import numpy as np
import pytest
from mmengine.config import Config

from ann_seg import inference
from ann_seg import io as ann_io
from ann_seg.inference import pipeline
from ann_seg.mmseg.synthetic import render_long_range_sample

pytestmark = pytest.mark.usefixtures("single_thread_module")

# runs of equal sizes, then a change, an odd size alone, and the first size again
SIZES = [(64, 128)] * 5 + [(48, 96)] * 2 + [(64, 128)] * 3 + [(96, 64)] + [(64, 128)] * 2
BAD = {"bad.png": b"not an image at all", "empty.png": b"", "cut.png": None}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Good images of mixed sizes (in sorted order: interleaved with the bad files)."""
    root = tmp_path_factory.mktemp("mixed")
    for index, size in enumerate(SIZES):
        image = render_long_range_sample(9, "val", index, size=size).image
        assert cv2.imwrite(
            str(root / f"img{index:02d}.png"), np.ascontiguousarray(image[..., ::-1])
        )
    for name, data in BAD.items():
        if data is None:  # a truncated PNG
            data = (root / "img00.png").read_bytes()[:200]
        (root / name).write_bytes(data)
    return root


def run(tiny, folder, out, **loader):
    return inference.run_inference(
        *tiny,
        str(folder),
        str(out),
        progress=False,
        outputs=inference.OutputOptions(save_logits="npy"),
        loader=inference.LoaderOptions(**loader),
    )


def outputs(out, summary):
    labels, logits = {}, {}
    for record in summary["images"]:
        labels[record["name"]] = ann_io.read_label_png(osp.join(out, record["outputs"]["label"]))
        logits[record["name"]] = np.load(osp.join(out, record["outputs"]["logits"]))
    return labels, logits


@pytest.fixture(scope="module")
def sequential(tiny, folder, tmp_path_factory):
    """Labels, logits and failures of the sequential loop, per batch size."""
    result = {}
    for batch in (1, 4):
        out = tmp_path_factory.mktemp(f"sequential{batch}")
        summary = run(tiny, folder, out, batch_size=batch)
        result[batch] = (*outputs(str(out), summary), summary["failures"])
    return result


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("batch", [1, 4])
def test_pipelined_equals_sequential(tiny, folder, sequential, tmp_path, workers, batch):
    summary = run(tiny, folder, tmp_path, batch_size=batch, workers=workers, pipeline=True)
    assert summary["counts"] == {
        "images": len(SIZES) + len(BAD),
        "processed": len(SIZES),
        "skipped": 0,
        "failed": len(BAD),
        "pending": 0,
    }
    labels, logits, failures = sequential[batch]
    assert summary["failures"] == failures  # same images, same reasons, same order
    assert {f["name"] for f in failures} == set(BAD)
    got_labels, got_logits = outputs(str(tmp_path), summary)
    assert got_labels.keys() == labels.keys()
    for name, label in labels.items():
        assert got_labels[name].shape == label.shape
        np.testing.assert_array_equal(got_labels[name], label, err_msg=name)
        np.testing.assert_array_equal(got_logits[name], logits[name], err_msg=name)
    # and batching changes no label here either
    for name, label in sequential[1][0].items():
        np.testing.assert_array_equal(got_labels[name], label, err_msg=name)


def test_pipelined_overlays_and_rerun_skip(tiny, folder, tmp_path):
    with_overlays = inference.OutputOptions(overlay=True)
    first = inference.run_inference(
        *tiny,
        str(folder),
        str(tmp_path),
        progress=False,
        outputs=with_overlays,
        loader=inference.LoaderOptions(workers=2, batch_size=4),
    )
    assert first["counts"]["processed"] == len(SIZES)
    for record in first["images"]:
        overlay = cv2.imread(osp.join(str(tmp_path), record["outputs"]["overlay"]))
        assert overlay.shape[:2] == (record["height"], record["width"]), record["name"]
    again = inference.run_inference(
        *tiny,
        str(folder),
        str(tmp_path),
        progress=False,
        outputs=with_overlays,
        loader=inference.LoaderOptions(workers=2),
    )
    assert again["counts"]["skipped"] == len(SIZES) and again["counts"]["processed"] == 0
    assert again["counts"]["failed"] == len(BAD)


class Result:
    """A stand-in model result that counts the live instances."""

    live = 0
    peak = 0
    lock = threading.Lock()

    def __init__(self):
        with Result.lock:
            Result.live += 1
            Result.peak = max(Result.peak, Result.live)

    def __del__(self):
        with Result.lock:
            Result.live -= 1


class SlowStages:
    """``FolderInference``'s interface around an identity dataset and a slow writer."""

    def __init__(self, count):
        self.tasks = list(range(count))
        self.written, self.failed = [], []

    def pipeline_dataset(self, todo):
        return [
            pipeline.Decoded(i, None, (1, 1, 3), {}, 0.0, {})
            if i % 7
            else pipeline.Failed(i, "x", {})
            for i in todo
        ]

    def fail(self, index, reason, identity):
        self.failed.append(index)

    def forward(self, batch):
        return [(item, Result(), 0.0) for item in batch]

    def write(self, item, result, seconds):
        time.sleep(0.002)
        self.written.append(item.index)


def test_results_in_flight_are_bounded():
    stages, writers, batch = SlowStages(300), 2, 4
    Result.live = Result.peak = 0
    with ann_io.Progress(300, enabled=False) as bar:
        pipeline.run_pipelined(stages, stages.tasks, batch, bar, workers=0, writers=writers)
    assert sorted(stages.written + stages.failed) == stages.tasks
    assert stages.failed == [i for i in stages.tasks if i % 7 == 0]
    assert Result.peak <= writers * pipeline.WRITES_PER_WRITER + batch, Result.peak


def test_inference_pipeline_matches_inference_model_steps():
    cfg = Config(
        dict(
            test_pipeline=[
                dict(type="LoadImageFromFile"),
                dict(type="Resize", scale=(64, 32), keep_ratio=True),
                dict(type="LoadAnnotations"),
                dict(type="PackSegInputs"),
            ]
        )
    )
    steps = pipeline.inference_pipeline(cfg)
    assert [s["type"] for s in steps] == ["LoadImageFromNDArray", "Resize", "PackSegInputs"]
    assert cfg.test_pipeline[0]["type"] == "LoadImageFromFile"  # the config is left alone
    with pytest.raises(ValueError, match="no steps"):
        pipeline.inference_pipeline(Config(dict(test_pipeline=[dict(type="LoadAnnotations")])))


def test_bad_worker_count_is_refused(tiny, folder, tmp_path):
    with pytest.raises(inference.InferenceInputError, match="got -1"):
        inference.run_inference(
            *tiny, str(folder), str(tmp_path), loader=inference.LoaderOptions(workers=-1)
        )
    assert not os.path.exists(tmp_path / "journal.jsonl")
