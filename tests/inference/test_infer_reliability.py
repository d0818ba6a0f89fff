"""``ann-seg infer`` when things go wrong around it: another model's labels in the output
folder, a second run on the same folder, SIGTERM, an unusable or full output folder, a model
that produces NaN, a journal edited by hand.

Faults a test cannot cause from outside (a full disk without a tmpfs, a run held mid-write) are
injected into the child process by a ``sitecustomize`` module on its PYTHONPATH (``hooked``):
no test hook lives in ann_seg.
"""

import contextlib
import errno
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest
from _helpers import REPO, load_tool
from _inference_helpers import make_checkpoint, write_tiny_slide_config

from ann_seg import inference
from ann_seg.inference import pytorch
from ann_seg.inference.journal import (
    JOURNAL_NAME,
    Journal,
    journal_entries,
    read_journals,
    rebuild_summary,
    summarize,
)
from ann_seg.inference.outdir import LOCK_NAME, OutDirLock, OutputStorageError, storage_errors
from ann_seg.mmseg.synthetic import render_long_range_sample
from ann_seg.tools import cli

pytestmark = pytest.mark.usefixtures("single_thread_module")

INFER = osp.join(REPO, "tools", "infer.py")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny slide-mode model's config and two checkpoints with other weights."""
    root = tmp_path_factory.mktemp("tiny_models")
    config = write_tiny_slide_config(root)
    first = make_checkpoint(config, str(root / "iter_300.pth"), seed=0)
    second = make_checkpoint(config, str(root / "iter_600.pth"), seed=1)
    return config, first, second


def write_images(folder_path, count, size=(64, 128)):
    os.makedirs(folder_path, exist_ok=True)
    names = [f"img{i:02d}.png" for i in range(count)]
    for index, name in enumerate(names):
        image = render_long_range_sample(11, "val", index, size=size).image
        assert cv2.imwrite(osp.join(folder_path, name), np.ascontiguousarray(image[..., ::-1]))
    return names


def infer(argv, capsys):
    """``ann-seg infer`` in this process: (exit status, stderr)."""
    status = cli.run(load_tool("infer").main, [*map(str, argv), "--no-progress"])
    return status, capsys.readouterr().err


def error_lines(stderr):
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def done_names(out):
    return sorted(
        e["name"]
        for e in journal_entries(str(out))
        if e["type"] == "image" and e["status"] == "done"
    )


def label_bytes(out):
    root = osp.join(str(out), "labels")
    return {name: open(osp.join(root, name), "rb").read() for name in sorted(os.listdir(root))}


def child_env(hook_dir=None):
    paths = [str(hook_dir)] if hook_dir else []
    paths += [REPO, os.environ.get("PYTHONPATH", "")]
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, paths)),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )


def hooked(tmp_path, code):
    """A folder whose ``sitecustomize`` runs ``code`` when a child Python starts."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(textwrap.dedent(code))
    return hook_dir


def summary_matches_journal(out):
    """summary.json is what the journal says (up to the time of the summary)."""
    written = json.loads((out / "summary.json").read_text())
    rebuilt = summarize(read_journals(str(out)), str(out))
    for summary in (written, rebuilt):
        summary["timings"].pop("total_s")
    assert written == rebuilt
    return written


# --- case 2: another model's labels ----------------------------------------------------------


def test_another_checkpoint_makes_its_own_labels(tmp_path, models, capsys):
    config, first, second = models
    images, out, fresh = tmp_path / "in", tmp_path / "out", tmp_path / "fresh"
    names = write_images(images, 3)
    assert infer([config, first, images, "--out-dir", out], capsys)[0] == 0
    old_labels = label_bytes(out)
    status, err = infer([config, second, images, "--out-dir", out], capsys)
    assert status == 0, err
    assert f"{len(names)} image(s) in {out} were segmented by another model" in err
    assert f"checkpoint {first} -> {second}" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["processed"] == len(names)  # 0.2: "0 segmented, 3 already done"
    assert summary["checkpoint"] == summary["fingerprint"]["checkpoint"] == second
    assert infer([config, second, images, "--out-dir", fresh], capsys)[0] == 0
    assert label_bytes(out) == label_bytes(fresh)  # the second model's labels, byte for byte
    assert label_bytes(out) != old_labels  # else the test is void

    # the same content under another name is the same model: nothing to do
    copy = tmp_path / "copy.pth"
    copy.write_bytes(open(second, "rb").read())
    assert infer([config, copy, images, "--out-dir", out], capsys)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["skipped"] == len(names)
    # a test-time option is part of the model: refused on request, nothing touched
    journal = (out / JOURNAL_NAME).read_bytes()
    argv = [config, copy, images, "--out-dir", out, "--slide", "32x64"]
    status, err = infer([*argv, "--on-model-change", "refuse"], capsys)
    assert status == 2
    assert error_lines(err) == [
        f"error: {len(names)} image(s) in {out} were segmented by another model (changed: "
        "test_cfg): --on-model-change redo segments them again, or choose another --out-dir"
    ]
    assert (out / JOURNAL_NAME).read_bytes() == journal
    assert label_bytes(out) == label_bytes(fresh)


# --- case 3: two runs on one folder ----------------------------------------------------------

# holds every atomic write (the first: summary.json, once the run holds the lock and the model)
# until the test creates the file GO
HOLD_FIRST_WRITE = """
    import os, time
    import ann_seg.io.atomic as atomic

    GO, write = {go!r}, atomic.atomic_write_with

    def held(path, *args, **kwargs):
        deadline = time.monotonic() + 300
        while not os.path.exists(GO) and time.monotonic() < deadline:
            time.sleep(0.05)
        return write(path, *args, **kwargs)

    atomic.atomic_write_with = held
