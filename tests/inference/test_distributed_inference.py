"""Folder inference sharded across ranks: deterministic shards, rank environments, per-rank
journals merged into one summary, and tools/dist_infer.sh end to end on the CPU (including a
rank killed mid-run and a re-run with another number of ranks)."""

import json
import os
import os.path as osp
import random
import signal
import socket
import subprocess
import time

import cv2
import numpy as np
import pytest
import torch
from _helpers import REPO, load_tool

from ann_seg import inference
from ann_seg import io as ann_io
from ann_seg.inference import distributed, pytorch, threads
from ann_seg.inference.inputs import ImageTask, InferenceInputError
from ann_seg.inference.journal import (
    JOURNAL_NAME,
    Journal,
    journal_entries,
    journal_files,
    read_journals,
    rebuild_summary,
)
from ann_seg.mmseg.synthetic import render_long_range_sample
from ann_seg.tools import cli

pytestmark = pytest.mark.usefixtures("single_thread_module")

DIST_INFER = osp.join(REPO, "tools", "dist_infer.sh")


def test_shards_cover_the_sorted_list_once_whatever_the_order():
    names = [f"d{i % 3}/img{i:03d}.png" for i in range(23)]
    ordered = sorted(names)
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    for world in (1, 2, 3, 5):
        tasks = [ImageTask(n, n) for n in shuffled]
        shards = [[tasks[i].name for i in distributed.shard(tasks, r, world)] for r in range(world)]
        assert sorted(n for s in shards for n in s) == ordered
        for rank, names_of_rank in enumerate(shards):
            assert set(names_of_rank) == set(ordered[rank::world])
    with pytest.raises(ValueError, match="got 2"):
        distributed.shard([], 2, 2)


def test_rank_environments():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert distributed.rank_info("pytorch", torchrun) == distributed.RankInfo(3, 4, 1, 2, "pytorch")
    assert distributed.rank_info("none", torchrun) == distributed.RankInfo()
    with pytest.raises(InferenceInputError, match="LOCAL_WORLD_SIZE is not set.*dist-infer"):
        distributed.rank_info(
            "pytorch", {k: v for k, v in torchrun.items() if k != "LOCAL_WORLD_SIZE"}
        )
    with pytest.raises(InferenceInputError, match="RANK must be an integer, got 'x'"):
        distributed.rank_info("pytorch", dict(torchrun, RANK="x"))
    with pytest.raises(InferenceInputError, match="rank 5 of 4"):
        distributed.rank_info("pytorch", dict(torchrun, RANK="5"))
    with pytest.raises(InferenceInputError, match="'mpi'"):
        distributed.rank_info("mpi", torchrun)
    slurm = {
        "SLURM_PROCID": "4",
        "SLURM_NTASKS": "5",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "2",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
        "SLURM_STEP_NODELIST": "gpu[07-09],cpu1",
    }
    assert distributed.rank_info("slurm", slurm) == distributed.RankInfo(4, 5, 0, 1, "slurm")
    assert distributed.tasks_on_node("2(x2),1", 1) == 2
    assert distributed.first_host("gpu[07-09,11],cpu1") == "gpu07"
    assert distributed.first_host("cpu1,cpu2") == "cpu1"
    info = distributed.rank_info("slurm", slurm)
    assert distributed._init_method(info, slurm) == "tcp://gpu07:29500"
    assert distributed._init_method(info, dict(slurm, MASTER_ADDR="h", MASTER_PORT="7")) == (
        "tcp://h:7"
    )
    with pytest.raises(InferenceInputError, match="'2\\(y3\\)'"):
        distributed.tasks_on_node("2(y3)", 0)


