"""ann_seg.io.video: probing, streamed and offset decoding of real files, corrupt tails named by
frame, exact label-video round trips, byte-reproducible writers that leave nothing behind on
error, and memory that stays flat in the video's length.

Test videos (``make_video`` etc. in tests/conftest.py, not in a tests/io/conftest.py: without
__init__.py files that module would shadow tests/conftest.py for the ``from conftest import`` of
other test files): frame ``i`` is ``pattern_frame(i)``, and ``frame_index`` recovers
``i % 256`` from a decoded frame, lossy codecs included."""

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
from _helpers import frame_index, make_video, pattern_frame, truncate

from ann_seg.io import render_overlay, video
from ann_seg.io.video import (
    VIDEO_EXTENSIONS,
    LabelVideoWriter,
    OverlayVideoWriter,
    VideoError,
    have_pyav,
    label_colours,
    probe_video,
    read_frames,
    read_label_video,
)

REPO = Path(__file__).resolve().parents[2]
needs_pyav = pytest.mark.skipif(not have_pyav(), reason="PyAV (pip install av) not installed")
BACKENDS = ["opencv", pytest.param("pyav", marks=needs_pyav)]
CITYSCAPES = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip


@pytest.fixture
def videos(tmp_path):
    """The test-video helpers; ``videos.make(name, frames, **kw)`` writes under ``tmp_path``."""
    return types.SimpleNamespace(
        make=lambda name, frames, **kw: make_video(tmp_path / name, frames, **kw),
        pattern=pattern_frame,
        index=frame_index,
        truncate=truncate,
    )


def _ade_like_palette():
    """150 colours with ADE20K's flaw (classes 6 and 48 share (140, 140, 140)) and a class
    holding the colour a naive nudge of the duplicate would take."""
    palette = [tuple(c) for c in np.random.RandomState(0).randint(0, 256, (150, 3)).tolist()]
    palette[6] = palette[48] = (140, 140, 140)
    palette[7] = (140, 140, 141)
    return palette


def _frames(path, **kw):
    return [(i, f.copy()) for i, f in read_frames(str(path), **kw)]


