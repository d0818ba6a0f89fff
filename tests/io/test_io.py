"""ann_seg.io: atomic writes keep the umask's mode and never leave partial files; progress;
tables."""

import io
import os
import stat

import pytest

import ann_seg.io.atomic as atomic
from ann_seg.io import (
    Progress,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_with,
    markdown_table,
    save_figure,
)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(str(tmp_path / "a.bin"), b"x")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.bin") == _mode(tmp_path / "plain.bin") == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(str(target), {"v": 1})

    def half_then_fail(f):
        f.write(b'{"v": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(str(target), half_then_fail)
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert sorted(os.listdir(target.parent)) == ["out.json"]


def test_the_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: events.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(
        atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))
    )
    atomic_write_bytes(str(tmp_path / "f"), b"data")
    assert events == ["fsync", "replace"] and (tmp_path / "f").read_bytes() == b"data"


def test_save_figure_is_atomic_and_uses_the_extension(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (after importorskip and the Agg backend)

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, str(tmp_path / "p.png"))
    save_figure(fig, str(tmp_path / "p.svg"))
    plt.close(fig)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "p.svg").read_bytes()[:500]
    assert sorted(os.listdir(tmp_path)) == ["p.png", "p.svg"]


def test_progress_counts_and_closes_the_line():
    stream = io.StringIO()
    with Progress(3, stream=stream) as bar:
        bar.update(2)
        bar.update()
    text = stream.getvalue()
    assert "3/3" in text and text.endswith("\n")
    silent = io.StringIO()
    with Progress(3, enabled=False, stream=silent) as bar:
        bar.update(3)
    with Progress(0, stream=silent) as bar:
        bar.update()
    assert silent.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_on_a_terminal_and_writes_four_lines_elsewhere():
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        with Progress(1000, stream=stream) as bar:
            for _ in range(1000):
                bar.update()
    assert terminal.getvalue().count("\r") >= 100 and terminal.getvalue().count("\n") <= 2
    lines = log.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == [
        "[250/1000",
        "[500/1000",
        "[750/1000",
        "[1000/1000",
    ]
    assert "\r" not in log.getvalue() and len(log.getvalue()) < 400


def test_markdown_table_alignment_and_shape_errors():
    table = markdown_table(["name", "ms"], [["a", "1.0"], ["b|c", "2.0"]])
    assert table.splitlines() == ["| name | ms |", "| --- | ---: |", "| a | 1.0 |", "| b|c | 2.0 |"]
    assert markdown_table(["x", "y"], [["1", "2"]], align="ll").splitlines()[1] == "| --- | --- |"
    with pytest.raises(ValueError, match="2 columns"):
        markdown_table(["x", "y"], [["1"]])
