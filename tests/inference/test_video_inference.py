"""ann-seg infer on videos (issue #28): frames are tasks, labels equal the per-frame image run,
the label video maps back to the frame labels exactly, a killed run resumes at the first
unfinished frame and ends with the bytes of an uninterrupted one, a corrupt tail keeps its good
frames and names the first bad one, videos mix with images, all frames of a video go to one rank.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from _helpers import REPO, load_tool, make_video, truncate
from _inference_helpers import make_checkpoint, write_tiny_slide_config

from ann_seg import io as ann_io
from ann_seg.inference import folder
from ann_seg.inference.distributed import shard
from ann_seg.inference.inputs import InferenceInputError, collect_inputs
from ann_seg.inference.journal import JOURNAL_NAME, journal_entries
from ann_seg.io.video import have_pyav, probe_video, read_frames, read_label_video
from ann_seg.mmseg.synthetic import synthetic_metainfo

PALETTE = [list(c) for c in synthetic_metainfo(4)["palette"]]
SIZE = dict(height=64, width=128)
needs_pyav = pytest.mark.skipif(not have_pyav(), reason="byte-reproducible videos need PyAV")

pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, checkpoint) of the tiny slide-mode model."""
    root = tmp_path_factory.mktemp("tiny_model")
    config = write_tiny_slide_config(root)
    return config, make_checkpoint(config, str(root / "tiny.pth"))


def infer(tiny, source, out, *extra):
    argv = [*tiny, str(source), "--out-dir", str(out), "--no-progress", "--threads", "1"]
    return load_tool("infer").main(argv + list(extra))


def frame_entries(out, video):
    return [
        e
        for e in journal_entries(str(out))
        if e["type"] == "image" and e["name"].startswith(video + "#")
    ]


def summary_of(out):
    return json.loads((out / "summary.json").read_text())


def test_video_labels_equal_the_frames_segmented_as_images(tmp_path, tiny, capsys):
    """A folder with a video and its frames as PNGs: per-frame labels, the label video and
    the image run agree exactly; the overlay video has every frame; a re-run skips it all."""
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "frames").mkdir(parents=True)
    video = make_video(src / "clip.mkv", 5, **SIZE)
    for index, frame in read_frames(video):
        assert cv2.imwrite(str(src / "frames" / f"f{index}.png"), frame)
    assert infer(tiny, src, out, "--overlay", "--frames", "--batch-size", "2", "--recursive") == 0
    assert "videos: 1 segmented (5 frames)" in capsys.readouterr().out

    as_images = [ann_io.read_label_png(str(out / f"labels/frames/f{i}.png.png")) for i in range(5)]
    frames = [
        ann_io.read_label_png(str(out / f"labels/clip.mkv.frames/{i:06d}.png")) for i in range(5)
    ]
    from_video = list(read_label_video(str(out / "labels/clip.mkv.mkv"), PALETTE))
    assert len(from_video) == 5
    for image, frame, decoded in zip(as_images, frames, from_video):
        np.testing.assert_array_equal(frame, image)
        np.testing.assert_array_equal(decoded, image)
    assert len({a.tobytes() for a in as_images}) > 1  # the frames differ: order is checked
    overlay = probe_video(str(out / "overlays/clip.mkv.mp4"))
    assert (overlay.frames, overlay.fps, overlay.width, overlay.height) == (5, 10.0, 128, 64)
    assert not (out / "overlays/clip.mkv.frames").exists()  # frames get no overlay JPEGs

    summary = summary_of(out)
    assert summary["counts"]["images"] == 5
    assert summary["counts"]["videos"] == {
        "videos": 1,
        "processed": 1,
        "skipped": 0,
        "failed": 0,
        "pending": 0,
        "frames": 5,
        "frames_segmented": 5,
    }
    (record,) = summary["videos"]
    assert record["status"] == "done" and record["frames_written"] == 5
    assert record["outputs"] == {
        "label_video": "labels/clip.mkv.mkv",
        "overlay_video": "overlays/clip.mkv.mp4",
    }
    pixels = sum(np.bincount(a.ravel(), minlength=5) for a in as_images)
    assert record["class_pixels"] == {str(i): int(n) for i, n in enumerate(pixels) if n}
    assert [i["name"] for i in summary["images"]] == [f"frames/f{i}.png" for i in range(5)]
    assert summary["journal"]["complete"]

    before = len(journal_entries(str(out)))
    assert infer(tiny, src, out, "--overlay", "--frames", "--recursive") == 0
    entries = journal_entries(str(out))
    assert [e["type"] for e in entries[before:]] == ["run"]  # nothing segmented again
    assert summary_of(out)["counts"]["videos"]["skipped"] == 1