"""


def test_two_concurrent_infers_segment_each_image_once(tmp_path, models):
    config, checkpoint, _ = models
    images, out, go = tmp_path / "in", tmp_path / "out", tmp_path / "go"
    names = write_images(images, 4)
    command = [sys.executable, INFER, config, checkpoint, str(images), "--out-dir", str(out)]
    command.append("--no-progress")
    hook = hooked(tmp_path, HOLD_FIRST_WRITE.format(go=str(go)))
    first = subprocess.Popen(
        command, env=child_env(hook), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and first.poll() is None:
            if (out / JOURNAL_NAME).is_file():  # the first run holds the lock and the model
                break
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1].decode()[-3000:]
        lock = out / LOCK_NAME
        holder = json.loads(lock.read_text()) if lock.is_file() else {}  # 0.2: no lock
        second = subprocess.run(
            command, env=child_env(), capture_output=True, text=True, timeout=300
        )
        go.touch()
        stdout, stderr = first.communicate(timeout=300)
    finally:
        go.touch()
        first.kill()
        first.wait()
    assert first.returncode == 0, stderr.decode()[-3000:]
    assert done_names(out) == names  # each image segmented once; 0.2: twice, by both runs
    assert second.returncode == 2, second.stderr[-3000:]
    assert holder["pid"] == first.pid
    assert error_lines(second.stderr) == [
        f"error: {out} is in use by another ann-seg infer (pid {first.pid} on host "
        f"{holder['host']}, started "
        + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
        + f", lock {out / LOCK_NAME}): wait for it or choose another --out-dir"
    ]
    assert [e["run"] for e in journal_entries(str(out)) if e["type"] == "run"] == [1]
    assert not (out / LOCK_NAME).exists()  # released


def test_lock_held_or_left_by_a_dead_process(tmp_path, models, capsys):
    config, checkpoint, _ = models
    images, out = tmp_path / "in", tmp_path / "out"
    write_images(images, 1)
    out.mkdir()
    argv = [config, checkpoint, images, "--out-dir", out]
    with OutDirLock(str(out)):  # another run holds it (here: this process)
        status, err = infer(argv, capsys)
    assert status == 2
    assert error_lines(err)[0].startswith(f"error: {out} is in use by another ann-seg infer (pid")
    assert not (out / JOURNAL_NAME).exists()
    # a lock file left by a killed run: its pid is gone, the kernel dropped its lock
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "h", "started": 0}))
    status, err = infer(argv, capsys)
    assert status == 0, err
    assert f"note: took over {out / LOCK_NAME} of pid {dead.pid} on host h" in err
    assert not (out / LOCK_NAME).exists()


# --- case 4: SIGTERM -------------------------------------------------------------------------


def children(pid):
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/status") as f:
                if f"\nPPid:\t{pid}\n" in f.read():
                    found.append(int(entry))
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not osp.isdir("/proc/self"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("workers", [1, 0])
def test_sigterm_ends_everything(tmp_path, models, workers):
    config, checkpoint, _ = models
    images, out = tmp_path / "in", tmp_path / "out"
    write_images(images, 12, size=(512, 1024))
    command = [sys.executable, INFER, config, checkpoint, str(images), "--out-dir", str(out)]
    command += ["--no-progress", "--workers", str(workers)]
    command += ["--cfg-options", "model.test_cfg.mode=whole"]  # slide mode has no workers
    proc = subprocess.Popen(
        command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        journal = out / JOURNAL_NAME
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and journal.read_bytes().count(b'"type":"image"') >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        kids = children(proc.pid)
        assert len(kids) >= workers, kids  # the DataLoader worker, else the test is void
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        proc.wait(timeout=120)
        left = [pid for pid in kids if alive(pid)]  # 0.2: the worker outlived its parent
        _, stderr = proc.communicate(timeout=30)  # no process holds the pipes any more
        time.sleep(max(0.0, signalled + 5 - time.monotonic()))
        later = [pid for pid in kids if alive(pid)]
    finally:
        proc.kill()
        proc.wait()
    stderr = stderr.decode()
    assert proc.returncode == 143, stderr[-3000:]  # 0.2: killed by the signal (-15)
    assert left == [] and later == []
    assert stderr.splitlines()[-1] == "terminated (SIGTERM)"
    summary = summary_matches_journal(out)  # 0.2: "processed 0, pending 12"
    assert summary["counts"]["processed"] >= 2 and summary["counts"]["pending"] > 0
    assert sorted(r["name"] for r in summary["images"]) == done_names(out)
    assert [f for _, _, files in os.walk(out) for f in files if f.endswith(".tmp")] == []
    assert not (out / LOCK_NAME).exists()


# --- case 5: the output folder ---------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path, options):
    """A tmpfs mounted at ``path`` (root only), or skip."""
    path.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def unusable_out_dir(kind, tmp_path, stack):
    """An output folder of ``kind`` and the text its error names."""
    out = tmp_path / "out"
    if kind == "a file":
        out.write_text("not a folder")
        return out, f"--out-dir {out} exists and is not a folder"
    if kind == "read-only":
        if os.geteuid() != 0:
            out.mkdir(mode=0o500)
        else:
            stack.enter_context(tmpfs(out, "ro,size=64k"))
        return out, f"cannot write in the output folder {out}"
    out.mkdir()
    if kind == "labels a file":
        (out / "labels").write_text("")
        return out, f"{out / 'labels'} is not a folder"
    name = {"journal a folder": JOURNAL_NAME, "summary a folder": "summary.json"}[kind]
    (out / name).mkdir()
    return out, f"{out / name} is a folder"


@pytest.mark.parametrize(
    "kind", ["a file", "read-only", "journal a folder", "summary a folder", "labels a file"]
)
def test_unusable_out_dir_is_refused_before_the_model_loads(
    tmp_path, models, kind, capsys, monkeypatch
):
    config, checkpoint, _ = models
    images = tmp_path / "in"
    write_images(images, 1)

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the output folder was checked")

    monkeypatch.setattr(pytorch, "build_segmentor", no_model)
    with contextlib.ExitStack() as stack:
        out, expected = unusable_out_dir(kind, tmp_path, stack)
        status, err = infer([config, checkpoint, images, "--out-dir", out], capsys)
        assert status == 2
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), err


# fails every write under labels/ or logits/ with ENOSPC once 5 label maps are written, while
# the file FULL exists
INJECT_ENOSPC = """
    import errno, os
    import ann_seg.io.atomic as atomic

    FULL, write, written = {full!r}, atomic.atomic_write_with, []

    def full(path, *args, **kwargs):
        if os.path.exists(FULL) and len(written) >= 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, *args, **kwargs)
        if "/labels/" in path:
            written.append(path)

    atomic.atomic_write_with = full