def test_rank_threads_and_device():
    before = torch.get_num_threads()
    try:
        info = distributed.RankInfo(1, 2, 1, 2, "pytorch")
        cores = threads.available_cores()
        assert threads.choose_rank_threads(None, info) == max(1, cores // 2)
        assert threads.choose_rank_threads(3, info) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert pytorch.rank_device(info, "cpu") == "cpu"
    if not torch.cuda.is_available():
        assert pytorch.rank_device(info) == "cpu"


def test_without_a_process_group_a_rank_works_on_and_says_why():
    info = distributed.RankInfo(1, 2, 0, 1, "slurm")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}  # nobody listens
    group = distributed.RankGroup(info, timeout_s=1, env=env)
    try:
        assert not group.ok and group.error.startswith("no process group (")
        assert group.agree(7) == 7  # its own run number
        assert group.barrier() == group.error
    finally:
        group.close()
    summary = {"journal": {"missing_ranks": []}, "counts": {"pending": 2, "images": 5}}
    note = distributed.incomplete_note(summary, group.error)
    assert note.startswith("no process group (") and "2 of 5 images pending" in note


def write_rank_journal(out, rank, world, tasks, done, run=1, skipped=()):
    journal = Journal(str(out), rank, world)
    journal.start({"device": f"dev{rank}"}, tasks, skipped, time.time(), 0.5, run=run)
    for name in done:
        journal.add({"name": name, "input": name, "status": "done", "timings": T}, SIZE)
    journal.close()


T = {"read_s": 0.0, "infer_s": 0.25, "write_s": 0.0}
SIZE = {"size": 1, "mtime_ns": 1}