@needs_pyav
def test_an_interrupted_video_resumes_and_ends_byte_identical(tmp_path, tiny, monkeypatch):
    """Stopped after 4 of 9 frames, then re-run: every frame segmented once in all, the same
    label and overlay bytes as an uninterrupted run, the frame PNGs and a killed writer's
    temporary file gone."""
    video = make_video(tmp_path / "clip.mkv", 9, **SIZE)
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert infer(tiny, video, whole, "--overlay", "--batch-size", "2") == 0

    record = folder.FolderInference.record  # every finished frame, whole or slide mode

    def record_then_stop(self, *args, **kwargs):
        record(self, *args, **kwargs)
        if len(self.records) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(folder.FolderInference, "record", record_then_stop)
    with pytest.raises(KeyboardInterrupt):
        infer(tiny, video, out, "--overlay", "--batch-size", "2")
    monkeypatch.setattr(folder.FolderInference, "record", record)
    assert len(frame_entries(out, "clip.mkv")) == 4
    assert summary_of(out)["counts"]["videos"]["pending"] == 1
    stale = out / "labels" / ".clip.mkv.mkv.x1y2z3.tmp.mkv"  # what a killed writer leaves
    stale.write_bytes(b"partial")

    assert infer(tiny, video, out, "--overlay", "--batch-size", "2") == 0
    done = [e["name"] for e in frame_entries(out, "clip.mkv") if e["status"] == "done"]
    assert sorted(done) == [f"clip.mkv#{i:06d}" for i in range(9)]  # each frame once
    for name in ("labels/clip.mkv.mkv", "overlays/clip.mkv.mp4"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert not stale.exists()
    assert sorted(os.listdir(out / "labels")) == ["clip.mkv.mkv"]  # no frames folder
    (record,) = summary_of(out)["videos"]
    assert (record["frames_segmented"], record["frames_skipped"]) == (5, 4)


def test_a_corrupt_tail_keeps_the_good_frames_and_names_the_first_bad_one(tmp_path, tiny, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    video = make_video(src / "cut.mkv", 12, **SIZE)
    truncate(video, 0.5)
    good = sum(1 for _ in zip(range(12), _good_frames(video)))
    assert 0 < good < 12
    (src / "notes.mp4").write_text("not a video\n")
    assert cv2.imwrite(str(src / "a.png"), np.full((40, 50, 3), 90, np.uint8))

    assert infer(tiny, src, out) == 1
    err = capsys.readouterr().err
    assert "2 of 1 images and 2 videos failed" in err
    summary = summary_of(out)
    by_name = {v["name"]: v for v in summary["videos"]}
    cut, notes = by_name["cut.mkv"], by_name["notes.mp4"]
    assert cut["status"] == "failed" and cut["frames_written"] == good
    assert (cut["frames"], cut["frames_segmented"], cut["frames_failed"]) == (12, good, 12 - good)
    assert f"frame {good} cannot be decoded" in cut["reason"]
    assert notes["status"] == "failed" and notes["frames"] == 0
    assert "notes.mp4" in notes["reason"]
    assert sorted(f["name"] for f in summary["failures"]) == ["cut.mkv", "notes.mp4"]  # one each
    assert summary["counts"]["images"] == 1 and summary["counts"]["processed"] == 1
    labels = list(read_label_video(str(out / "labels/cut.mkv.mkv"), PALETTE))
    assert len(labels) == good
    for index, label in enumerate(labels):  # the frames stay for a re-run to resume
        frame = ann_io.read_label_png(str(out / f"labels/cut.mkv.frames/{index:06d}.png"))
        np.testing.assert_array_equal(label, frame)


def _good_frames(path):
    try:
        for _, frame in read_frames(str(path)):
            yield frame
    except ann_io.VideoError:
        return


def test_frames_are_tasks_globs_select_and_a_video_goes_to_one_rank(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name, frames in (("b.mkv", 3), ("d.avi", 4)):
        make_video(src / name, frames, **SIZE)
    for name in ("a.png", "c.png", "e.png"):
        assert cv2.imwrite(str(src / name), np.zeros((8, 8, 3), np.uint8))
    tasks = collect_inputs(str(src))
    assert [t.name for t in tasks][:5] == [
        "a.png",
        "b.mkv#000000",
        "b.mkv#000001",
        "b.mkv#000002",
        "c.png",
    ]
    frame = tasks[2]
    assert (frame.video, frame.frame, frame.out_stem) == ("b.mkv", 1, "b.mkv.frames/000001")
    assert len(tasks) == 10
    ranks = [shard(tasks, rank, 2) for rank in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(10))
    for video in ("b.mkv", "d.avi"):
        owners = {r for r in range(2) for i in ranks[r] if tasks[i].video == video}
        assert len(owners) == 1, video
    assert [t.name for t in collect_inputs(f"{src}/[ab]*")][:2] == ["a.png", "b.mkv#000000"]
    with pytest.raises(InferenceInputError, match="no files match"):
        collect_inputs(f"{src}/*.gif")
    assert [t.name for t in collect_inputs(str(src), extensions=["png"])] == [
        "a.png",
        "c.png",
        "e.png",
    ]


def test_pipelined_loop_and_sigkill_resume_give_the_same_videos(tmp_path, tiny):
    """--workers 2 on a folder with an image and the video (each worker streams the video and
    keeps its frames), then a run killed by
    SIGKILL mid-video and resumed: the label video of a sequential run, byte for byte."""
    video = make_video(tmp_path / "clip.mkv", 40, height=256, width=512)
    seq, piped, killed = tmp_path / "seq", tmp_path / "piped", tmp_path / "killed"
    assert infer(tiny, video, seq) == 0
    mixed = tmp_path / "mixed"  # the video, then an image, both with overlays
    mixed.mkdir()
    shutil.copy(video, mixed / "clip.mkv")
    assert cv2.imwrite(str(mixed / "z.png"), np.full((40, 50, 3), 90, np.uint8))
    assert infer(tiny, mixed, piped, "--workers", "2", "--batch-size", "3", "--overlay") == 0
    name = "labels/clip.mkv.mkv"
    assert (piped / name).read_bytes() == (seq / name).read_bytes()
    assert (piped / "overlays/z.png.jpg").is_file()
    assert probe_video(str(piped / "overlays/clip.mkv.mp4")).frames == 40

    proc = subprocess.Popen(
        [sys.executable, "-m", "ann_seg", "infer", *tiny, str(video)]
        + ["--out-dir", str(killed), "--no-progress", "--threads", "1"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    journal, deadline = killed / JOURNAL_NAME, time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and journal.read_bytes().count(b'"type":"image"') >= 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    first = len(frame_entries(killed, "clip.mkv"))
    assert 5 <= first < 40
    assert infer(tiny, video, killed) == 0
    assert len(frame_entries(killed, "clip.mkv")) == 40  # each frame once in all
    assert (killed / name).read_bytes() == (seq / name).read_bytes()