"""


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_full_disk_ends_in_one_line_and_a_rerun_finishes(tmp_path, models, disk):
    config, checkpoint, _ = models
    images, out = tmp_path / "in", tmp_path / "out"
    names = write_images(images, 16)
    command = [sys.executable, INFER, config, checkpoint, str(images), "--out-dir", str(out)]
    command += ["--no-progress", "--save-logits"]  # 80 KiB of logits per image
    with contextlib.ExitStack() as stack:
        if disk == "tmpfs":
            stack.enter_context(tmpfs(out, "size=640k"))
            env = child_env()
        else:
            full = tmp_path / "full"
            full.touch()
            env = child_env(hooked(tmp_path, INJECT_ENOSPC.format(full=str(full))))
            command += ["--cfg-options", "model.test_cfg.mode=whole"]  # atomic_write_with
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1, proc.stderr[-3000:]  # 0.2: 1 with tracebacks
        (line,) = error_lines(proc.stderr)
        assert "No space left on device" in line and " free there)" in line, line
        assert "re-run the same command to finish" in line
        state = read_journals(str(out))
        assert state.ignored_lines == 0  # no torn line
        first = done_names(out)
        assert 0 < len(first) < len(names)
        assert all(e["status"] == "done" for e in state.current.values())  # none failed
        # space again
        if disk == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=16m", str(out)], check=True)
        else:
            full.unlink()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert done_names(out) == names  # each image once, across both runs
        summary = summary_matches_journal(out)
        assert summary["counts"]["skipped"] == len(first)
        assert [f for _, _, files in os.walk(out) for f in files if f.endswith(".tmp")] == []


# --- non-finite logits, a journal edited by hand --------------------------------------------


@pytest.mark.parametrize("loop", ["sequential", "pipelined"])
def test_non_finite_logits_fail_the_image(tmp_path, models, monkeypatch, loop):
    config, checkpoint, _ = models
    images, out = tmp_path / "in", tmp_path / "out"
    names = write_images(images, 3)
    build = pytorch.build_segmentor
    calls = []

    def overflowing(*args, **kwargs):
        model = build(*args, **kwargs)

        def nan_on_second_call(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) == 2 else output

        model.decode_head.conv_seg.register_forward_hook(nan_on_second_call)
        return model

    monkeypatch.setattr(pytorch, "build_segmentor", overflowing)
    loader = inference.LoaderOptions(pipeline=loop == "pipelined")
    summary = inference.run_inference(
        config, checkpoint, str(images), str(out), loader=loader, progress=False
    )
    assert summary["counts"]["processed"] == 2 and summary["counts"]["failed"] == 1
    (failure,) = summary["failures"]
    assert failure["name"] == names[1]
    assert failure["reason"].startswith("non-finite logits: ")
    assert sorted(os.listdir(out / "labels")) == [f"{n}.png" for n in (names[0], names[2])]
    monkeypatch.undo()
    summary = inference.run_inference(config, checkpoint, str(images), str(out), progress=False)
    assert summary["counts"]["processed"] == 1 and summary["counts"]["skipped"] == 2


def test_journal_lines_of_wrong_types_are_ignored(tmp_path, models):
    config, checkpoint, _ = models
    images, out = tmp_path / "in", tmp_path / "out"
    write_images(images, 2)
    inference.run_inference(config, checkpoint, str(images), str(out), progress=False)
    entries = journal_entries(str(out))
    run = next(e for e in entries if e["type"] == "run")
    done = next(e for e in entries if e["type"] == "image")
    bad = [
        {**done, "status": 3, "file": "x"},
        {**done, "file": "x"},
        {**done, "outputs": "labels/x.png"},
        {**done, "timings": 3},
        {**done, "time": "late"},
        {**done, "name": 7},
        {**done, "status": "failed"},  # a failure without a reason
        {**run, "run": 1, "tasks": 3},
        {**run, "run": 2, "skipped": "all"},
        {**run, "run": 2, "started": None},
        ["a", "list"],
    ]
    with open(out / JOURNAL_NAME, "a") as f:
        f.writelines(json.dumps(entry) + "\n" for entry in bad)
    for _ in range(2):  # 0.2: a TypeError or AttributeError on every run
        summary = rebuild_summary(str(out))
        assert summary["journal"]["ignored_lines"] == len(bad)
        assert summary["counts"]["pending"] == 0
        summary = inference.run_inference(config, checkpoint, str(images), str(out), progress=False)
        assert summary["counts"]["skipped"] == 2
        assert summary["journal"]["ignored_lines"] == len(bad)


def test_journal_appends_are_whole_or_undone(tmp_path, monkeypatch):
    journal = Journal(str(tmp_path))
    journal.start({}, [("a.png", "a.png"), ("b.png", "b.png")], [], time.time(), 0.0)
    path, fd = tmp_path / JOURNAL_NAME, journal._file.fileno()
    size = path.stat().st_size
    write, fsync = os.write, os.fsync
    identity = {"size": 1, "mtime_ns": 1}

    def done(name):
        return {"name": name, "input": name, "status": "done", "timings": {"infer_s": 0.1}}

    def half_then_full(target, data):
        if target != fd:
            return write(target, data)
        write(target, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OutputStorageError, match=f"cannot write {path}: No space left"):
        journal.add(done("a.png"), identity)
    monkeypatch.undo()
    assert path.stat().st_size == size  # the half line is gone

    def interrupted(target):
        if target == fd:
            raise KeyboardInterrupt  # SIGINT or SIGTERM once the line is written
        fsync(target)

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        journal.add(done("b.png"), identity)
    monkeypatch.undo()
    journal.close()
    assert [e["name"] for e in journal_entries(str(tmp_path)) if e["type"] == "image"] == [
        "b.png"
    ]  # a whole line stays: its outputs are in place
    assert read_journals(str(tmp_path)).ignored_lines == 0


def test_storage_errors_are_told_apart():
    """ENOSPC, EDQUOT, EROFS stop the run (``OutputStorageError``); others fail one image."""
    with pytest.raises(OutputStorageError, match=r"cannot write x: No space left on device \("):
        with storage_errors("x"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(PermissionError):
        with storage_errors("x"):
            raise PermissionError(errno.EACCES, "Permission denied")