def test_rank_journals_merge_into_one_summary(tmp_path, capsys):
    tasks = [(f"img{i}.png", f"/in/img{i}.png") for i in range(6)]
    names = [n for n, _ in tasks]
    write_rank_journal(tmp_path, 0, 3, tasks, names[0::3])
    write_rank_journal(tmp_path, 1, 3, tasks, names[1::3][:1])  # stopped after one image
    # rank 2 never started
    assert journal_files(str(tmp_path)) == ["journal.rank0.jsonl", "journal.rank1.jsonl"]
    summary = rebuild_summary(str(tmp_path))
    assert summary["counts"] == {
        "images": 6,
        "processed": 3,
        "skipped": 0,
        "failed": 0,
        "pending": 3,
    }
    assert [r["name"] for r in summary["images"]] == ["img0.png", "img1.png", "img3.png"]
    assert summary["device"] == "dev0" and summary["timings"]["infer_s"] == 0.75
    assert summary["journal"] == {
        "file": "journal.rank*.jsonl",
        "run": 1,
        "complete": False,
        "ignored_lines": 0,
        "world_size": 3,
        "ranks": [0, 1],
        "missing_ranks": [2],
        "devices": {"0": "dev0", "1": "dev1"},
    }
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    infer = load_tool("infer")
    assert infer.main(["--merge-only", "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no journal entry from rank(s) [2]" in err and "3 of 6 images pending" in err

    # a re-run in one process (run 2, journal.jsonl) finds the ranks' work done
    state = read_journals(str(tmp_path))
    assert state.runs == 1 and Journal(str(tmp_path)).next_run == 2
    assert {n for n in names if state.latest(n)} == {"img0.png", "img1.png", "img3.png"}
    rest = [n for n in names if not state.latest(n)]
    write_rank_journal(tmp_path, 0, 1, tasks, rest, run=2, skipped=sorted(set(names) - set(rest)))
    summary = rebuild_summary(str(tmp_path))
    assert summary["counts"]["processed"] == 3 and summary["counts"]["skipped"] == 3
    assert summary["journal"] == {
        "file": JOURNAL_NAME,
        "run": 2,
        "complete": True,
        "ignored_lines": 0,
    }
    assert infer.main(["--merge-only", "--out-dir", str(tmp_path)]) == 0


def test_merge_only_without_journal_is_an_input_error(tmp_path, capsys):
    infer = load_tool("infer")
    assert cli.run(infer.main, ["--merge-only", "--out-dir", str(tmp_path)]) == 2
    assert "nothing to merge" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main(["--out-dir", str(tmp_path)])  # no CONFIG etc. without --merge-only
    assert "CONFIG, CHECKPOINT and INPUT are required" in capsys.readouterr().err


# --- tools/dist_infer.sh on the CPU ---------------------------------------------------------


def write_image(path, index, size):
    image = render_long_range_sample(3, "val", index, size=size).image
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_infer(tiny, input_path, out, nproc, *args, wait=True):
    command = [DIST_INFER, *tiny, str(input_path), str(nproc), "--out-dir", str(out)]
    command += ["--no-progress", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PORT=str(free_port()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def done_names(out):
    return sorted(
        e["name"]
        for e in journal_entries(str(out))
        if e["type"] == "image" and e["status"] == "done"
    )


def labels_of(out, summary):
    return {
        r["name"]: ann_io.read_label_png(osp.join(str(out), r["outputs"]["label"]))
        for r in summary["images"]
    }


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path, tiny):
    images = tmp_path / "in"
    images.mkdir()
    good = []
    for index, size in enumerate([(64, 128)] * 4 + [(48, 96)] * 2 + [(96, 64)]):
        good.append(f"img{index}.png")
        write_image(images / good[-1], index, size)
    (images / "bad.png").write_bytes(b"not an image")
    (images / "empty.jpg").write_bytes(b"")
    single = inference.run_inference(*tiny, str(images), str(tmp_path / "single"), progress=False)

    out = tmp_path / "dist"
    proc = dist_infer(tiny, images, out, 2, "--workers", "1", "--batch-size", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]  # 1: some images failed
    assert "[rank 1/2]" in proc.stdout and "2 of 9 images failed" in proc.stderr
    assert journal_files(str(out)) == ["journal.rank0.jsonl", "journal.rank1.jsonl"]
    assert done_names(out) == good  # every good image written once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {
        "images": 9,
        "processed": 7,
        "skipped": 0,
        "failed": 2,
        "pending": 0,
    }
    journal = summary["journal"]
    assert journal["complete"] and journal["world_size"] == 2 and journal["missing_ranks"] == []
    assert summary["failures"] == single["failures"]
    expected = labels_of(tmp_path / "single", single)
    got = labels_of(out, summary)
    assert got.keys() == expected.keys()
    for name in good:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)

    # another number of ranks: nothing left to segment
    proc = dist_infer(tiny, images, out, 3)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert done_names(out) == good
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["skipped"] == 7 and summary["counts"]["processed"] == 0
    assert summary["journal"]["run"] == 2 and summary["journal"]["world_size"] == 3


def rank_pid(agent_pid, rank):
    """The pid of torchrun's worker ``rank`` (a child of the agent with ``RANK=rank``)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                ppid = int(f.read().split("PPid:")[1].split()[0])
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == agent_pid and f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.slow
def test_killed_rank_then_rerun_with_one_rank(tmp_path, tiny):
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    names = [f"img{i:02d}.png" for i in range(12)]
    for index, name in enumerate(names):
        write_image(images / name, index, (512, 1024))
    proc = dist_infer(tiny, images, out, 2, wait=False)
    journal = out / "journal.rank1.jsonl"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and journal.read_bytes().count(b'"type":"image"') >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        victim = rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    stderr = stderr.decode()
    assert proc.returncode != 0
    # torchrun stopped rank 0, which merged what existed and said so
    assert "[rank 0/2] warning: stopped by SIGTERM" in stderr, stderr[-3000:]
    assert "re-run the same command" in stderr
    first = done_names(out)
    assert 1 <= len(first) < 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["processed"] == len(first)
    assert summary["counts"]["pending"] == 12 - len(first)
    assert not summary["journal"]["complete"]
    assert rebuild_summary(str(out))["counts"] == summary["counts"]  # by hand: the same

    proc = dist_infer(tiny, images, out, 1, "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert done_names(out) == names  # each image exactly once, across both runs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {
        "images": 12,
        "processed": 12 - len(first),
        "skipped": len(first),
        "failed": 0,
        "pending": 0,
    }
    assert {r["name"] for r in summary["images"] if r["status"] == "skipped"} == set(first)
    assert summary["journal"]["file"] == JOURNAL_NAME and summary["journal"]["complete"]