def test_video_extensions_cover_the_common_containers():
    assert {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"} <= set(VIDEO_EXTENSIONS)
    assert all(e == e.lower() and e.startswith(".") for e in VIDEO_EXTENSIONS)


@pytest.mark.parametrize("ext, exact", [(".mp4", True), (".avi", True), (".mkv", False)])
def test_probe_reports_count_rate_size_and_backend(videos, ext, exact):
    path = videos.make("clip" + ext, 23, fps=12.5, height=48, width=144)
    info = probe_video(path)
    assert (info.frames, info.fps, info.width, info.height) == (23, 12.5, 144, 48)
    assert info.backend == "opencv" and info.frames_exact is exact
    if have_pyav():
        pyav = probe_video(path, backend="pyav")
        assert (pyav.frames, pyav.fps, pyav.width, pyav.height) == (23, 12.5, 144, 48)
        assert pyav.backend == "pyav"


@pytest.mark.parametrize(
    "content, why",
    [(b"", "empty file"), (b"hello, not a video\n" * 50, "not a video"), (None, "not found")],
)
def test_probe_refuses_non_videos_in_one_line(tmp_path, content, why):
    path = tmp_path / "x.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError, match=why) as error:
        probe_video(str(path))
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ext", [".avi", ".mkv"])
def test_lossless_frames_stream_back_exactly(videos, ext, backend):
    path = videos.make("clip" + ext, 17, height=40, width=130)  # odd-ish sizes
    frames = _frames(path, info=probe_video(path, backend=backend))
    assert [i for i, _ in frames] == list(range(17))
    for i, frame in frames:
        assert frame.dtype == np.uint8 and frame.shape == (40, 130, 3)
        np.testing.assert_array_equal(frame, videos.pattern(i, 40, 130))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lossy_mp4_frames_come_back_in_order(videos, backend):
    path = videos.make("clip.mp4", 30)
    frames = _frames(path, info=probe_video(path, backend=backend))
    assert [i for i, _ in frames] == list(range(30))
    assert [videos.index(f) for _, f in frames] == list(range(30))
    errors = [np.abs(f.astype(int) - videos.pattern(i)).mean() for i, f in frames]
    assert max(errors) < 8


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_start_and_stop_select_exact_frame_indices(videos, ext, backend):
    path = videos.make("clip" + ext, 26)
    info = probe_video(path, backend=backend)
    full = _frames(path, info=info)
    for start, stop in [(0, 1), (1, None), (7, 19), (25, None), (26, None), (40, None)]:
        part = _frames(path, start=start, stop=stop, info=info)
        expected = full[start:stop]
        assert [i for i, _ in part] == [i for i, _ in expected]
        for (_, a), (_, b) in zip(part, expected):
            np.testing.assert_array_equal(a, b)  # same decode, not merely similar
    with pytest.raises(ValueError, match="start"):
        next(read_frames(path, start=5, stop=2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ext", [".avi", ".mkv"])
def test_a_truncated_video_yields_its_good_frames_then_names_the_first_bad_one(
    videos, ext, backend
):
    path = videos.make("clip" + ext, 40)
    videos.truncate(path, 0.6)
    info = probe_video(path, backend=backend)
    assert info.frames == 40  # the header still claims the whole video
    got = []
    with pytest.raises(VideoError) as error:
        for i, frame in read_frames(path, info=info):
            got.append(i)
            np.testing.assert_array_equal(frame, videos.pattern(i))
    bad = len(got)
    assert got == list(range(bad)) and 15 <= bad < 40
    message = str(error.value)
    assert message.startswith(path) and f"frame {bad} cannot be decoded" in message
    assert "\n" not in message
    # resuming past the good frames fails at once on the same frame
    with pytest.raises(VideoError, match=f"frame {bad} "):
        list(read_frames(path, start=bad - 1, info=info))


def test_a_truncated_mp4_without_its_index_is_refused_when_probed(videos):
    path = videos.make("clip.mp4", 40)
    videos.truncate(path, 0.6)  # OpenCV writes the 'moov' index last
    with pytest.raises(VideoError, match="clip.mp4"):
        probe_video(path)


def test_a_clean_end_is_not_an_error(videos):
    path = videos.make("clip.mkv", 12)
    assert len(_frames(path)) == 12  # would raise if the end looked like a corrupt tail


def test_label_colours_are_distinct_and_keep_distinct_palettes():
    np.testing.assert_array_equal(label_colours(CITYSCAPES), np.array(CITYSCAPES, np.uint8))
    palette = _ade_like_palette()
    colours = label_colours(palette)
    assert len({tuple(c) for c in colours.tolist()}) == 150
    changed = [i for i in range(150) if tuple(colours[i]) != palette[i]]
    assert changed == [48] and tuple(colours[48]) == (140, 140, 142)  # 141 is class 7's
    with pytest.raises(ValueError):
        label_colours([(0, 0, 256)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("palette", [CITYSCAPES, _ade_like_palette()], ids=["19", "150"])
def test_label_video_round_trip_is_exact(tmp_path, palette, backend):
    classes = len(palette)
    size = (37, 53) if backend == "pyav" else (36, 52)  # OpenCV: even sizes only
    rng = np.random.RandomState(classes)
    labels = [rng.randint(0, classes, size) for _ in range(5)]
    labels[0].ravel()[:classes] = np.arange(classes)  # every class, 6 and 48 included
    labels.append(np.full(size, classes - 1))
    path = str(tmp_path / "labels.mkv")
    with LabelVideoWriter(path, palette, fps=25, backend=backend) as writer:
        for label in labels:
            writer.write(label.astype(np.int64))
    back = list(read_label_video(path, palette))
    assert len(back) == len(labels)
    for a, b in zip(back, labels):
        assert a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    first = next(read_frames(path))[1]
    assert tuple(first[0, 0][::-1]) == tuple(palette[int(labels[0][0, 0])])  # shows colours
    np.testing.assert_array_equal(next(read_label_video(path, palette, start=5)), labels[5])


def test_the_opencv_label_writer_refuses_odd_sizes_it_would_crop(tmp_path):
    with pytest.raises(VideoError, match="even frame sizes only, got 53x37"):
        with LabelVideoWriter(str(tmp_path / "l.mkv"), CITYSCAPES, 5, backend="opencv") as w:
            w.write(np.zeros((37, 53), np.uint8))
    assert os.listdir(tmp_path) == []


def test_label_video_of_more_than_256_classes(tmp_path):
    palette = [(i % 256, i // 256, 7) for i in range(300)]
    label = np.arange(300 * 2).reshape(20, 30) % 300
    path = str(tmp_path / "labels.mkv")
    with LabelVideoWriter(path, palette, fps=5) as writer:
        writer.write(label)
    (back,) = read_label_video(path, palette)
    np.testing.assert_array_equal(back, label)


def test_reading_labels_with_another_palette_names_the_colour(tmp_path):
    path = str(tmp_path / "labels.mkv")
    with LabelVideoWriter(path, CITYSCAPES, fps=5) as writer:
        writer.write(np.full((8, 8), 3))
    with pytest.raises(
        VideoError, match=r"frame 0 pixel \(0, 0\) has colour RGB \(102, 102, 156\)"
    ):
        list(read_label_video(path, CITYSCAPES[:3]))


def test_label_writer_refuses_ids_outside_the_palette(tmp_path):
    with pytest.raises(ValueError, match=r"0\.\.18, got 0\.\.19"):
        with LabelVideoWriter(str(tmp_path / "l.mkv"), CITYSCAPES, fps=5) as writer:
            writer.write(np.arange(20).reshape(4, 5))
    assert os.listdir(tmp_path) == []


def _write_labels(path, labels, backend="pyav"):
    with LabelVideoWriter(str(path), CITYSCAPES, fps=10, backend=backend) as writer:
        for label in labels:
            writer.write(label)
    return Path(path).read_bytes()


def _write_overlays(path, frames, labels, backend="pyav"):
    with OverlayVideoWriter(str(path), CITYSCAPES, fps=10, opacity=0.4, backend=backend) as w:
        for frame, label in zip(frames, labels):
            w.write(frame, label)
    return Path(path).read_bytes()


@needs_pyav
def test_label_video_bytes_depend_only_on_the_frames(tmp_path):
    labels = [np.random.RandomState(i).randint(0, 19, (48, 64)) for i in range(6)]
    first = _write_labels(tmp_path / "a.mkv", labels)
    for again in range(6):
        assert _write_labels(tmp_path / "sub" / f"b{again}.mkv", labels) == first
    labels[3][5, 5] = (labels[3][5, 5] + 1) % 19
    assert _write_labels(tmp_path / "c.mkv", labels) != first


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlay_video_bytes_depend_only_on_the_frames(tmp_path, videos, backend):
    frames = [videos.pattern(i, 64, 160) for i in range(8)]
    labels = [np.random.RandomState(i).randint(0, 19, (64, 160)) for i in range(8)]
    first = _write_overlays(tmp_path / "a.mp4", frames, labels, backend)
    for again in range(6):  # PyAV once encoded freed frames: bytes varied 1 run in 10
        assert _write_overlays(tmp_path / f"b{again}.mp4", frames, labels, backend) == first
    labels[2][:8, :8] = (labels[2][:8, :8] + 1) % 19
    assert _write_overlays(tmp_path / "c.mp4", frames, labels, backend) != first


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlay_video_shows_the_overlay_at_the_source_rate(tmp_path, videos, backend):
    height, width = 63, 161  # odd: H.264 yuv420p needs a repeated row and column
    frames = [videos.pattern(i, height, width) for i in range(12)]
    labels = [np.zeros((height, width), np.int64) + (i % 19) for i in range(12)]
    labels[5][:, : width // 2] = 11
    path = str(tmp_path / "overlay.mp4")
    with OverlayVideoWriter(path, CITYSCAPES, fps=12.5, opacity=0.5, backend=backend) as w:
        for frame, label in zip(frames, labels):
            w.write(frame, label)
    info = probe_video(path)
    assert (info.frames, info.fps) == (12, 12.5)
    assert (info.width, info.height) == (162, 64)
    for i, frame in read_frames(path):
        expected = render_overlay(frames[i], labels[i], CITYSCAPES, 0.5)
        error = np.abs(frame[:height, :width].astype(int) - expected).mean()
        assert error < 6, (i, error)


@pytest.mark.parametrize("interrupt", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_writer_leaves_no_file_and_keeps_the_old_one(tmp_path, backend, interrupt):
    target = tmp_path / "labels.mkv"
    target.write_bytes(b"old")
    with pytest.raises(type(interrupt)):
        with LabelVideoWriter(str(target), CITYSCAPES, fps=10, backend=backend) as writer:
            for _ in range(3):
                writer.write(np.zeros((16, 16), np.uint8))
            raise interrupt
    assert os.listdir(tmp_path) == ["labels.mkv"] and target.read_bytes() == b"old"


def test_a_writer_without_frames_or_with_a_size_change_leaves_nothing(tmp_path, videos):
    with pytest.raises(VideoError, match="no frames written"):
        with OverlayVideoWriter(str(tmp_path / "o.mp4"), CITYSCAPES, fps=10):
            pass
    with pytest.raises(ValueError, match="frame 1 is 16x8, the video 16x16"):
        with LabelVideoWriter(str(tmp_path / "l.mkv"), CITYSCAPES, fps=10) as writer:
            writer.write(np.zeros((16, 16), np.uint8))
            writer.write(np.zeros((8, 16), np.uint8))
    assert os.listdir(tmp_path) == []


_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from ann_seg.io.video import read_frames
    total = 0
    for index, frame in read_frames(sys.argv[1], threads=1):
        total += int(frame[::97, ::89].sum())
    print(index + 1, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def test_reading_a_longer_video_does_not_grow_memory(tmp_path, videos):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    peaks = {}
    for frames in (20, 120):  # 10x and 60x a 2-frame clip; 640x480: 0.9 MB a frame
        path = videos.make(f"clip{frames}.mp4", frames, height=480, width=640)
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, path], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        count, peak_kib = map(int, out.stdout.split())
        assert count == frames
        peaks[frames] = peak_kib / 1024
    # keeping the extra 100 frames would take 92 MB more
    assert peaks[120] - peaks[20] < 25, peaks


@needs_pyav
def test_probe_falls_back_to_pyav_when_opencv_cannot_open(videos, monkeypatch):
    path = videos.make("clip.mkv", 9)
    monkeypatch.setattr(video, "_probe_opencv", lambda path: None)
    info = probe_video(path)
    assert info.backend == "pyav" and info.frames == 9
    np.testing.assert_array_equal(dict(_frames(path))[8], pattern_frame(8))


def test_without_pyav_opencv_reads_and_writes(videos, tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_pyav", lambda: None)
    text = tmp_path / "notes.mkv"
    text.write_text("not a video\n" * 20)
    with pytest.raises(VideoError, match=r"OpenCV cannot decode it \(installing PyAV"):
        probe_video(str(text))
    with pytest.raises(VideoError, match="needs PyAV"):
        LabelVideoWriter(str(tmp_path / "l.mkv"), CITYSCAPES, 5, backend="pyav")
    writer = LabelVideoWriter(str(tmp_path / "l.mkv"), CITYSCAPES, 5)
    assert writer.backend == "opencv"
    with writer:
        writer.write(np.arange(16 * 18).reshape(16, 18) % 19)
    (back,) = read_label_video(str(tmp_path / "l.mkv"), CITYSCAPES)
    np.testing.assert_array_equal(back, np.arange(16 * 18).reshape(16, 18) % 19)
